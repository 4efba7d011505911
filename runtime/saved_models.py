"""Loading TF Hub-form BERT SavedModels on workers: plain `tf.saved_model.load`, TF Text ops registered first.

Each SavedModel is loaded once per process: on the DirectRunner the launcher (which inspects the models before the
job) and the workers run in one process, and a load of the default MiniLM costs seconds. Loaded objects are kept in
a small process-level cache keyed by path and device until `clear_cache()` (`pipeline.api.release_models()` for
library users); callers get a fresh `LoadedModel` wrapper each time, so per-use state (e.g. a precision runner) is
never shared between pipelines.

SavedModels are programs: only load models you trust.
"""
from __future__ import annotations

import collections
import hashlib
import json
import logging
import os
import shutil
import tempfile
import threading

from formats.paths import is_local_path

_LOG = logging.getLogger(__name__)
_LOCALIZE_LOCK = threading.Lock()
# Loaded SavedModels of this process, most recently used last; a few at most (a BERT-base encoder is ~0.5 GB).
CACHE_SIZE = 4
_CACHE: "collections.OrderedDict[tuple, object]" = collections.OrderedDict()
_CACHE_LOCK = threading.Lock()
_LOAD_LOCKS: dict = {}


def asset_files(saved_model_dir: str) -> list[tuple[str, str]]:
  """(name, path) of the files directly in a SavedModel's assets/ directory, by name, on any Beam filesystem."""
  from apache_beam.io.filesystems import FileSystems  # pylint: disable=import-outside-toplevel
  assets = FileSystems.join(saved_model_dir.rstrip("/") or saved_model_dir, "assets")
  try:
    found = FileSystems.match([FileSystems.join(assets, "*")])[0].metadata_list
  except Exception:  # pylint: disable=broad-except  (no assets directory)
    return []
  files = []
  for m in found:
    name = m.path[len(assets):].lstrip("/" + os.sep)
    if name and "/" not in name and os.sep not in name and not (is_local_path(m.path) and os.path.isdir(m.path)):
      files.append((name, m.path))
  return sorted(files)


def _remote_listing(root: str) -> list:
  """(path, size) of every file under the remote directory `root` (ending in '/'), sorted."""
  from apache_beam.io.filesystems import FileSystems  # pylint: disable=import-outside-toplevel
  found = FileSystems.match([root + "**"])[0].metadata_list
  return sorted((m.path, m.size_in_bytes) for m in found if not m.path.endswith("/"))


def _copy_tree(root: str, listing: list, directory: str) -> None:
  from apache_beam.io.filesystem import CompressionTypes  # pylint: disable=import-outside-toplevel
  from apache_beam.io.filesystems import FileSystems  # pylint: disable=import-outside-toplevel
  for path, _ in listing:
    local = os.path.join(directory, *path[len(root):].split("/"))
    os.makedirs(os.path.dirname(local), exist_ok=True)
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as src, open(local, "wb") as dst:
      shutil.copyfileobj(src, dst, 1 << 24)


def localize(path: str) -> str:
  """Returns a local directory holding the SavedModel at `path` (copied once per machine via Beam's FileSystems).

  Safe across processes (Dataflow runs one SDK process per vCPU, the multi-process DirectRunner several): each
  copies into its own staging directory and renames it into place; a process that loses the rename to another
  uses the winner's copy (both copied the same files). The local copy is keyed by the remote path and its files'
  names and sizes, so a model rewritten in place is fetched anew.
  """
  if is_local_path(path):
    return path[len("file://"):] if path.startswith("file://") else path
  root = path.rstrip("/") + "/"
  listing = _remote_listing(root)
  if not any(p == root + "saved_model.pb" for p, _ in listing):
    raise FileNotFoundError(f"{path} has no saved_model.pb")
  key = hashlib.sha256(json.dumps([root, listing]).encode()).hexdigest()[:16]
  parent = os.path.join(tempfile.gettempdir(), "bert-embed-models")
  dest = os.path.join(parent, key)
  if os.path.exists(os.path.join(dest, "saved_model.pb")):
    return dest
  with _LOCALIZE_LOCK:  # the threads of one process copy once
    if os.path.exists(os.path.join(dest, "saved_model.pb")):
      return dest
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=f"{key}.partial-{os.getpid()}-", dir=parent)
    try:
      _copy_tree(root, listing, staging)
      try:
        os.rename(staging, dest)  # atomic; refused when another process's copy is already in place
      except OSError:
        if not os.path.exists(os.path.join(dest, "saved_model.pb")):
          raise
        _LOG.debug("another process localized %s first", path)
    finally:
      shutil.rmtree(staging, ignore_errors=True)
  return dest


def configure_devices() -> list:
  """Turns on memory growth for every visible GPU (before any op runs) and returns them."""
  from runtime import quiet  # pylint: disable=import-outside-toplevel
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
  from runtime import quiet  # pylint: disable=import-outside-toplevel
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
  key = (os.path.abspath(local) if is_local_path(path) else path, device, _file_stamp(local))
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
  """Drops this process's loaded SavedModels (their memory is freed once no pipeline or caller holds them)."""
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
