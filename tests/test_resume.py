"""Resuming a killed or failed run from its checkpoints (snapshot/resume.py, transforms/checkpoint.py,
transforms/resume_rows.py): a rerun of the same command encodes only what the failed run had not checkpointed, and
writes what an uninterrupted run writes.

A run is stopped mid-way in process: the encoder handler is wrapped so that its Kth call raises (a systemic fault
the handler does not isolate, so the job fails), with checkpoints every few rows (transforms.checkpoint.MAX_ROWS
patched). The uninterrupted reference run is shared (module fixture).
"""
import json
import os

import numpy as np
import pyarrow.parquet as pq
import pytest
from apache_beam.testing.test_pipeline import TestPipeline

from formats import checkpoint_files
from pipeline.run import run

SEQ = 16
RECORDS = 48
WORDS = "the cat dog bird fish sat run walk jump play on mat hat house tree car hello world good bad".split()


def _texts(seed=3, n=RECORDS):
  rng = np.random.default_rng(seed)
  return {f"doc-{i:03d}": " ".join(rng.choice(WORDS, size=int(rng.integers(3, 9)))) for i in range(n)}


def _write_corpus(path, texts):
  path.write_text("".join(json.dumps({"id": k, "text": v}) + "\n" for k, v in texts.items()), encoding="utf-8")
  return str(path)


def _argv(model, corpus, output, *extra):
  return ["--model", model, "--input", corpus, "--input-format", "jsonl", "--output", output, "--seq-length",
          str(SEQ), "--pooling", "cls", "--batch-size", "4", *extra]


def _run(model, corpus, output, *extra):
  argv = _argv(model, corpus, output, *extra)
  return run(argv, test_pipeline=TestPipeline(argv=argv))


def _rows(output):
  import pyarrow as pa  # pylint: disable=import-outside-toplevel
  table = pa.concat_tables([pq.read_table(path) for path in _shards(output)])
  return {i: np.asarray(e, np.float32) for i, e in zip(table.column("id").to_pylist(),
                                                       table.column("embedding").to_pylist())}


def _shards(output):
  directory, stem = os.path.split(output)
  return sorted(os.path.join(directory, f) for f in os.listdir(directory)
                if f.startswith(stem + "-") and f.endswith(".parquet"))


def _staging(output):
  directory, stem = os.path.split(output)
  return sorted(os.path.join(directory, d) for d in os.listdir(directory)
                if d.startswith("bert-embed-tmp-") and d.endswith("-" + stem))


def _checkpoints(output):
  return [os.path.join(s, f) for s in _staging(output) for f in sorted(os.listdir(s))
          if checkpoint_files.parse_checkpoint_name(f)]


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_model_dir):
  """An uninterrupted run's vectors."""
  tmp = tmp_path_factory.mktemp("reference")
  corpus = _write_corpus(tmp / "corpus.jsonl", _texts())
  outcome = _run(tiny_model_dir, corpus, str(tmp / "out" / "emb"))
  return _rows(str(tmp / "out" / "emb")), outcome.manifest


def _assert_same(rows, reference_rows):
  assert sorted(rows) == sorted(reference_rows)
  for key, vector in reference_rows.items():
    np.testing.assert_allclose(rows[key], vector, atol=1e-5)


def test_a_rerun_resumes_from_the_failed_runs_checkpoints(tmp_path, tiny_model_dir, reference, stop_after):
  corpus = _write_corpus(tmp_path / "corpus.jsonl", _texts())
  output = str(tmp_path / "out" / "emb")
  disarm = stop_after(6)
  with pytest.raises(Exception, match="stopped after 6"):
    _run(tiny_model_dir, corpus, output)
  disarm()
  checkpointed = sum(checkpoint_files.parse_checkpoint_name(p).rows for p in _checkpoints(output))
  assert 0 < checkpointed < RECORDS
  assert not _shards(output)
  outcome = _run(tiny_model_dir, corpus, output)
  counts = outcome.manifest["counts"]
  assert counts["resumed"] == checkpointed
  assert counts["encoded"] == RECORDS - checkpointed
  assert counts["read"] == counts["written"] == RECORDS
  section = outcome.manifest["resume"]
  assert section["resumed_from"] and section["stopped_at"] and section["ignored"] == []
  _assert_same(_rows(output), reference[0])
  assert _staging(output) == []  # the failed run's staging and the run's own are gone after the commit


def _fail(model, corpus, output, stop_after, calls, *extra):
  disarm = stop_after(calls)
  with pytest.raises(Exception, match=f"stopped after {calls}"):
    _run(model, corpus, output, *extra)
  disarm()
  return sum(checkpoint_files.parse_checkpoint_name(p).rows for p in _checkpoints(output))


def test_torn_and_foreign_checkpoints_are_ignored_with_a_reason(tmp_path, tiny_model_dir, reference, stop_after):
  """A kill during a checkpoint's write leaves its temporary file; a checkpoint whose bytes are not those its name
  describes, or one copied from another prefix's staging, is not used; the records in them are encoded."""
  corpus = _write_corpus(tmp_path / "corpus.jsonl", _texts())
  output, other = str(tmp_path / "out" / "emb"), str(tmp_path / "out" / "emb-large")
  _fail(tiny_model_dir, corpus, other, stop_after, 2)
  foreign = _checkpoints(other)[0]
  checkpointed = _fail(tiny_model_dir, corpus, output, stop_after, 8)
  assert checkpointed >= 12
  staging = _staging(output)
  assert len(staging) == 1
  first, second = _checkpoints(output)[:2]
  data = open(first, "rb").read()
  with open(os.path.join(staging[0], "checkpoint-tmp-" + "a" * 32 + ".parquet"), "wb") as f:
    f.write(data[:len(data) // 2])  # killed while writing
  with open(second, "r+b") as f:  # changed since: no longer the bytes its name describes
    f.seek(len(data) // 3)
    f.write(b"\0" * 16)
  copied = os.path.join(staging[0], os.path.basename(foreign))
  with open(foreign, "rb") as src, open(copied, "wb") as dst:
    dst.write(src.read())
  lost = checkpoint_files.parse_checkpoint_name(second).rows
  outcome = _run(tiny_model_dir, corpus, output)
  counts, section = outcome.manifest["counts"], outcome.manifest["resume"]
  assert counts["resumed"] == checkpointed - lost  # the foreign rows are the same records: resumed once, not twice
  assert counts["encoded"] == RECORDS - counts["resumed"] and counts["written"] == RECORDS
  reasons = {os.path.basename(i["source"].split(" (")[0]): i["reason"] for i in section["ignored"]}
  assert "torn" in reasons["checkpoint-tmp-" + "a" * 32 + ".parquet"]
  assert "not the file its name describes" in reasons[os.path.basename(second)]
  assert "another prefix's or fingerprint's checkpoint" in reasons[os.path.basename(copied)]
  _assert_same(_rows(output), reference[0])
  assert [os.path.basename(s) for s in _staging(str(tmp_path / "out" / "emb-large"))]  # another prefix's: kept


def test_a_changed_option_resumes_nothing_and_says_why(tmp_path, tiny_model_dir, stop_after):
  corpus = _write_corpus(tmp_path / "corpus.jsonl", _texts())
  output = str(tmp_path / "out" / "emb")
  assert _fail(tiny_model_dir, corpus, output, stop_after, 4) > 0
  argv = _argv(tiny_model_dir, corpus, output)
  argv[argv.index("cls")] = "mean"
  outcome = run(argv, test_pipeline=TestPipeline(argv=argv))
  counts, section = outcome.manifest["counts"], outcome.manifest["resume"]
  assert counts["resumed"] == 0 and counts["encoded"] == RECORDS
  assert section["resumed_from"] is None
  [ignored] = section["ignored"]
  assert "another embedding fingerprint" in ignored["reason"] and 'pooling "cls" -> "mean"' in ignored["reason"]


def test_records_changed_since_the_failed_run_are_encoded_again(tmp_path, tiny_model_dir, reference, stop_after):
  texts = _texts()
  corpus = _write_corpus(tmp_path / "corpus.jsonl", texts)
  output = str(tmp_path / "out" / "emb")
  checkpointed = _fail(tiny_model_dir, corpus, output, stop_after, 6)
  ids = [i for path in _checkpoints(output) for i in pq.read_table(path, columns=["id"]).column("id").to_pylist()]
  changed = sorted(set(ids))[:3]
  for key in changed:
    texts[key] = "a changed text about " + texts[key]
  _write_corpus(tmp_path / "corpus.jsonl", texts)
  outcome = _run(tiny_model_dir, corpus, output)
  counts = outcome.manifest["counts"]
  assert counts["resumed"] == checkpointed - len(changed)
  assert counts["encoded"] == RECORDS - counts["resumed"]
  rows = _rows(output)
  for key, vector in reference[0].items():
    if key in changed:
      assert not np.allclose(rows[key], vector, atol=1e-3)
    else:
      np.testing.assert_allclose(rows[key], vector, atol=1e-5)
  table = pq.read_table(_shards(output), columns=["id", "text_sha256"]).to_pydict()
  sha = dict(zip(table["id"], table["text_sha256"]))
  from formats.records import text_sha256  # pylint: disable=import-outside-toplevel
  assert all(sha[key] == text_sha256(texts[key]) for key in changed)


def test_no_resume_encodes_everything(tmp_path, tiny_model_dir, stop_after):
  corpus = _write_corpus(tmp_path / "corpus.jsonl", _texts())
  output = str(tmp_path / "out" / "emb")
  assert _fail(tiny_model_dir, corpus, output, stop_after, 4) > 0
  outcome = _run(tiny_model_dir, corpus, output, "--no-resume")
  assert outcome.manifest["counts"]["resumed"] == 0 and outcome.manifest["counts"]["encoded"] == RECORDS
  assert outcome.manifest["resume"]["enabled"] is False
  assert _staging(output) == []


def test_the_scheduling_pattern_carries_resumes_and_encodes_each_record_once(tmp_path, tiny_model_dir, stop_after):
  """Under ROOT with --previous latest:ROOT: run 1 commits; run 2 (a new prefix, 12 texts changed) fails; run 3
  (another new prefix) carries run 1's unchanged rows, resumes what run 2 encoded and encodes the rest. The stray
  temporary file of a LATEST write killed earlier goes with run 2's staging once run 3 commits."""
  root = tmp_path / "root"
  texts = _texts()
  corpus = _write_corpus(tmp_path / "corpus.jsonl", texts)
  latest = ("--previous", f"latest:{root}")
  _run(tiny_model_dir, corpus, str(root / "run-1" / "emb"), *latest)
  for key in sorted(texts)[::4]:
    texts[key] = "now about " + texts[key]
  _write_corpus(tmp_path / "corpus.jsonl", texts)
  checkpointed = _fail(tiny_model_dir, corpus, str(root / "run-2" / "emb"), stop_after, 1, *latest)
  assert 0 < checkpointed < RECORDS // 4
  stray = root / ("LATEST.tmp-" + "c" * 32)
  stray.write_text("half a pointer")
  os.utime(stray, (1e9, 1e9))
  failed = _staging_path(root / "run-2")
  outcome = _run(tiny_model_dir, corpus, str(root / "run-3" / "emb"), *latest)
  counts = outcome.manifest["counts"]
  assert counts["unchanged"] == RECORDS - RECORDS // 4 and counts["changed"] == RECORDS // 4
  assert counts["resumed"] == checkpointed and counts["encoded"] == RECORDS // 4 - checkpointed
  assert counts["written"] == counts["read"] == RECORDS
  assert failed and outcome.manifest["resume"]["resumed_from"] == failed
  assert not stray.exists() and not _staging(str(root / "run-2" / "emb"))
  assert (root / "LATEST").read_text().strip() == str(root / "run-3" / "emb")
  fresh = str(tmp_path / "fresh" / "emb")
  _run(tiny_model_dir, corpus, fresh)
  _assert_same(_rows(str(root / "run-3" / "emb")), _rows(fresh))


def _staging_path(directory):
  [name] = [d for d in os.listdir(directory) if d.startswith("bert-embed-tmp-")] or [None]
  return None if name is None else str(directory / name)


def test_clean_lists_and_removes_what_failed_runs_left(tmp_path, tiny_model_dir, stop_after, capsys):
  from cli import main as cli  # pylint: disable=import-outside-toplevel
  corpus = _write_corpus(tmp_path / "corpus.jsonl", _texts())
  output = str(tmp_path / "out" / "emb")
  _fail(tiny_model_dir, corpus, output, stop_after, 3)
  [staging] = _staging(output)
  size = sum(os.path.getsize(os.path.join(staging, f)) for f in os.listdir(staging))
  stray = tmp_path / "out" / ("LATEST.tmp-" + "d" * 32)
  stray.write_bytes(b"12345")
  capsys.readouterr()
  assert cli.main(["clean", output, "--dry-run"]) == 0
  lines = capsys.readouterr().out.splitlines()
  assert lines == [f"{staging}  {size} bytes", f"{stray}  5 bytes",
                   f"bert-embed clean: would remove 2 leftovers, {size + 5} bytes"]
  assert os.path.isdir(staging) and stray.exists()
  assert cli.main(["clean", str(tmp_path / "out")]) == 0
  assert capsys.readouterr().out.splitlines()[-1] == f"bert-embed clean: removed 2 leftovers, {size + 5} bytes"
  assert sorted(os.listdir(tmp_path / "out")) == []


def test_dedupe_texts_mlm_scores_and_int8_resume_to_what_an_uninterrupted_run_writes(tmp_path, tiny_model_dir,
                                                                                     stop_after):
  """--dedupe-texts checkpoints one row per distinct text: a rerun resumes every record with that text; MLM scores
  come back with the rows; int8 codes are calibrated on resumed and encoded rows together."""
  texts = _texts()
  for i in range(40, RECORDS):  # 8 records repeat earlier texts
    texts[f"doc-{i:03d}"] = texts[f"doc-{i - 40:03d}"]
  corpus = _write_corpus(tmp_path / "corpus.jsonl", texts)
  options = ("--dedupe-texts", "--mlm-scores", "--output-dtype", "int8")
  whole = str(tmp_path / "whole" / "emb")
  _run(tiny_model_dir, corpus, whole, *options)
  output = str(tmp_path / "out" / "emb")
  checkpointed = _fail(tiny_model_dir, corpus, output, stop_after, 5, *options)  # distinct texts
  assert 0 < checkpointed < 40
  from formats.records import text_sha256  # pylint: disable=import-outside-toplevel
  shas = {s for path in _checkpoints(output) for s in pq.read_table(path).column("text_sha256").to_pylist()}
  assert len(shas) == checkpointed
  outcome = _run(tiny_model_dir, corpus, output, *options)
  counts = outcome.manifest["counts"]
  # Every record of a checkpointed text is resumed (duplicates too); the other distinct texts are encoded once.
  assert counts["resumed"] == sum(text_sha256(t) in shas for t in texts.values())
  assert counts["encoded"] == 40 - checkpointed and counts["written"] == RECORDS
  import pyarrow as pa  # pylint: disable=import-outside-toplevel
  got, want = (pa.concat_tables([pq.read_table(p) for p in _shards(o)]).sort_by("id").to_pydict()
               for o in (output, whole))
  assert got["id"] == want["id"]
  np.testing.assert_allclose(np.asarray(got["mlm_pll"]), np.asarray(want["mlm_pll"]), atol=1e-4)
  codes = np.abs(np.asarray(got["embedding"], np.int16) - np.asarray(want["embedding"], np.int16))
  assert codes.max() <= 1  # int8: a vector within 1e-5 is the same code, or the next one at a step's edge


def test_two_reruns_racing_on_one_prefix_leave_a_complete_output(tmp_path, tiny_model_dir, reference, stop_after):
  """Two reruns of a failed run, started together (each its own process), both resume from its checkpoints. Each
  either commits or fails with one line; the prefix ends with one run's complete output (its manifest's shards on
  disk, byte for byte), equal to an uninterrupted run's, and a further rerun finds nothing left to resume from."""
  import hashlib  # pylint: disable=import-outside-toplevel
  import subprocess  # pylint: disable=import-outside-toplevel
  import sys  # pylint: disable=import-outside-toplevel
  corpus = _write_corpus(tmp_path / "corpus.jsonl", _texts())
  output = str(tmp_path / "out" / "emb")
  assert _fail(tiny_model_dir, corpus, output, stop_after, 6) > 0
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env = dict(os.environ, PYTHONPATH=root)
  argv = [sys.executable, "-m", "cli", "run", *_argv(tiny_model_dir, corpus, output)]
  procs = [subprocess.Popen(argv, cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
           for _ in range(2)]
  results = [(p.wait(timeout=600), p.stdout.read(), p.stderr.read()) for p in procs]
  assert any(code == 0 for code, _, _ in results), results
  for code, stdout, stderr in results:
    assert code in (0, 1), stderr[-2000:]
    assert "resuming" in stdout.splitlines()[0]
    if code:
      assert "Traceback" not in stderr
  with open(output + "-manifest.json", encoding="utf-8") as f:
    manifest = json.load(f)
  directory = os.path.dirname(output)
  for name, shard in manifest["shards"].items():
    data = open(os.path.join(directory, name), "rb").read()
    assert (len(data), hashlib.sha256(data).hexdigest()) == (shard["size_bytes"], shard["sha256"])
  assert sorted(f for f in os.listdir(directory) if f.startswith("emb-")) == sorted(
      [os.path.basename(p) for p in manifest["files"]] + ["emb-manifest.json"])
  _assert_same(_rows(output), reference[0])


def test_a_rerun_on_gcs_resumes_and_removes_the_failed_runs_staging(gcs, gcs_tiny_model, tmp_path, stop_after):
  """gs:// (the emulator): checkpoints are written, listed, verified and removed through Beam's FileSystems."""
  from formats.paths import matching_paths  # pylint: disable=import-outside-toplevel
  texts = _texts(seed=5, n=24)
  corpus = _write_corpus(tmp_path / "corpus.jsonl", texts)
  output = f"{gcs}/resume/run/emb"
  checkpoints = f"{gcs}/resume/run/bert-embed-tmp-*-emb/checkpoint-*"
  disarm = stop_after(2)
  with pytest.raises(Exception, match="stopped after 2"):
    _run(gcs_tiny_model, corpus, output)
  disarm()
  written = matching_paths(checkpoints)
  rows = sum(checkpoint_files.parse_checkpoint_name(p).rows for p in written)
  assert 0 < rows < 24
  outcome = _run(gcs_tiny_model, corpus, output)
  counts = outcome.manifest["counts"]
  assert (counts["resumed"], counts["encoded"], counts["written"]) == (rows, 24 - rows, 24)
  assert matching_paths(f"{gcs}/resume/run/bert-embed-tmp-*-emb/*") == []
  assert matching_paths(checkpoints) == []


def test_stray_latest_writes_older_than_the_run_are_removed_and_nothing_else(tmp_path):
  from snapshot.staging import remove_leftovers  # pylint: disable=import-outside-toplevel
  old, new = tmp_path / ("LATEST.tmp-" + "e" * 32), tmp_path / ("LATEST.tmp-" + "f" * 32)
  others = [tmp_path / "LATEST", tmp_path / "LATEST.tmp-notours", tmp_path / ("LATEST2.tmp-" + "e" * 32)]
  for path in [old, new] + others:
    path.write_text("x")
  os.utime(old, (1e9, 1e9))  # killed long ago; `new` may be a running LATEST write
  staging = tmp_path / ("bert-embed-tmp-" + "1" * 32 + "-emb")
  staging.mkdir()
  (staging / "run.json").write_text("{}")
  removed = remove_leftovers([str(staging)], str(tmp_path / "LATEST"), before=os.path.getmtime(new))
  assert sorted(removed) == sorted([str(staging), str(old)])
  assert sorted(os.listdir(tmp_path)) == sorted(p.name for p in [new] + others)
