"""Records are spread over the workers before the encoder: one file is encoded by every worker process, with the
same output; the job has exactly one shuffle before the encoder whatever the options, and none on one local worker."""
import json
import os

import apache_beam as beam
import numpy as np
import pyarrow.parquet as pq
import pytest

from cli import main as cli
from pipeline import progress
from pipeline.run import run

COMMON = ["--seq-length", "32", "--pooling", "mean", "--quiet"]
WORDS = "the cat dog bird fish sat run on mat hat house tree car hello world good red blue quick brown fox".split()
SHUFFLES = ("SpreadRecords", "GroupById", "JoinById", "GroupByText")


def _lines(n: int) -> list[str]:
  rng = np.random.default_rng(5)
  return [" ".join(rng.choice(WORDS, size=int(rng.integers(2, 10)))) for _ in range(n)]


def _rows(manifest: dict) -> dict:
  out = {}
  for path in manifest["output_files"]:
    table = pq.read_table(path)
    for rid, vec in zip(table.column("id").to_pylist(), table.column("embedding").to_pylist()):
      out[rid] = np.asarray(vec, np.float32)
  return out


def test_one_file_is_encoded_by_both_worker_processes_with_the_output_of_one(tmp_path, tiny_model_dir, monkeypatch):
  corpus = tmp_path / "one.txt"
  corpus.write_text("".join(line + "\n" for line in _lines(120)), encoding="utf-8")
  # The progress side channel: each process keeps its own totals in <dir>/<pid>.json; read them before the
  # launcher's Reporter removes the directory.
  per_process = {}
  real_stop = progress.Reporter.stop

  def stop(self):
    for name in os.listdir(self.directory):
      if name.endswith(".json"):
        with open(os.path.join(self.directory, name), encoding="utf-8") as f:
          per_process[name[:-len(".json")]] = json.load(f)
    return real_stop(self)

  monkeypatch.setattr(progress.Reporter, "stop", stop)
  two = run(["--input", str(corpus), "--output", str(tmp_path / "two" / "emb"), "--model", tiny_model_dir, *COMMON,
             "--direct_running_mode=multi_processing", "--direct_num_workers=2"])
  monkeypatch.setattr(progress.Reporter, "stop", real_stop)
  encoded = {pid: counts["encoded"] for pid, counts in per_process.items() if counts["encoded"]}
  assert str(os.getpid()) not in encoded  # the launcher encodes nothing: the worker processes do
  assert len(encoded) == 2, per_process
  assert sum(encoded.values()) == two.manifest["counts"]["encoded"] == 120
  assert min(encoded.values()) >= 120 // 4, encoded  # random keys: about half each

  one = run(["--input", str(corpus), "--output", str(tmp_path / "one" / "emb"), "--model", tiny_model_dir, *COMMON])
  got, want = _rows(two.manifest), _rows(one.manifest)
  assert sorted(got) == sorted(want) == sorted(f"{corpus}:{i}" for i in range(1, 121))
  for rid, vec in want.items():
    np.testing.assert_allclose(got[rid], vec, atol=1e-5, err_msg=rid)


def _shuffles_before_encoder(argv: list[str], monkeypatch) -> list[str]:
  """The shuffle steps of the job `argv` builds (not run), by label."""
  graphs = []

  def fake_run(self, test_runner_api="AUTO"):  # pylint: disable=unused-argument
    graphs.append({t.unique_name for t in self.to_runner_api().components.transforms.values()})
    raise SystemExit(0)

  monkeypatch.setattr(beam.Pipeline, "run", fake_run)
  with pytest.raises(SystemExit):
    cli.main(["run", *argv])
  (labels,) = graphs
  return sorted(s for s in SHUFFLES if any(label.split("/")[-1] == s for label in labels))


@pytest.mark.parametrize("extra, expected", [
    ([], ["SpreadRecords"]),
    (["--input-format", "jsonl"], ["GroupById"]),
    (["--input-format", "jsonl", "--on-duplicate-id", "keep"], ["SpreadRecords"]),
    (["--input-format", "jsonl", "--limit", "2"], ["GroupById", "SpreadRecords"]),  # Top gathers the kept records
    (["--dedupe-texts"], ["GroupByText"]),
    (["--previous", "PREVIOUS"], ["JoinById"]),
])
def test_one_shuffle_spreads_the_records_before_the_encoder(extra, expected, tmp_path, tiny_model_dir, monkeypatch):
  corpus = tmp_path / "in.jsonl"
  corpus.write_text('{"id": "a", "text": "hello world"}\n{"id": "b", "text": "the cat"}\n', encoding="utf-8")
  if "PREVIOUS" in extra:  # an earlier complete output of another model
    previous = tmp_path / "old" / "emb"
    previous.parent.mkdir()
    (tmp_path / "old" / "emb-manifest.json").write_text(json.dumps({
        "schema_version": 1, "model": {"fingerprint": "0" * 64}, "dimension": 32, "options": {"format": "parquet"},
        "output_files": []}))
    extra = [str(previous) if e == "PREVIOUS" else e for e in extra]
  argv = ["--input", str(corpus), "--output", str(tmp_path / "out" / "emb"), "--model", tiny_model_dir, *COMMON,
          *extra]
  assert _shuffles_before_encoder(argv + ["--direct_num_workers=2"], monkeypatch) == expected
  # One local worker: no shuffle of its own (it would only hold every record in memory).
  assert _shuffles_before_encoder(argv, monkeypatch) == [s for s in expected if s != "SpreadRecords"]
