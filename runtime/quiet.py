"""Keeping TensorFlow's and Beam's start-up noise off the `bert-embed` command's stderr.

Without this, a run prints, before its own output: two `absl::InitializeLog` notices, two `Could not find cuda
drivers` lines on a machine without GPU and, where oneDNN's custom operations are on (by default on CPUs with
AVX-512, or with TF_ENABLE_ONEDNN_OPTS=1), two `oneDNN custom operations are on` lines (C++ code writing to fd 2
while `import tensorflow` loads its two libraries, before absl logging is initialised: no environment variable
turns them off short of changing what TF computes); one `failed call to cuInit` error (when TF first lists its
devices) and, per model load, Beam's `Resource module is not available` warning (Beam's RunInference nulls
`resource` when its optional torch-based model manager does not import).

Quieting changes the process (its root logger, its fd 2 while TF loads), so only the command does it:
`enable()` is called by `cli.main` unless --verbose, and sets BERT_EMBED_QUIET, which the local worker
processes it starts inherit. Library use (pipeline.api, EmbedTexts in a user's pipeline) changes nothing: without
BERT_EMBED_QUIET, `import_tensorflow()` is a plain import.

In a quiet process, `import_tensorflow()` runs the first TensorFlow import and device listing with fd 2 captured
into a temporary file, then writes back every captured line except the known noise; the CUDA lines are dropped
only when the machine has no NVIDIA device (on a GPU machine a failing cuInit matters). Messages that matter (TF
warnings and errors at TF_CPP_MIN_LOG_LEVEL, Python warnings, tracebacks of a failed import) are kept.
"""
from __future__ import annotations

import logging
import os
import re
import shutil
import sys
import tempfile
import threading

from runtime import tf_import

ENV = "BERT_EMBED_QUIET"
_ABSL_NOTICE = "All log messages before absl::InitializeLog() is called are written to STDERR"
_CUDA_NOISE = (re.compile(r"cudart_stub\.cc.*Could not find cuda drivers"),
               re.compile(r"cuda_platform\.cc.*failed call to cuInit"),
               re.compile(r"cuda_executor\.cc.*could not open file to read NUMA node"))
_ONEDNN_NOTICE = re.compile(r"\.cc:\d+\] oneDNN custom operations are on")
_CPU_GUARD = re.compile(r"cpu_feature_guard\.cc.*This TensorFlow binary is optimized")
_CPU_GUARD_NEXT = "To enable the following instructions:"
BEAM_RESOURCE_WARNING = "Resource module is not available for current platform"

_IMPORT_LOCK = threading.Lock()
_imported = False


def has_nvidia_device() -> bool:
  """True when the machine may have an NVIDIA GPU (device node or driver tool present)."""
  return os.path.exists("/dev/nvidia0") or os.path.exists("/dev/nvidiactl") or shutil.which("nvidia-smi") is not None


def is_enabled() -> bool:
  return os.environ.get(ENV) == "1"


# Relayed from the DirectRunner's worker processes (multi_processing): the workers parse the job's options without
# this project's option classes, and run without a staging directory; neither is anything to act on.
_WORKER_NOISE = ("No semi_persistent_directory found", "Discarding unparseable args")


class _DropBeamResourceWarning(logging.Filter):
  """Drops Beam's per-load `Resource module is not available` warning and local workers' start-up notices."""

  def filter(self, record: logging.LogRecord) -> bool:
    try:
      message = record.getMessage()
    except Exception:  # pylint: disable=broad-except  (a malformed record is someone else's problem)
      return True
    if BEAM_RESOURCE_WARNING in message:
      return False
    return not (message.startswith("Worker: ") and any(noise in message for noise in _WORKER_NOISE))


_FILTER = _DropBeamResourceWarning()


def install_log_filter() -> None:
  """Puts the filter on the root logger (records logged on it directly) and on its handlers (propagated ones)."""
  root = logging.getLogger()
  if _FILTER not in root.filters:
    root.addFilter(_FILTER)
  for handler in root.handlers:
    if _FILTER not in handler.filters:
      handler.addFilter(_FILTER)


def remove_log_filter() -> None:
  root = logging.getLogger()
  root.removeFilter(_FILTER)
  for handler in root.handlers:
    handler.removeFilter(_FILTER)


def enable(quiet: bool = True) -> None:
  """Quiet (True) or verbose (False) for this process and the local workers it starts; for the command only."""
  if quiet:
    os.environ[ENV] = "1"
    install_log_filter()
  else:
    os.environ.pop(ENV, None)
    remove_log_filter()


def filter_noise(lines: list[str], drop_cuda: bool) -> list[str]:
  """The captured stderr lines to show again."""
  out, skip_next = [], False
  for line in lines:
    if skip_next and line.startswith(_CPU_GUARD_NEXT):
      skip_next = False
      continue
    skip_next = False
    if _ABSL_NOTICE in line:
      continue
    if drop_cuda and any(p.search(line) for p in _CUDA_NOISE):
      continue
    if _ONEDNN_NOTICE.search(line):
      continue
    if _CPU_GUARD.search(line):
      skip_next = True
      continue
    out.append(line)
  return out


def import_tensorflow():
  """`import tensorflow` (with tensorflow_text and the device list), its fd-level stderr filtered when quiet."""
  global _imported  # pylint: disable=global-statement
  if _imported or not is_enabled():
    tf = tf_import.import_tensorflow()  # with TF Text's ops, for preprocessors
    if is_enabled():
      install_log_filter()
    return tf
  with _IMPORT_LOCK:
    if not _imported:
      _import_captured()
      _imported = True
  install_log_filter()
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  return tf


def _import_captured() -> None:
  try:
    sys.stderr.flush()
  except Exception:  # pylint: disable=broad-except
    pass
  saved = os.dup(2)
  with tempfile.TemporaryFile(mode="w+b") as capture:
    os.dup2(capture.fileno(), 2)
    try:
      tf = tf_import.import_tensorflow()
      tf.config.list_physical_devices()  # the CUDA platform's cuInit happens here
    finally:
      os.dup2(saved, 2)
      os.close(saved)
      capture.seek(0)
      text = capture.read().decode("utf-8", "replace")
      kept = filter_noise(text.splitlines(), drop_cuda=not has_nvidia_device())
      if kept:
        sys.stderr.write("\n".join(kept) + "\n")
        sys.stderr.flush()
