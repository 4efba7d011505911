"""Loading TF Hub-form BERT SavedModels on workers: plain `tf.saved_model.load`, TF Text ops registered first.

SavedModels are programs: only load models you trust.
"""
from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import threading

_LOG = logging.getLogger(__name__)
_LOCALIZE_LOCK = threading.Lock()


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
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  gpus = tf.config.list_physical_devices("GPU")
  for gpu in gpus:
    try:
      tf.config.experimental.set_memory_growth(gpu, True)
    except RuntimeError:  # already initialised in this process; the setting only applies before first use
      pass
  return gpus


def load_saved_model(path: str):
  """`tf.saved_model.load` with TF Text's ops registered, so TF Hub preprocessors load."""
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  import tensorflow_text  # noqa: F401  pylint: disable=unused-import,import-outside-toplevel
  return tf.saved_model.load(localize(path))


class LoadedModel:
  """Holds a loaded SavedModel; weak-referenceable, so that `apache_beam.utils.shared` can share it."""

  def __init__(self, path: str, obj, device: str | None = None):
    self.path = path
    self.obj = obj
    self.device = device


def load_encoder(path: str) -> LoadedModel:
  """Loads an encoder SavedModel, placed on the first GPU when the worker has one."""
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  gpus = configure_devices()
  device = "/GPU:0" if gpus else "/CPU:0"
  with tf.device(device):
    obj = load_saved_model(path)
  _LOG.info("loaded encoder %s on %s", path, device)
  return LoadedModel(path, obj, device)


def load_preprocessor(path: str) -> LoadedModel:
  """Loads a preprocessor SavedModel; it always runs on the CPU (string ops)."""
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  configure_devices()
  with tf.device("/CPU:0"):
    obj = load_saved_model(path)
  return LoadedModel(path, obj, "/CPU:0")
