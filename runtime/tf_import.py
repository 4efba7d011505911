"""Importing TensorFlow with TF Text's ops, without the Keras that neither the pipeline nor a SavedModel load uses.

`import tensorflow` ends with an eager import of Keras's optimizers (so that a Keras optimizer saved in a SavedModel
finds its registration), and `import tensorflow_text` defines Keras layers at import, which loads Keras (and pandas)
through `tf.keras`: ~0.7 s of a ~6 s import on a 2-core machine (benchmarks/RESULTS.md, "Start-up (issue 26 item
12)"). Loading a TF Hub preprocessor needs only TF Text's op libraries registered, which is what `import
tensorflow_text` does first; the SavedModels loaded here hold no Keras optimizer. Keras stays importable: a later
`import keras` or `tf.keras` loads it as usual.
"""
from __future__ import annotations

import glob
import importlib.util
import os
import sys
import threading

_KERAS_OPTIMIZERS = "keras.src.optimizers"  # what tensorflow/__init__.py imports eagerly, errors ignored
_LOCK = threading.Lock()  # workers' threads may ask at once
_done = False


def op_libraries() -> list[str]:
  """TF Text's op libraries (python/ops/_*.so, python/metrics/_*.so), without importing its Python package."""
  spec = importlib.util.find_spec("tensorflow_text")
  if spec is None or not spec.origin:
    return []
  return sorted(glob.glob(os.path.join(os.path.dirname(spec.origin), "python", "*", "_*.so")))


def import_tensorflow():
  """`import tensorflow` without its eager Keras import, then TF Text's ops registered; returns the module.

  Where TensorFlow is already imported (a library user's process, tests), its import stays as it was; where TF Text
  is, or its libraries are not where this version keeps them, TF Text is imported as a package.
  """
  global _done  # pylint: disable=global-statement
  with _LOCK:
    if not _done:
      _import()
      _done = True
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  return tf


def _import() -> None:
  if "tensorflow" not in sys.modules and "keras" not in sys.modules and _KERAS_OPTIMIZERS not in sys.modules:
    sys.modules[_KERAS_OPTIMIZERS] = None  # the import stops there (ImportError, which TensorFlow ignores)
    try:
      import tensorflow  # noqa: F401  pylint: disable=unused-import,import-outside-toplevel
    finally:
      if sys.modules.get(_KERAS_OPTIMIZERS, 0) is None:
        del sys.modules[_KERAS_OPTIMIZERS]
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  libraries = [] if "tensorflow_text" in sys.modules else op_libraries()
  if not libraries:
    import tensorflow_text  # noqa: F401  pylint: disable=unused-import,import-outside-toplevel
  try:
    for path in libraries:
      tf.load_op_library(path)  # registers the library's ops (TensorFlow loads a library once per process)
  except (tf.errors.OpError, OSError):  # a build laid out otherwise: the package's own import loads what it needs
    import tensorflow_text  # noqa: F401,F811  pylint: disable=unused-import,import-outside-toplevel,reimported
