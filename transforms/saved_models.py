"""Loading TF Hub-form BERT SavedModels on workers: plain `tf.saved_model.load`, TF Text ops registered first.

Each SavedModel is loaded once per process: on the DirectRunner the launcher (which inspects the models before the
job) and the workers run in one process, and a load of the default MiniLM costs seconds (issue 15). Loaded objects
are kept in a small process-level cache keyed by path and device; callers get a fresh `LoadedModel` wrapper each
time, so per-use state (e.g. a precision runner) is never shared between pipelines.

SavedModels are programs: only load models you trust.
"""
from __future__ import annotations

import collections
import hashlib
import logging
import os
import tempfile
import threading

_LOG = logging.getLogger(__name__)
_LOCALIZE_LOCK = threading.Lock()
# Loaded SavedModels of this process, most recently used last; a few at most (a BERT-base encoder is ~0.5 GB).
CACHE_SIZE = 4
_CACHE: "collections.OrderedDict[tuple, object]" = collections.OrderedDict()
_CACHE_LOCK = threading.Lock()
_LOAD_LOCKS: dict = {}


def is_local(path: str) -> bool:
  return "://" not in path or path.startswith("file://")


def localize(path: str) -> str:
  """Returns a local directory holding the SavedModel at `path` (copied once per process via Beam's FileSystems)."""
  if is_local(path):
    return path[len("file://"):] if path.startswith("file://") else path
  from apache_beam.io.filesystems import FileSystems  # pylint: disable=import-outside-toplevel
  key = hashlib.sha256(path.encode()).hexdigest()[:16]
  dest = os.path.join(tempfile.gettempdir(), "bert-embed-models", key)
  with _LOCALIZE_LOCK:
    if os.path.exists(os.path.join(dest, "saved_model.pb")):
      return dest
    staging = dest + ".partial-%d" % os.getpid()
    root = path.rstrip("/") + "/"
    for match in FileSystems.match([root + "**"])[0].metadata_list:
      rel = match.path[len(root):]
      local = os.path.join(staging, rel)
      os.makedirs(os.path.dirname(local), exist_ok=True)
      with FileSystems.open(match.path) as src, open(local, "wb") as dst:
        while chunk := src.read(1 << 24):
          dst.write(chunk)
    os.replace(staging, dest)
  return dest


def configure_devices() -> list:
  """Turns on memory growth for every visible GPU (before any op runs) and returns them."""
  from transforms import quiet  # pylint: disable=import-outside-toplevel
  tf = quiet.import_tensorflow()
  gpus = tf.config.list_physical_devices("GPU")
  for gpu in gpus:
    try:
      tf.config.experimental.set_memory_growth(gpu, True)
    except RuntimeError:  # already initialised in this process; the setting only applies before first use
      pass
  return gpus


def load_saved_model(path: str):
  """`tf.saved_model.load` with TF Text's ops registered, so TF Hub preprocessors load."""
  from transforms import quiet  # pylint: disable=import-outside-toplevel
  tf = quiet.import_tensorflow()
  return tf.saved_model.load(localize(path))


def _file_stamp(path: str) -> tuple:
  """Changes when the SavedModel's graph file is rewritten (a re-export under the same path loads anew)."""
  try:
    st = os.stat(os.path.join(path, "saved_model.pb"))
    return (st.st_size, st.st_mtime_ns)
  except OSError:
    return ()


def cached_load(path: str, device: str):
  """The SavedModel at `path` placed on `device`, loaded once per process (see the module docstring)."""
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  local = localize(path)
  key = (os.path.abspath(local) if is_local(path) else path, device, _file_stamp(local))
  with _CACHE_LOCK:
    lock = _LOAD_LOCKS.setdefault(key, threading.Lock())
  with lock:  # threads asking for the same model wait for one load
    with _CACHE_LOCK:
      if key in _CACHE:
        _CACHE.move_to_end(key)
        return _CACHE[key]
    with tf.device(device):
      obj = load_saved_model(path)
    with _CACHE_LOCK:
      _CACHE[key] = obj
      while len(_CACHE) > CACHE_SIZE:
        _CACHE.popitem(last=False)
      _LOAD_LOCKS.pop(key, None)
    return obj


def clear_cache() -> None:
  with _CACHE_LOCK:
    _CACHE.clear()


class LoadedModel:
  """Holds a loaded SavedModel; weak-referenceable, so that `apache_beam.utils.shared` can share it."""

  def __init__(self, path: str, obj, device: str | None = None):
    self.path = path
    self.obj = obj
    self.device = device


def load_encoder(path: str) -> LoadedModel:
  """Loads an encoder SavedModel, placed on the first GPU when the worker has one."""
  gpus = configure_devices()
  device = "/GPU:0" if gpus else "/CPU:0"
  obj = cached_load(path, device)
  _LOG.info("encoder %s on %s", path, device)
  return LoadedModel(path, obj, device)


def load_preprocessor(path: str) -> LoadedModel:
  """Loads a preprocessor SavedModel; it always runs on the CPU (string ops)."""
  configure_devices()
  return LoadedModel(path, cached_load(path, "/CPU:0"), "/CPU:0")
