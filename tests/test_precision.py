"""Reduced precision (runtime/precision.py): bf16 vectors near fp32, the same records succeed, honest reporting."""
import contextlib
import os
import threading

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_text  # noqa: F401  (registers the preprocessor's ops)

from pipeline.run import run
from runtime import precision

# Whether bf16 runs depends on the CPU (AVX512_BF16 or AMX) and on oneDNN's ISA cap. The tests below assert the
# contract on every CPU: bf16 where this worker runs it, else fp32 with the reason, and vectors within cosine 0.999
# of fp32 either way.
BF16_BLOCKER = precision.blocker("bf16", "/CPU:0")
HAS_BF16 = BF16_BLOCKER is None


SENTENCES = [
    "the cat sat on the mat.",
    "hello world!",
    "a dog is on the mat, the cat is not.",
    "is the world hello?",
    "the quick brown fox jumps over the lazy dog and the dog does not play.",
    "cats and dogs are sitting on mats in the world.",
]


def _no_isa_cap(monkeypatch):
  for name in ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA"):  # with a cap (tests/test_precision_guard.py)
    monkeypatch.delenv(name, raising=False)


def test_hardware_detection_from_cpu_flags(monkeypatch):
  _no_isa_cap(monkeypatch)
  assert precision.cpu_has_bf16({"avx512f", "avx512_bf16"})
  assert precision.cpu_has_bf16({"amx_bf16", "amx_tile"})
  assert not precision.cpu_has_bf16({"avx512f", "avx2"})
  assert precision.available("/CPU:0", {"avx512_bf16"}) == ("bf16",)
  assert precision.available("/CPU:0", {"avx2"}) == ()
  assert precision.available("/GPU:0", set()) == ("fp16",)


def test_rewrites_exist_only_where_tf_has_them():
  assert precision.rewrite_name("bf16", "/CPU:0") == "auto_mixed_precision_onednn_bfloat16"
  assert precision.rewrite_name("fp16", "/GPU:0") == "auto_mixed_precision"
  assert precision.rewrite_name("bf16", "/GPU:0") is None  # TF's CUDA rewrite only makes fp16
  assert precision.rewrite_name("fp16", "/CPU:0") is None
  assert precision.rewrite_name("fp32", "/CPU:0") is None


def _loaded(export_dir, seq_length):
  pre = tf.saved_model.load(os.path.join(export_dir, "preprocessor"))
  enc = tf.saved_model.load(os.path.join(export_dir, "encoder"))
  return enc, precision.probe_inputs(pre, seq_length)


# A vector may move by at most 1 - COSINE_FLOOR in reduced precision; the right record must be the nearest by more
# than twice that, so that the floor alone tells records apart.
MARGIN = 0.005


def _assert_each_is_nearest_its_own(reduced, exact, what: str) -> None:
  """Row i of `reduced` is within cosine COSINE_FLOOR of row i of `exact`, and nearer to it than to any other row
  of `exact` by MARGIN: a vector given to the wrong record (or a floor that every record passes) fails."""
  r = np.asarray(reduced, np.float64)
  e = np.asarray(exact, np.float64)
  assert len(r) == len(e) > 1
  cos = (r / np.linalg.norm(r, axis=1, keepdims=True)) @ (e / np.linalg.norm(e, axis=1, keepdims=True)).T
  own = np.diag(cos)
  nearest_other = np.where(np.eye(len(e), dtype=bool), -np.inf, cos).max(axis=1)
  assert own.min() >= precision.COSINE_FLOOR, (what, own)
  assert (own - nearest_other).min() >= MARGIN, (what, own, nearest_other)


def _mean_of_tokens(sequence_output, mask):
  m = mask.astype(np.float64)[:, :, None]
  return (np.asarray(sequence_output, np.float64) * m).sum(axis=1) / m.sum(axis=1)


# The sharp tiny model, not the plain one: the plain one's pooled vectors of different texts agree to cosine 0.99999,
# so a 0.999 floor on them cannot tell one record from another; the sharp one's agree to 0.87 at most.
@pytest.mark.parametrize("model", ["sharp", "minilm"])
def test_bf16_is_within_cosine_0999_of_fp32_and_leaves_fp32_exact(request, model):
  export_dir = request.getfixturevalue("sharp_model_dir" if model == "sharp" else "minilm_model_dir")
  enc, probe = _loaded(export_dir, 32 if model == "sharp" else 128)
  before = enc(probe)["pooled_output"].numpy()
  runner = precision.resolve(enc, "/CPU:0", "bf16", probe)
  fetch = lambda out: {"sequence_output": out["sequence_output"].numpy(), "pooled": out["pooled_output"].numpy()}
  reduced, used = runner.call(probe, fetch)
  assert used == runner.precision
  if HAS_BF16:
    assert runner.precision == "bf16", runner.report
    assert not np.array_equal(reduced["pooled"], before)  # the rewrite really ran
  else:  # no bf16 call at all here: fp32, and the report says why
    assert runner.precision == "fp32", runner.report
    assert runner.report["candidates"]["bf16"]["skipped"] == BF16_BLOCKER
    np.testing.assert_array_equal(reduced["pooled"], before)
  texts = len(precision.PROBE_TEXTS)  # the probe's first rows are its distinct texts (then repeated)
  mask = probe["input_mask"]
  tokens = enc(probe)["sequence_output"].numpy()
  _assert_each_is_nearest_its_own(reduced["pooled"][:texts], before[:texts], "pooled_output")
  _assert_each_is_nearest_its_own(_mean_of_tokens(reduced["sequence_output"], mask)[:texts],
                                  _mean_of_tokens(tokens, mask)[:texts], "mean of sequence_output")
  for i in range(texts):  # each token against the other tokens of its text
    real = mask[i].astype(bool)
    _assert_each_is_nearest_its_own(reduced["sequence_output"][i][real], tokens[i][real], f"tokens of text {i}")
  np.testing.assert_array_equal(enc(probe)["pooled_output"].numpy(), before)  # nothing global was switched


def test_the_rewrite_scope_is_thread_local():
  """The scope switches the rewrite on in this thread's function-call options only (checked on the options TF
  reads, so on every CPU; whether the rewrite then changes numbers is hardware-dependent)."""
  from tensorflow.core.protobuf import config_pb2  # pylint: disable=import-outside-toplevel
  from tensorflow.python.eager import context  # pylint: disable=import-outside-toplevel

  def rewrite_on() -> bool:
    config = config_pb2.ConfigProto.FromString(context.context().function_call_options.config_proto_serialized)
    return config.graph_options.rewrite_options.auto_mixed_precision_onednn_bfloat16 == 1  # RewriterConfig.ON

  scope = precision.rewrite_scope("auto_mixed_precision_onednn_bfloat16")
  inside, outside = threading.Event(), threading.Event()
  seen = {}

  def reduced_thread():
    with scope():
      seen["inside"] = rewrite_on()
      inside.set()
      outside.wait(30)
    seen["after"] = rewrite_on()

  assert not rewrite_on()
  worker = threading.Thread(target=reduced_thread)
  worker.start()
  assert inside.wait(60)
  seen["other thread"] = rewrite_on()  # while the worker is inside its scope
  outside.set()
  worker.join()
  assert seen == {"inside": True, "other thread": False, "after": False}


@pytest.mark.skipif(not HAS_BF16, reason="needs a CPU on which TF's bf16 rewrite runs (AVX512_BF16 or AMX)")
def test_the_rewrite_is_thread_local_in_numbers(tiny_model_dir):
  enc, probe = _loaded(tiny_model_dir, 32)
  exact = enc(probe)["pooled_output"].numpy()
  scope = precision.rewrite_scope("auto_mixed_precision_onednn_bfloat16")
  inside, outside = threading.Event(), threading.Event()
  seen = {}

  def reduced_thread():
    with scope():
      seen["bf16"] = enc(probe)["pooled_output"].numpy()
      inside.set()
      outside.wait(30)

  worker = threading.Thread(target=reduced_thread)
  worker.start()
  assert inside.wait(60)
  seen["fp32"] = enc(probe)["pooled_output"].numpy()  # while the other thread is inside its scope
  outside.set()
  worker.join()
  np.testing.assert_array_equal(seen["fp32"], exact)
  assert not np.array_equal(seen["bf16"], exact)


def _bf16_runner_with_fake_scope(encoder, state: threading.local) -> precision.PrecisionRunner:
  """A PrecisionRunner set to bf16 whose reduced-precision scope only sets `state.reduced` while it is open."""

  @contextlib.contextmanager
  def fake_scope():
    state.reduced = True
    try:
      yield
    finally:
      state.reduced = False

  runner = precision.PrecisionRunner(encoder, "/CPU:0", "bf16", "fp32", {})
  runner.precision = "bf16"
  runner._scopes["bf16"] = fake_scope  # pylint: disable=protected-access
  return runner


def test_a_non_finite_reduced_result_is_recomputed_in_fp32():
  calls = []
  state = threading.local()

  def encoder(inputs):
    calls.append(getattr(state, "reduced", False))
    value = np.nan if getattr(state, "reduced", False) else 1.0
    return {"pooled_output": tf.fill([2, 3], value)}

  runner = _bf16_runner_with_fake_scope(encoder, state)
  out, used = runner.call({"input_word_ids": np.zeros((2, 3), np.int32)},
                          lambda o: {"pooled_output": o["pooled_output"].numpy()})
  assert used == "fp32" and calls == [True, False]
  assert np.all(out["pooled_output"] == 1.0)


def test_a_reduced_precision_fallback_is_logged_once_per_worker_without_a_traceback(caplog):
  state = threading.local()

  def encoder(inputs):
    if getattr(state, "reduced", False):
      raise tf.errors.InvalidArgumentError(None, None, "no bf16 kernel for Erfc\n  [[{{node model/gelu}}]]")
    return {"pooled_output": tf.ones([2, 3])}

  runner = _bf16_runner_with_fake_scope(encoder, state)
  with caplog.at_level("DEBUG", logger=precision.__name__):
    for _ in range(5):  # every batch falls back
      _, used = runner.call({"input_word_ids": np.zeros((2, 3), np.int32)},
                            lambda o: {"pooled_output": o["pooled_output"].numpy()})
      assert used == "fp32"
  warnings = [r for r in caplog.records if r.levelname == "WARNING"]
  assert len(warnings) == 1 and warnings[0].exc_info is None
  assert "InvalidArgumentError: no bf16 kernel for Erfc" in warnings[0].getMessage()
  assert runner.fallbacks == 5


def test_explicit_bf16_without_a_rewrite_reports_fp32(tiny_model_dir):
  enc, probe = _loaded(tiny_model_dir, 32)
  runner = precision.resolve(enc, "/GPU:0", "bf16", probe)  # no GPU here: TF places it on the CPU
  assert runner.precision == "fp32"
  assert "no bf16 rewrite" in runner.report["candidates"]["bf16"]["skipped"]


def test_auto_on_a_cpu_without_bf16_is_fp32(tiny_model_dir):
  enc, probe = _loaded(tiny_model_dir, 32)
  runner = precision.resolve(enc, "/CPU:0", "auto", probe, flags={"avx2"})
  assert runner.precision == "fp32" and runner.report["candidates"] == {}


def test_auto_picks_bf16_only_when_it_is_faster(tiny_model_dir, monkeypatch):
  """The decision alone, on every CPU: the bf16 variant's output is the fp32 one nudged (as the rewrite would
  change it), its timing is given, and flags say the CPU has bf16."""
  _no_isa_cap(monkeypatch)
  enc, probe = _loaded(tiny_model_dir, 32)
  real_run = precision.PrecisionRunner._run  # pylint: disable=protected-access

  def nudged_run(self, name, inputs, fetch):
    out = real_run(self, "fp32", inputs, fetch)
    return {k: v * np.float32(1.001) for k, v in out.items()} if name == "bf16" else out

  monkeypatch.setattr(precision.PrecisionRunner, "_run", nudged_run)
  timings = iter([1.0, 0.5])  # fp32, then bf16
  monkeypatch.setattr(precision, "_time", lambda fn, repeats: next(timings))
  assert precision.resolve(enc, "/CPU:0", "auto", probe, flags={"avx512_bf16"}).precision == "bf16"
  timings = iter([1.0, 0.95])  # not AUTO_MIN_SPEEDUP faster
  monkeypatch.setattr(precision, "_time", lambda fn, repeats: next(timings))
  runner = precision.resolve(enc, "/CPU:0", "auto", probe, flags={"avx512_bf16"})
  assert runner.precision == "fp32" and runner.report["candidates"]["bf16"]["speedup"] < precision.AUTO_MIN_SPEEDUP
  runner = precision.resolve(enc, "/CPU:0", "auto", probe, flags={"avx2"})  # no candidate at all
  assert runner.precision == "fp32" and runner.report["candidates"] == {}


def _pipeline_vectors(tmp_path, export_dir, name, extra):
  import pyarrow as pa  # pylint: disable=import-outside-toplevel
  import pyarrow.parquet as pq  # pylint: disable=import-outside-toplevel
  # The corpus holds bad records on purpose: the dead-letter check is off.
  out = run(["--model", export_dir, "--input", str(tmp_path / "in.jsonl"), "--input-format", "jsonl",
             "--output", str(tmp_path / name / "emb"), "--max-dead-letter-fraction", "1", *extra])
  rows = pa.concat_tables([pq.read_table(f) for f in out.manifest["output_files"]]).to_pylist()
  return {r["id"]: np.asarray(r["embedding"], np.float32) for r in rows}, out.manifest


@pytest.mark.parametrize("model", ["tiny", "minilm"])
def test_the_pipeline_in_bf16_writes_each_id_its_own_vector_within_cosine_0999(request, tmp_path, model):
  import json  # pylint: disable=import-outside-toplevel
  export_dir = request.getfixturevalue("tiny_model_dir" if model == "tiny" else "minilm_model_dir")
  seq = "32" if model == "tiny" else "128"
  lines = [{"id": f"s{i}", "text": t} for i, t in enumerate(SENTENCES)]
  lines += [{"id": "blank", "text": "   "}, {"id": "no-text"}]  # dead letters in both precisions
  (tmp_path / "in.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
  # Mean pooling: the tiny model's pooled vectors of different texts agree to cosine 0.99999, its means to 0.97.
  fp32, m32 = _pipeline_vectors(tmp_path, export_dir, "fp32", ["--seq-length", seq, "--pooling", "mean"])
  bf16, m16 = _pipeline_vectors(tmp_path, export_dir, "bf16",
                                ["--seq-length", seq, "--pooling", "mean", "--precision", "bf16"])
  assert sorted(fp32) == sorted(bf16) == sorted(f"s{i}" for i in range(len(SENTENCES)))
  assert m32["counts"]["dead_lettered"] == m16["counts"]["dead_lettered"] == 2
  assert m32["precision_used"] == {"fp32": len(SENTENCES)}
  assert m16["precision_used"] == {("bf16" if HAS_BF16 else "fp32"): len(SENTENCES)}
  assert m16["options"]["precision"] == "bf16"
  ids = sorted(fp32)
  _assert_each_is_nearest_its_own([bf16[i] for i in ids], [fp32[i] for i in ids], "pipeline vectors")


def test_the_pipeline_with_auto_on_a_cpu_without_bf16_encodes_in_fp32(tiny_model_dir, tmp_path, monkeypatch):
  import json  # pylint: disable=import-outside-toplevel
  monkeypatch.setattr(precision, "cpu_flags", lambda: {"avx2", "fma"})  # in-process DirectRunner: seen by workers
  lines = [{"id": f"s{i}", "text": t} for i, t in enumerate(SENTENCES)]
  (tmp_path / "in.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
  fp32, _ = _pipeline_vectors(tmp_path, tiny_model_dir, "fp32", ["--seq-length", "32"])
  auto, manifest = _pipeline_vectors(tmp_path, tiny_model_dir, "auto", ["--seq-length", "32", "--precision", "auto"])
  assert manifest["precision_used"] == {"fp32": len(SENTENCES)}
  assert sorted(auto) == sorted(fp32)
  for key, vector in fp32.items():
    np.testing.assert_array_equal(auto[key], vector)
