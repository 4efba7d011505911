"""Reduced-precision encoding of an unchanged fp32 encoder SavedModel (any TF Hub BERT, not only our exports).

How: the SavedModel's function is called under a thread-local grappler configuration that turns on TF's
auto-mixed-precision graph rewrite. TF instantiates a function once per (function, configuration), so the fp32
and the reduced-precision variants of one loaded model live side by side in one process, and nothing global is
switched: other threads and other models keep running in fp32.

  bf16 on CPU  `auto_mixed_precision_onednn_bfloat16` (oneDNN; AMX or AVX512_BF16 kernels)
  fp16 on GPU  `auto_mixed_precision` (CUDA tensor cores)

The matrix products (MatMul / BatchMatMul / Einsum / convolutions) run in reduced precision, and so do the ops
that TF's remapper folds into them afterwards as oneDNN post-ops: the bias add and the GELU that this project's
exports spell in the fusable form (`modeling/activations.py`). The other element-wise ops (LayerNorm's moments,
softmax, Erfc, Exp, divisions) are kept in fp32 through the rewrite's op lists. Measured on an AVX512_BF16 CPU,
TF's stand-alone bf16 element-wise kernels are slower than their fp32 ones (bf16 Erfc ~9x), and keeping them in
fp32 also keeps the vectors closer to fp32 (cosine ~0.99998 instead of ~0.9999 on BERT-base); AddV2/Mul/Erf
only turn bf16 where they sit between two reduced-precision products, which in a BERT graph is the activation.
The lists are TF's documented environment variables, which its rewrite reads each time it optimizes a function;
TF has no per-session or per-call form of them. So they are set only while a reduced-precision call runs (the
call that instantiates and optimizes the function under the rewrite), and the environment is restored after it;
a variable the user has set is left as it is. While such a call runs, the variables are visible to the whole
process (another thread optimizing its own graph with TF's mixed-precision rewrite at that moment would see them).

Which precisions exist on a worker: bf16 where oneDNN has native bf16 kernels under its ISA cap, fp16 on a GPU
TF sees (runtime/precision_support.py decides before the first reduced-precision call: oneDNN aborts the process
where it cannot build a kernel). bf16 on a GPU has no TF graph rewrite (TF's CUDA rewrite only makes fp16), so a
bf16 request on a GPU worker runs fp32 and says so. Every reduced variant is checked at load on probe texts: if its
output is bit-identical to fp32, the rewrite did not apply on this worker, and the worker reports fp32. `auto`
picks the fastest variant whose probe vectors are within cosine 0.999 of fp32 (and at least 10% faster; else fp32).

Reduced precision never changes which records succeed: a batch whose reduced-precision output is not finite is
encoded again in fp32 (see `PrecisionRunner.call`).
"""
from __future__ import annotations

import contextlib
import copy
import logging
import os
import threading
import time
from typing import Callable, Iterator, Optional, Sequence

import numpy as np

from runtime import precision_support
from runtime.precision_support import rewrite_name  # noqa: F401  (part of this module's interface)
from runtime.similarity import cosine

_LOG = logging.getLogger(__name__)

PRECISIONS = ("fp32", "bf16", "fp16", "auto")
REDUCED = ("bf16", "fp16")
COSINE_FLOOR = 0.999
AUTO_MIN_SPEEDUP = 1.1

# Element-wise ops kept in fp32 by the rewrite (removed from TF's infer/clear lists, added to its deny list).
# BiasAdd, AddV2, Mul and Erf are absent on purpose: the fused bias add and GELU need them in the product's
# precision (benchmarks/RESULTS.md).
FP32_OPS = ("Add", "AddN", "Erfc", "Exp", "Gelu", "Log", "Mean", "Neg", "Pow", "RealDiv", "Rsqrt", "Softmax",
            "Sqrt", "Square", "SquaredDifference", "Sub", "Sum", "Tanh")
_LIST_ENV = "TF_AUTO_MIXED_PRECISION_GRAPH_REWRITE_"

PROBE_TEXTS = (
    "The quick brown fox jumps over the lazy dog.",
    "Fix a crash when the configuration file is empty.",
    "Return the number of items in the container.",
    "Updated translations for German, French and Japanese.",
    "This release drops support for Python 2 and adds type hints throughout the public API.",
    "Hello world!",
    "If the socket is closed before the handshake completes, the client now retries with exponential backoff "
    "instead of failing immediately.",
    "New upstream version.",
)


def cpu_flags() -> set[str]:
  return precision_support.cpu_flags()


def cpu_has_bf16(flags: Optional[set[str]] = None) -> bool:
  return precision_support.cpu_has_bf16(cpu_flags() if flags is None else flags)


def blocker(precision: str, device: str, flags: Optional[set[str]] = None) -> Optional[str]:
  """Why `precision` must not be called on `device` of this worker (runtime/precision_support.py), or None."""
  gpus = 0
  if precision == "fp16" and "GPU" in device.upper():
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    gpus = len(tf.config.list_physical_devices("GPU"))
  return precision_support.blocker(precision, device, cpu_flags() if flags is None else flags, gpu_count=gpus)


def available(device: str, flags: Optional[set[str]] = None) -> tuple[str, ...]:
  """Reduced precisions this worker can run fast on `device` ('/CPU:0' or '/GPU:0'), fastest-first guess."""
  if "GPU" in device.upper():
    return ("fp16",)
  return () if blocker("bf16", device, flags) else ("bf16",)


def needs_probe(requested: str, device: str, flags: Optional[set[str]] = None) -> bool:
  """Whether resolving `requested` on `device` encodes probe texts (only when it may call a reduced precision)."""
  if requested == "auto":
    return bool(available(device, flags))
  return requested != "fp32" and blocker(requested, device, flags) is None


_LIST_NAMES = tuple(_LIST_ENV + suffix for suffix in ("DENYLIST_ADD", "INFERLIST_REMOVE", "CLEARLIST_REMOVE"))
_ENV_LOCK = threading.Lock()
_env_users = 0  # reduced-precision calls running now that set the variables


@contextlib.contextmanager
def elementwise_ops_in_fp32() -> Iterator[None]:
  """While inside, TF's rewrite op lists keep FP32_OPS in fp32, unless the user has set any of the variables.

  Nested and concurrent scopes share one setting; the last to leave restores the environment.
  """
  global _env_users  # pylint: disable=global-statement
  with _ENV_LOCK:
    if _env_users == 0 and any(name in os.environ for name in _LIST_NAMES):
      owned = False  # the user's own lists
    else:
      owned = True
      if _env_users == 0:
        ops = ",".join(FP32_OPS)
        for name in _LIST_NAMES:
          os.environ[name] = ops
      _env_users += 1
  try:
    yield
  finally:
    if owned:
      with _ENV_LOCK:
        _env_users -= 1
        if _env_users == 0:
          for name in _LIST_NAMES:
            os.environ.pop(name, None)


@contextlib.contextmanager
def _no_rewrite():
  yield


def rewrite_scope(rewrite: Optional[str]) -> Callable[[], contextlib.AbstractContextManager]:
  """A factory of context managers under which this thread's tf.function calls use the `rewrite` optimizer."""
  if rewrite is None:
    return _no_rewrite
  from tensorflow.core.protobuf import rewriter_config_pb2  # pylint: disable=import-outside-toplevel
  # TF's eager context is not public API, but it is the only per-thread setting of graph rewrites:
  # tf.config.optimizer.set_experimental_options changes them for the whole process.
  from tensorflow.python.eager import context  # pylint: disable=import-outside-toplevel
  config = context.context().config
  setattr(config.graph_options.rewrite_options, rewrite, rewriter_config_pb2.RewriterConfig.ON)

  @contextlib.contextmanager
  def scope():
    ctx = context.context()
    previous = ctx.function_call_options
    options = copy.copy(previous)
    options.config_proto_serialized = config  # TF's setter serializes it deterministically
    ctx.function_call_options = options  # thread-local
    try:
      with elementwise_ops_in_fp32():
        yield
    finally:
      ctx.function_call_options = previous

  return scope


class PrecisionRunner:
  """Calls one loaded encoder in the precision resolved for this worker; one per model, shared by threads.

  `call(inputs)` returns the encoder's outputs as numpy arrays and the precision that produced them. Calls are
  serialized: each one already uses every core (TF's intra-op pool), and concurrent calls would only multiply
  the activation memory.
  """

  def __init__(self, encoder, device: str, requested: str, precision: str, report: dict):
    self._encoder = encoder
    self._device = device
    self.requested = requested
    self.precision = precision
    self.report = report
    self._scopes = {"fp32": _no_rewrite}
    if precision != "fp32":
      self._scopes[precision] = rewrite_scope(rewrite_name(precision, device))
    self._lock = threading.Lock()
    self.fallbacks = 0  # batches encoded again in fp32 (see call)

  def _run(self, precision: str, inputs: dict, fetch: Callable) -> dict:
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    with self._lock, tf.device(self._device), self._scopes[precision]():
      outputs = self._encoder({k: tf.constant(v) for k, v in inputs.items()})
      return fetch(outputs)

  def call(self, inputs: dict, fetch: Callable, check: Optional[Callable] = None) -> tuple[dict, str]:
    """Runs `fetch(encoder(inputs))` (which must return numpy arrays) in the resolved precision.

    A reduced-precision result for which `check(result)` is False (default: any non-finite array) is computed
    again in fp32, so reduced precision never turns a record that fp32 encodes into a failure.
    """
    if self.precision == "fp32":
      return self._run("fp32", inputs, fetch), "fp32"
    check = check or _all_finite
    try:
      result = self._run(self.precision, inputs, fetch)
      if check(result):
        return result, self.precision
      reason = "its output was not finite"
    except Exception as error:  # pylint: disable=broad-except  (fp32 decides whether the batch really fails)
      message = str(error).strip().splitlines()
      reason = f"it failed ({type(error).__name__}: {message[0] if message else ''})"
    self._fell_back(reason)
    return self._run("fp32", inputs, fetch), "fp32"

  def _fell_back(self, reason: str) -> None:
    """Counts a batch encoded again in fp32; the first one per runner (i.e. per worker) is logged as a warning,
    the later ones at debug level only, so that a model that always falls back does not log every batch."""
    with self._lock:
      self.fallbacks += 1
      first = self.fallbacks == 1
    if first:
      _LOG.warning("a %s encoder batch was encoded again in fp32 because %s (logged for the first such batch of "
                   "this worker only)", self.precision, reason)
    else:
      _LOG.debug("a %s encoder batch was encoded again in fp32 because %s", self.precision, reason)


def _all_finite(result) -> bool:
  arrays = result.values() if isinstance(result, dict) else result
  return all(np.all(np.isfinite(a)) for a in arrays if isinstance(a, np.ndarray))


def _time(fn: Callable[[], object], repeats: int) -> float:
  best = float("inf")
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    best = min(best, time.perf_counter() - start)
  return best


def resolve(encoder, device: str, requested: str, probe_inputs: Optional[dict], *, flags: Optional[set[str]] = None,
            repeats: int = 3, candidates: Optional[Sequence[str]] = None) -> PrecisionRunner:
  """Resolves `requested` (fp32 | bf16 | fp16 | auto) for this worker by encoding `probe_inputs` each way.

  Explicit bf16 / fp16: used when the rewrite exists here and changes the output; otherwise fp32 (logged).
  A variant outside cosine 0.999 of fp32 is still used when asked for explicitly (with a warning), never by auto.
  auto: the fastest variant within cosine 0.999, if it beats fp32 by AUTO_MIN_SPEEDUP; otherwise fp32.
  The returned runner's `report` says what was measured.
  """
  if requested not in PRECISIONS:
    raise ValueError(f"unknown precision {requested!r}; expected one of {PRECISIONS}")
  report = {"requested": requested, "device": device, "candidates": {}}
  if requested == "fp32":
    report["resolved"] = "fp32"
    return PrecisionRunner(encoder, device, requested, "fp32", report)
  if candidates is None:
    candidates = available(device, flags) if requested == "auto" else (requested,)
  for precision in candidates:  # before any reduced-precision call: oneDNN aborts the process where it cannot run
    why = blocker(precision, device, flags)
    if why:
      report["candidates"][precision] = {"skipped": why}
  candidates = [precision for precision in candidates if precision not in report["candidates"]]
  if not candidates:  # nothing to try here (e.g. an AVX2-only CPU): no probe to pay for
    if requested == "auto":
      why = "" if "GPU" in device.upper() else f" (bf16: {blocker('bf16', device, flags)})"
      report["skipped"] = f"no faster precision on {device} of this worker{why}"
    return _resolved(encoder, device, requested, "fp32", report)
  fetch = _pooled
  base = PrecisionRunner(encoder, device, "fp32", "fp32", {})
  reference = base.call(probe_inputs, fetch)[0]["pooled_output"]
  timings = {"fp32": None}
  chosen = "fp32"
  for precision in candidates:
    entry = report["candidates"].setdefault(precision, {})
    runner = PrecisionRunner(encoder, device, precision, precision, {})
    try:
      out = runner._run(precision, probe_inputs, fetch)["pooled_output"]  # pylint: disable=protected-access
    except Exception as e:  # pylint: disable=broad-except
      entry["skipped"] = f"failed: {type(e).__name__}: {e}"
      continue
    if np.array_equal(out, reference):
      entry["skipped"] = "the rewrite did not change the graph on this worker"
      continue
    if not np.all(np.isfinite(out)):
      entry["skipped"] = "non-finite output on probe texts"
      continue
    entry["min_cosine"] = float(cosine(out, reference).min())
    if requested != "auto":
      if entry["min_cosine"] < COSINE_FLOOR:
        _LOG.warning("%s vectors are only within cosine %.5f of fp32 on probe texts", precision, entry["min_cosine"])
      chosen = precision
      break
    if entry["min_cosine"] < COSINE_FLOOR:
      entry["skipped"] = f"cosine {entry['min_cosine']:.5f} < {COSINE_FLOOR}"
      continue
    if timings["fp32"] is None:
      timings["fp32"] = _time(lambda: base.call(probe_inputs, fetch), repeats)
    run_reduced = runner._run  # pylint: disable=protected-access
    timings[precision] = _time(lambda r=run_reduced, p=precision: r(p, probe_inputs, fetch), repeats)
    entry["speedup"] = round(timings["fp32"] / timings[precision], 3)
    best = timings[chosen] if chosen != "fp32" else timings["fp32"] / AUTO_MIN_SPEEDUP
    if timings[precision] < best:
      chosen = precision
  return _resolved(encoder, device, requested, chosen, report)


def _resolved(encoder, device: str, requested: str, chosen: str, report: dict) -> PrecisionRunner:
  report["resolved"] = chosen
  if requested != "auto" and chosen != requested:  # one line: the promised fallback, and why
    _LOG.warning("--precision %s is not available on this worker (%s): encoding in fp32", requested,
                 report["candidates"].get(requested, {}).get("skipped"))
  _LOG.info("encoder precision: %s", report)
  return PrecisionRunner(encoder, device, requested, chosen, report)


def _pooled(outputs) -> dict:
  return {"pooled_output": outputs["pooled_output"].numpy()}


def probe_inputs(preprocessor, seq_length: int, rows: int = 32, texts: Sequence[str] = PROBE_TEXTS) -> dict:
  """Packed int32 inputs of the probe texts (repeated to `rows`), trimmed to their longest record."""
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  chosen = [texts[i % len(texts)] for i in range(rows)]
  with tf.device("/CPU:0"):
    packed = preprocessor.bert_pack_inputs([preprocessor.tokenize(tf.constant(chosen))],
                                           seq_length=tf.constant(seq_length, tf.int32))
  arrays = {k: v.numpy().astype(np.int32) for k, v in packed.items()}
  longest = int(arrays["input_mask"].sum(axis=1).max())
  return {k: v[:, :longest] for k, v in arrays.items()}
