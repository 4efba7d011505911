"""Faults: a failing encoder batch loses only its poisonous record; a killed job leaves no output that looks complete.

The encoder tests drive BertEncoderModelHandler.run_inference with a fake model object (no TensorFlow model), so
the failure pattern is exact. The kill test runs `python -m cli run` on the multi-processing DirectRunner in its
own process group and SIGKILLs the whole group mid-run.
"""
import glob
import json
import os
import pathlib
import signal
import subprocess
import sys
import time
from unittest import mock

import numpy as np
import pyarrow.parquet as pq
import pytest
import tensorflow as tf
import apache_beam as beam
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.testing.test_pipeline import TestPipeline

from cli import main as cli
from snapshot.staging import remove_stale_staging
from pipeline.run import run
from transforms.embedding import encode
from transforms.embedding.embed import EmbedTexts
from transforms.embedding.embed_config import EmbedConfig
from runtime.encoding import Encoded
from transforms.embedding.encode import BertEncoderModelHandler, EncodeError
from formats.records import EncoderInput, TextRecord
from runtime.failure_isolation import SystemicError
from runtime.saved_models import LoadedModel
from runtime.tokenizer import Tokenizer

ROOT = pathlib.Path(__file__).resolve().parent.parent
HIDDEN = 4
SEQ = 8
MARKER = 100  # record i carries word id MARKER + i after [CLS]
_WORDS = "dog bird fish hat mat tree car house day night man woman child people word model".split()  # tiny vocab


# --- a poisonous or flaky batch -----------------------------------------------------------------

class _FakeEncoder:
  """Stands in for a loaded encoder: pooled_output row = the record's marker id; fails when told to."""

  def __init__(self, fails):
    self._fails = fails  # (call number from 1, markers in the batch) -> bool
    self.batch_sizes = []

  def __call__(self, inputs):
    markers = inputs["input_word_ids"].numpy()[:, 1]
    self.batch_sizes.append(len(markers))
    if self._fails(len(self.batch_sizes), set(markers.tolist())):
      raise tf.errors.ResourceExhaustedError(None, None, "fake failure")
    return {"pooled_output": tf.constant(np.repeat(markers[:, None], HIDDEN, axis=1).astype(np.float32))}


def _batch(n=64):
  out = []
  for i in range(n):
    ids = np.zeros(SEQ, np.int32)
    ids[:3] = (2, MARKER + i, 3)
    mask = (ids > 0).astype(np.int32)
    out.append(EncoderInput(TextRecord(id=f"r{i}", text=f"text {i}"), ids, mask, np.zeros(SEQ, np.int32), 3, False))
  return out


def _infer(fails, n=64):
  fake = _FakeEncoder(fails)
  handler = BertEncoderModelHandler("fake-encoder", EmbedConfig(pooling="pooled"))
  # Loaded the production way (the precision runner included), only the SavedModel swapped for the fake.
  with mock.patch.object(encode, "load_encoder", lambda path: LoadedModel(path, fake, "/CPU:0")):
    loaded = handler.load_model()
  assert loaded.obj is fake and loaded.precision_runner.precision == "fp32"
  results = list(handler.run_inference(_batch(n), loaded))
  assert [r.example.record.id for r in results] == [f"r{i}" for i in range(n)]  # one result per record, in order
  failed = [r.example.record.id for r in results if isinstance(r.inference, EncodeError)]
  for r in results:  # each success carries its own record's vector, not a neighbour's
    if isinstance(r.inference, Encoded):
      marker = r.example.input_word_ids[1]
      np.testing.assert_array_equal(r.inference.embedding, np.full(HIDDEN, marker, np.float32))
  return results, failed, fake.batch_sizes


def test_one_poisonous_record_is_dead_lettered_alone_and_its_63_neighbours_are_encoded():
  results, failed, sizes = _infer(lambda call, markers: MARKER + 13 in markers)
  assert failed == ["r13"]
  assert "ResourceExhaustedError: fake failure" in results[13].inference.reason
  assert sum(isinstance(r.inference, Encoded) for r in results) == 63
  # 64 -> 32 -> ... -> 1 fails (7 calls), plus each level's good half (6) and one retry of the lone record.
  assert sizes.count(1) == 3 and len(sizes) == 7 + 6 + 1


def test_a_transient_failure_of_the_whole_batch_dead_letters_nothing():
  _, failed, sizes = _infer(lambda call, markers: call == 1)
  assert failed == [] and sizes == [64, 32, 32]


def test_a_transient_failure_that_reaches_a_lone_record_is_retried():
  # The first 7 calls fail: the batch, then the first half at every level down to r0 alone; r0's retry succeeds.
  _, failed, sizes = _infer(lambda call, markers: call <= 7)
  assert failed == [] and sizes[:8] == [64, 32, 16, 8, 4, 2, 1, 1]


def test_a_record_that_fails_twice_alone_is_dead_lettered():
  alone = {"calls": 0}

  def fails(unused_call, markers):  # r5 fails every batch it is in, and its first two calls alone
    if MARKER + 5 not in markers:
      return False
    if len(markers) > 1:
      return True
    alone["calls"] += 1
    return alone["calls"] <= 2

  _, failed, _ = _infer(fails, n=8)
  assert failed == ["r5"] and alone["calls"] == 2


def test_an_error_on_every_record_is_raised_for_the_runner_to_retry_not_dead_lettered():
  # E.g. a lost device or a code bug: dead-lettering all 64 records would make a broken run look successful. This
  # handler has no preprocessor to pack probe texts with, and no record has succeeded to serve as one.
  with pytest.raises(SystemicError, match="has not succeeded on any record yet .*ResourceExhaustedError: fake") as e:
    _infer(lambda call, markers: True)
  assert isinstance(e.value.__cause__, tf.errors.ResourceExhaustedError)


# --- the same through EmbedTexts on the DirectRunner ----------------------------------------------

def _embed_failing(tiny_model_dir, tmp_path, monkeypatch, poisonous, n=16, texts=None, error=None):
  """EmbedTexts over n records with the encoder failing every call that holds a `poisonous(id)` record.

  Returns (written ids, dead letters {id: reason}, encoder calls as (size, failed), the pipeline result). All n
  records form one encoder batch (no buckets, batch size n). `texts`: the records' texts (default "cat" i+1 times);
  `error(call number)`: the exception a failing call raises (default one message every time)."""
  calls = []
  real = encode.encode_batch

  def encode_batch(model, batch, *args, **kwargs):
    failed = any(poisonous(e.record.id) for e in batch)
    calls.append((len(batch), failed))
    if failed:
      raise (error or (lambda call: RuntimeError("CUDA error: an illegal memory access was encountered")))(len(calls))
    return real(model, batch, *args, **kwargs)

  monkeypatch.setattr(encode, "encode_batch", encode_batch)  # the in-process DirectRunner runs this module
  saved = {"written": tmp_path / "written.json", "dead": tmp_path / "dead.json"}

  def save(name):
    def write(rows):
      with open(saved[name], "w", encoding="utf-8") as f:
        json.dump(rows, f)
    return write

  texts = texts or [" ".join(["cat"] * (i + 1)) for i in range(n)]
  p = TestPipeline()
  records = p | beam.Create([TextRecord(id=f"r{i}", text=text) for i, text in enumerate(texts)])
  result = records | EmbedTexts(os.path.join(tiny_model_dir, "preprocessor"), os.path.join(tiny_model_dir, "encoder"),
                                EmbedConfig(seq_length=32, pooling="mean", bucket_lengths=None, batch_size=n,
                                            min_batch_size=n))
  _ = result.embeddings | beam.Map(lambda r: r.id) | beam.combiners.ToList() | beam.Map(save("written"))
  _ = (result.dead_letters | beam.Map(lambda d: (d.id, d.reason)) | "DeadList" >> beam.combiners.ToList()
       | "SaveDead" >> beam.Map(save("dead")))
  outcome = p.run()
  outcome.wait_until_finish()
  with open(saved["written"], encoding="utf-8") as f:
    written = json.load(f)
  with open(saved["dead"], encoding="utf-8") as f:
    dead = dict(json.load(f))
  return written, dead, calls, outcome


def _counter(outcome, name):
  counters = outcome.metrics().query(MetricsFilter().with_namespace("bert_embed").with_name(name))["counters"]
  return sum(c.committed for c in counters)


def _out_of_memory(call):
  """A fault whose message differs on every call, as TensorFlow's out-of-memory errors name a shape."""
  return tf.errors.ResourceExhaustedError(None, None, f"OOM when allocating tensor with shape[{call},32,384]")


def test_embed_texts_fails_when_the_encoder_fails_every_batch_even_with_a_new_message_each_time(
    tiny_model_dir, tmp_path, monkeypatch):
  with pytest.raises(SystemicError, match=r"the encoder fails on its probe texts too .*ResourceExhaustedError: OOM"):
    _embed_failing(tiny_model_dir, tmp_path, monkeypatch, lambda record_id: True, error=_out_of_memory)
  assert not os.path.exists(tmp_path / "written.json")  # the job stopped: nothing was collected as a result


def test_embed_texts_dead_letters_only_the_poisonous_records_and_counts_the_retries(tiny_model_dir, tmp_path,
                                                                                    monkeypatch):
  poisonous = {"r3", "r4", "r5", "r11"}  # three side by side with one message, then good records, then another
  written, dead, calls, outcome = _embed_failing(tiny_model_dir, tmp_path, monkeypatch, poisonous.__contains__)
  assert sorted(dead) == sorted(poisonous)
  assert all("illegal memory access" in reason for reason in dead.values())
  assert sorted(written) == sorted(f"r{i}" for i in range(16) if f"r{i}" not in poisonous)
  assert calls[0] == (16, True)  # one batch: every call after its first is a retry
  assert _counter(outcome, "encoder_isolation_retries") == len(calls) - 1 > 0
  assert _counter(outcome, "records_dead_lettered_encode") == len(poisonous)


@tf.function
def _assert_no_poison(poisoned):
  tf.debugging.Assert(tf.logical_not(poisoned), ["poisonous token"])
  return poisoned


def _graph_assertion(unused_call):
  """The error a graph assertion raises: the same text for every record ("Graph execution error:" first)."""
  try:
    _assert_no_poison(tf.constant(True))
  except tf.errors.InvalidArgumentError as e:
    return e
  raise AssertionError("the assertion did not fail")


def test_five_different_records_with_one_poisonous_token_in_a_batch_are_dead_letters_not_a_systemic_error(
    tiny_model_dir, tmp_path, monkeypatch):
  # r3-r7, side by side, fail alike (distinct texts: the tiny vocab reads digits as [UNK])
  texts = [f"{'fox' if 3 <= i < 8 else 'cat'} {_WORDS[i]}" for i in range(16)]
  poisonous = {f"r{i}" for i, text in enumerate(texts) if "fox" in text}
  written, dead, _, _ = _embed_failing(tiny_model_dir, tmp_path, monkeypatch, poisonous.__contains__, texts=texts,
                                       error=_graph_assertion)
  assert sorted(dead) == [f"r{i}" for i in range(3, 8)]
  assert sorted(written) == sorted(f"r{i}" for i in range(16) if not 3 <= i < 8)
  for reason in dead.values():  # the assertion's own text, not "Graph execution error:"
    assert reason == "InvalidArgumentError: assertion failed: [poisonous token] (node Assert/Assert)", reason


def test_a_systemic_encoder_fault_ends_bert_embed_run_with_one_line(tiny_model_dir, tmp_path, monkeypatch, capsys):
  calls = []

  def encode_batch(*unused_args, **unused_kwargs):
    calls.append(1)
    raise _out_of_memory(len(calls))

  monkeypatch.setattr(encode, "encode_batch", encode_batch)
  (tmp_path / "in.txt").write_text("".join(f"{w} {v}\n" for w in _WORDS[:5] for v in _WORDS[5:9]), encoding="utf-8")
  code = cli.main(["run", "--model", tiny_model_dir, "--input", str(tmp_path / "in.txt"), "--output",
                   str(tmp_path / "out" / "emb"), "--seq-length", "32"])
  err = capsys.readouterr().err.strip().splitlines()
  assert code == 1 and len(err) == 1, err
  assert err[0].startswith("bert-embed run: error: the encoder fails on its probe texts too after 4 different "
                           "records in a row failed alone, so the fault is the model's, the worker's or the code's, "
                           "not the records': ResourceExhaustedError: OOM when allocating tensor with shape["), err
  assert not glob.glob(str(tmp_path / "out" / "emb-*"))


@pytest.mark.parametrize("fault", ["poisonous", "systemic"])
def test_tokenizing_probes_the_tokenizer_too(tiny_model_dir, tmp_path, monkeypatch, fault):
  real = Tokenizer.pack
  calls = []

  def pack(self, records):
    calls.append(1)
    if fault == "systemic":
      raise tf.errors.ResourceExhaustedError(None, None, f"OOM after {len(calls)} calls")
    if any("fox" in r.text for r in records):
      raise tf.errors.InvalidArgumentError(None, None, "poisonous token")
    return real(self, records)

  monkeypatch.setattr(Tokenizer, "pack", pack)
  p = TestPipeline()
  texts = [f"{'fox' if 2 <= i < 8 else 'cat'} {_WORDS[i]}" for i in range(12)]
  records = p | beam.Create([TextRecord(id=f"r{i}", text=text) for i, text in enumerate(texts)])
  result = records | EmbedTexts(os.path.join(tiny_model_dir, "preprocessor"), os.path.join(tiny_model_dir, "encoder"),
                                EmbedConfig(seq_length=32, pooling="mean", preprocess_batch_size=12))
  dead = tmp_path / "dead.json"
  _ = (result.dead_letters | beam.Map(lambda d: (d.id, d.stage)) | beam.combiners.ToList()
       | beam.Map(lambda rows: dead.write_text(json.dumps(sorted(rows)))))
  if fault == "systemic":
    with pytest.raises(SystemicError, match="the tokenizer fails on its probe texts too .* OOM after"):
      p.run().wait_until_finish()
    return
  p.run().wait_until_finish()
  assert json.loads(dead.read_text()) == [[f"r{i}", "preprocess"] for i in range(2, 8)]


# --- a worker process killed mid-run ------------------------------------------------------------

def test_a_rerun_deletes_the_staged_files_of_its_own_prefix_only(tmp_path):
  hexes = "0123456789abcdef" * 2
  own = [tmp_path / f"bert-embed-tmp-{hexes}-emb", tmp_path / f"bert-embed-tmp-{'a' * 32}-emb",
         tmp_path / f"beam-temp-embeddings-{hexes}-emb", tmp_path / f"beam-temp-errors-{hexes}-emb"]  # older versions'
  others = [tmp_path / f"bert-embed-tmp-{'b' * 32}-emb", tmp_path / f"bert-embed-tmp-{hexes}-emb2",
            tmp_path / f"bert-embed-tmp-{hexes}-emb-large", tmp_path / f"bert-embed-tmp-{hexes}-emb-errors",
            tmp_path / f"beam-temp-embeddings-{hexes}-emb2", tmp_path / f"beam-temp-errors-{hexes}-emb-large",
            tmp_path / f"beam-temp-embeddings-{hexes}-emb-errors", tmp_path / f"beam-temp-emb-errors-{hexes}",
            tmp_path / "beam-temp-emb-x"]  # Beam's own naming: the scratch of emb's dead letters or of emb-errors
  for d in own + others:
    d.mkdir()
  (own[0] / "embeddings-1.parquet").write_bytes(b"half a shard")
  deleted = remove_stale_staging(str(tmp_path / "emb"), own_token="b" * 32)  # b...: the running job's own
  assert sorted(deleted) == sorted(str(d) for d in own)
  assert sorted(os.listdir(tmp_path)) == sorted(d.name for d in others)


def _write_corpus(directory, files=4, lines=2000):
  """Real sentences from sample_corpus/, each made distinct by a (file, line) suffix."""
  sentences = [s.strip() for p in sorted(glob.glob(str(ROOT / "sample_corpus" / "*.txt")))
               for s in open(p, encoding="utf-8") if s.strip()]
  directory.mkdir()
  for f in range(files):
    with open(directory / f"part-{f}.txt", "w", encoding="utf-8") as out:
      out.writelines(f"{sentences[(i * 7 + f) % len(sentences)]} ({f}.{i})\n" for i in range(lines))
  return files * lines


def _prefix_files(prefix):
  """Every file named like this prefix's outputs (shards, error shards, manifest)."""
  return sorted(glob.glob(prefix + "-*"))


def _group_alive(pgid):
  try:
    os.killpg(pgid, 0)
  except ProcessLookupError:
    return False
  return True


def test_a_killed_multiprocess_run_keeps_the_earlier_output_and_a_rerun_replaces_it(tmp_path, tiny_model_dir):
  out = tmp_path / "out"
  prefix = str(out / "emb")
  common = ["--model", tiny_model_dir, "--seq-length", "32", "--pooling", "mean", "--output", prefix]

  # 1. A complete earlier run under the same prefix: a manifest and 3 shards.
  (tmp_path / "old.txt").write_text("".join(f"old line {i}\n" for i in range(30)), encoding="utf-8")
  argv = common + ["--input", str(tmp_path / "old.txt"), "--num-shards", "3"]
  old = run(argv, test_pipeline=TestPipeline(argv=argv))
  assert old.manifest["counts"]["written"] == 30 and len(old.manifest["output_files"]) == 3
  old_files = {path: open(path, "rb").read() for path in _prefix_files(prefix)}
  assert prefix + "-manifest.json" in old_files

  # 2. A bigger job on 2 worker processes, SIGKILLed (the launcher and its workers) while it is running.
  total = _write_corpus(tmp_path / "corpus", lines=4000)
  argv = common + ["--input", str(tmp_path / "corpus" / "*.txt"), "--direct_num_workers=2",
                   "--direct_running_mode=multi_processing"]
  with open(tmp_path / "killed.log", "wb") as log:
    proc = subprocess.Popen([sys.executable, "-m", "cli", "run", *argv], cwd=ROOT, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
  pgid = os.getpgid(proc.pid)
  try:
    deadline = time.monotonic() + 120
    # Rows encoded and checkpointed: a published checkpoint (checkpoint-ROWS-SIZE-SHA.parquet, not the temporary
    # checkpoint-tmp-HEX.parquet of one being written, after which a kill leaves nothing to resume).
    while not glob.glob(str(out / "bert-embed-tmp-*" / "checkpoint-[0-9]*.parquet")):
      assert proc.poll() is None, (tmp_path / "killed.log").read_text()[-3000:]
      assert time.monotonic() < deadline, "the job did not checkpoint within 120 s"
      time.sleep(0.1)
    assert proc.poll() is None, "the job finished before it could be killed: make the corpus bigger"
    assert os.path.exists(prefix + "-manifest.json")  # the old one stays until the run is committed
    os.killpg(pgid, signal.SIGKILL)
    proc.wait(timeout=30)
    for _ in range(100):  # the workers die with the group
      if not _group_alive(pgid):
        break
      time.sleep(0.1)
    assert not _group_alive(pgid)
  finally:
    if proc.poll() is None or _group_alive(pgid):
      os.killpg(pgid, signal.SIGKILL)
      proc.wait(timeout=30)
  assert {path: open(path, "rb").read() for path in _prefix_files(prefix)} == old_files  # as it was, byte for byte
  assert glob.glob(str(out / "bert-embed-tmp-*" / "*"))  # the killed run's staged files, aside

  # 3. A rerun completes and replaces the partial output: its manifest lists exactly the files on disk. It resumes
  # from the killed run's checkpoints: every record resumed or encoded, once.
  argv = common + ["--input", str(tmp_path / "corpus" / "*.txt")]
  rerun = run(argv, test_pipeline=TestPipeline(argv=argv))
  m = rerun.manifest
  assert (m["counts"]["read"], m["counts"]["written"], m["counts"]["dead_lettered"]) == (total, total, 0)
  # The manifest says which checkpoints were ignored, and why.
  assert 0 < m["counts"]["resumed"] < total, json.dumps(m.get("resume"))
  assert m["counts"]["resumed"] + m["counts"]["encoded"] == total
  assert _prefix_files(prefix) == sorted(m["files"] + [prefix + "-manifest.json"])
  assert not glob.glob(str(out / "bert-embed-tmp-*"))  # the killed run's staged files are gone
  rows = sum(pq.ParquetFile(f).metadata.num_rows for f in m["output_files"])
  assert rows == total
