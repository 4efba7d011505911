"""The packages' layering (README "Layout"): each imports only the layers below it."""
from __future__ import annotations

import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parent.parent
# Lowest first: a package may import the ones before it in this list, never the ones after it.
LAYERS = ("modeling", "formats", "stores", "runtime", "transforms", "pipeline")
ALLOWED = {
    "modeling": set(),
    "formats": set(),
    "stores": {"formats"},
    "runtime": {"formats", "modeling"},
    "transforms": {"formats", "modeling", "runtime", "stores"},
    "pipeline": {"formats", "modeling", "runtime", "stores", "transforms"},
}


def _imported_packages(path: pathlib.Path) -> set[str]:
  """The project packages a module imports, at the top or inside functions."""
  found = set()
  for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
    if isinstance(node, ast.ImportFrom) and node.module and not node.level:
      names = [node.module]
    elif isinstance(node, ast.Import):
      names = [alias.name for alias in node.names]
    else:
      continue
    found.update(name.split(".")[0] for name in names if name.split(".")[0] in LAYERS)
  return found


def test_each_package_imports_only_the_layers_below_it():
  upward = {}
  for package in LAYERS:
    modules = sorted((ROOT / package).rglob("*.py"))
    assert modules, package
    for module in modules:
      extra = _imported_packages(module) - ALLOWED[package] - {package}
      if extra:
        upward[str(module.relative_to(ROOT))] = sorted(extra)
  assert upward == {}


def test_the_check_sees_an_upward_import(tmp_path):
  module = tmp_path / "m.py"
  module.write_text("import os\nfrom pipeline import progress\n\ndef f():\n  import transforms.names\n"
                    "from . import sibling\n", encoding="utf-8")
  assert _imported_packages(module) == {"pipeline", "transforms"}
