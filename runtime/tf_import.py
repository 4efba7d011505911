"""Importing TensorFlow with TF Text's ops, without the Keras that neither the pipeline nor a SavedModel load uses.

`import tensorflow` ends with an eager import of Keras's optimizers (so that a Keras optimizer saved in a SavedModel
finds its registration), and `import tensorflow_text` defines Keras layers at import, which loads Keras (and pandas)
through `tf.keras`: ~0.7 s of a ~6 s import on a 2-core machine (benchmarks/RESULTS.md, "Start-up (issue 26 item
12)"). Loading a TF Hub preprocessor needs only TF Text's op libraries registered, which is what `import
tensorflow_text` does first; the SavedModels loaded here hold no Keras optimizer. Keras stays importable: a later
`import keras` or `tf.keras` loads it as usual.

`import tensorflow` also runs the body of every public API module (`tensorflow._api.v2.*`: `tf.compat`,
`tf.distribute`, `tf.__internal__`, `tf.lite`, ...), which imports most of TensorFlow's Python: ~1.1 s of a ~3.1 s
import, for modules a run never touches. Here each of them is deferred: it is created with its name, file and path,
and its body runs at the first lookup of a name it does not yet have (`tf.saved_model.load` runs `tf.saved_model`'s),
under one lock, so threads see it whole. What TensorFlow's own modules import directly is imported as usual.
"""
from __future__ import annotations

import glob
import importlib.abc
import importlib.machinery
import importlib.util
import os
import sys
import threading
import types

_KERAS_OPTIMIZERS = "keras.src.optimizers"  # what tensorflow/__init__.py imports eagerly, errors ignored
_API_PREFIX = "tensorflow._api.v2."  # the public API modules (generated: names re-exported from tensorflow.python)
_LOCK = threading.Lock()  # workers' threads may ask at once
_DEFERRED_LOCK = threading.RLock()  # a deferred module's body may look up names in another deferred module
_deferred = {}  # module name -> the loader that runs its body
_done = False


class _DeferredModule(types.ModuleType):
  """An API module whose body has not run: the first lookup of a name it lacks runs it, then looks again."""

  def __getattr__(self, name):
    run_deferred(self)
    return types.ModuleType.__getattribute__(self, name)


def run_deferred(module) -> None:
  """Runs a deferred module's body once (other threads wait for it); a no-op for any other module."""
  with _DEFERRED_LOCK:
    loader = _deferred.pop(module.__name__, None)
    if loader is None:  # run already, or running in this thread (a lookup during its own body: not there yet)
      return
    loader.exec_module(module)
    module.__class__ = types.ModuleType


class _DeferredLoader(importlib.abc.Loader):

  def __init__(self, loader):
    self._loader = loader

  def create_module(self, spec):
    return None  # the usual module object (__name__, __file__, __path__, __spec__ set by the import system)

  def exec_module(self, module):
    _deferred[module.__name__] = self._loader
    module.__class__ = _DeferredModule


class _DeferAPIModules(importlib.abc.MetaPathFinder):
  """Finds the API modules as the path finder does, with their bodies deferred."""

  def find_spec(self, name, path=None, target=None):
    if not name.startswith(_API_PREFIX):
      return None
    spec = importlib.machinery.PathFinder.find_spec(name, path)
    if spec is not None and isinstance(spec.loader, importlib.machinery.SourceFileLoader):
      spec.loader = _DeferredLoader(spec.loader)
    return spec


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
    finder = _DeferAPIModules()
    sys.meta_path.insert(0, finder)
    try:
      import tensorflow  # noqa: F401  pylint: disable=unused-import,import-outside-toplevel
    finally:
      sys.meta_path.remove(finder)
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
