"""Resuming a killed or failed run from its checkpoints (pipeline/resume.py, transforms/checkpoint.py,
transforms/resume_rows.py): a rerun of the same command encodes only what the failed run had not checkpointed, and
writes what an uninterrupted run writes.

A run is stopped mid-way in process: the encoder handler is wrapped so that its Kth call raises (a systemic fault
the handler does not isolate, so the job fails), with checkpoints every few rows (transforms.checkpoint.MAX_ROWS
patched). The uninterrupted reference run is shared (module fixture).
"""
import json
import os
import threading

import numpy as np
import pyarrow.parquet as pq
import pytest
from apache_beam.testing.test_pipeline import TestPipeline

from formats import checkpoint_files
from pipeline.run import run
from transforms import checkpoint
from transforms.encode import BertEncoderModelHandler

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


class _Stop(RuntimeError):
  pass


@pytest.fixture
def stop_after(monkeypatch):
  """stop_after(k): the encoder's (k+1)th batch raises, failing the job; checkpoints every 4 rows."""
  monkeypatch.setattr(checkpoint, "MAX_ROWS", 4)
  original = BertEncoderModelHandler.run_inference

  def arm(calls):
    count = {"n": 0}
    lock = threading.Lock()

    def failing(self, batch, model, inference_args=None):
      with lock:
        count["n"] += 1
        if count["n"] > calls:
          raise _Stop(f"stopped after {calls} encoder calls")
      return original(self, batch, model, inference_args)

    monkeypatch.setattr(BertEncoderModelHandler, "run_inference", failing)
    return lambda: monkeypatch.setattr(BertEncoderModelHandler, "run_inference", original)

  return arm


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
