"""The command line's process imports Beam, and runs, without pandas, which no step of a run uses.

With pandas installed, `import apache_beam` imports it (to register the typehints of Beam's DataFrame API): ~0.4 s
of a ~1.7 s import on a 2-core machine (benchmarks/RESULTS.md, "Start-up (issue 26 item 12)"); and pyarrow imports
it when it first converts values to an Arrow array (to ask whether they are a pandas object). A run builds no
DataFrame and converts nothing from or to pandas: in the `bert-embed run` process, importing pandas raises
ModuleNotFoundError, which Beam and pyarrow both take as "not installed". Its worker processes (the multi-process
runner, Dataflow) import their own, and the library API (pipeline/api.py) leaves its caller's imports as they are.
"""
from __future__ import annotations

import importlib.abc
import sys

_ABSENT = "pandas"


class _Absent(importlib.abc.MetaPathFinder):
  """Finds no pandas: `import pandas` raises ModuleNotFoundError."""

  def find_spec(self, name, path=None, target=None):
    if name == _ABSENT or name.startswith(_ABSENT + "."):
      raise ModuleNotFoundError(f"No module named {name!r} (bert-embed run runs without pandas)", name=name)
    return None


def import_beam_without_pandas():
  """Makes pandas absent from this process (unless it is imported already), then imports Beam; returns Beam."""
  if _ABSENT not in sys.modules and not any(isinstance(f, _Absent) for f in sys.meta_path):
    sys.meta_path.insert(0, _Absent())
  import apache_beam  # pylint: disable=import-outside-toplevel
  return apache_beam
