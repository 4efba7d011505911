"""The house rules (README "Layout"): each package imports only the layers below it, no import cycles between
modules, at most MAX_MODULES modules per folder and MAX_LINES lines per module, Beam steps only in transforms/, and
the commit protocol in one place. Each check is also shown to catch a violation, on a fixture."""
from __future__ import annotations

import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parent.parent
# Lowest first: a package may import the ones before it in this list, never the ones after it.
LAYERS = ("modeling", "formats", "stores", "runtime", "snapshot", "transforms", "models", "pipeline", "cli")
ALLOWED = {
    "modeling": set(),
    "formats": set(),
    "stores": {"formats"},
    "runtime": {"formats", "modeling"},
    "snapshot": {"formats", "runtime", "stores"},
    "transforms": {"formats", "modeling", "runtime", "stores", "snapshot"},
    "models": {"formats", "modeling", "runtime", "stores", "snapshot"},
    "pipeline": {"formats", "modeling", "runtime", "stores", "snapshot", "transforms", "models"},
    "cli": {"formats", "modeling", "runtime", "stores", "snapshot", "transforms", "models", "pipeline"},
}
MAX_MODULES = 20  # *.py files directly in one folder, __init__.py included
MAX_LINES = 350
BEAM_STEP_BASES = {"DoFn", "PTransform", "CombineFn"}
BEAM_STEPS_LIVE_IN = "transforms"
# The commit protocol (snapshot/commit.py): commit_run's calls, in this order, then the functions of steps 6 and 7.
COMMIT_MODULE = ROOT / "snapshot" / "commit.py"
COMMIT_STEPS = ("check", "apply_finalizers", "delete_manifest", "commit_files", "write_manifest")
AFTER_COMMIT = ("point_latest", "remove_leftovers")


def _sources(root: pathlib.Path = ROOT) -> list[pathlib.Path]:
  return sorted(p for package in LAYERS for p in (root / package).rglob("*.py"))


def _module_name(path: pathlib.Path, root: pathlib.Path = ROOT) -> str:
  parts = path.relative_to(root).with_suffix("").parts
  return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imported_names(path: pathlib.Path) -> list[str]:
  """Every absolute import of a module, at the top or inside functions: `from a.b import c` gives a.b and a.b.c."""
  names = []
  for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
    if isinstance(node, ast.ImportFrom) and node.module and not node.level:
      names += [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
    elif isinstance(node, ast.Import):
      names += [alias.name for alias in node.names]
  return names


def _imported_packages(path: pathlib.Path) -> set[str]:
  """The project packages a module imports, at the top or inside functions."""
  return {name.split(".")[0] for name in _imported_names(path) if name.split(".")[0] in LAYERS}


def import_graph(root: pathlib.Path = ROOT) -> dict[str, set[str]]:
  """{module: the project modules it imports} (`from pkg import mod` is an edge to pkg.mod when that is a module,
  else to pkg; lazy imports inside functions included)."""
  paths = {_module_name(p, root): p for p in _sources(root)}
  graph = {}
  for name, path in paths.items():
    targets = set()
    for imported in _imported_names(path):
      if imported in paths:
        targets.add(imported)
    # `from a.b import c`: when a.b.c is a module, the edge to a.b.c is enough (not also to the package a.b)
    graph[name] = {t for t in targets if t != name and not any(o.startswith(t + ".") for o in targets)} or targets
    graph[name].discard(name)
  return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
  """The strongly connected components of more than one module (Tarjan), each sorted."""
  index, low, stack, on_stack, found, counter = {}, {}, [], set(), [], [0]

  def visit(v):
    index[v] = low[v] = counter[0]
    counter[0] += 1
    stack.append(v)
    on_stack.add(v)
    for w in sorted(graph.get(v, ())):
      if w not in index:
        visit(w)
        low[v] = min(low[v], low[w])
      elif w in on_stack:
        low[v] = min(low[v], index[w])
    if low[v] == index[v]:
      component = []
      while True:
        w = stack.pop()
        on_stack.discard(w)
        component.append(w)
        if w == v:
          break
      if len(component) > 1:
        found.append(sorted(component))

  for v in sorted(graph):
    if v not in index:
      visit(v)
  return sorted(found)


def crowded_folders(root: pathlib.Path = ROOT) -> dict[str, int]:
  """{folder: its number of modules} for the source folders over MAX_MODULES."""
  folders = {p.parent for p in _sources(root)}
  counts = {str(f.relative_to(root)): len(list(f.glob("*.py"))) for f in folders}
  return {f: n for f, n in counts.items() if n > MAX_MODULES}


def long_modules(root: pathlib.Path = ROOT) -> dict[str, int]:
  """{module path: lines} of the source modules over MAX_LINES."""
  lines = {str(p.relative_to(root)): len(p.read_text(encoding="utf-8").splitlines()) for p in _sources(root)}
  return {p: n for p, n in lines.items() if n > MAX_LINES}


def beam_steps_outside_transforms(root: pathlib.Path = ROOT) -> list[str]:
  """`path: Class` of the classes deriving from beam.DoFn / PTransform / CombineFn outside transforms/."""
  found = []
  for path in _sources(root):
    if path.relative_to(root).parts[0] == BEAM_STEPS_LIVE_IN:
      continue
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
      if isinstance(node, ast.ClassDef):
        bases = {b.attr if isinstance(b, ast.Attribute) else getattr(b, "id", None) for b in node.bases}
        if bases & BEAM_STEP_BASES:
          found.append(f"{path.relative_to(root)}: {node.name}")
  return found


def commit_protocol(path: pathlib.Path = COMMIT_MODULE) -> tuple[list[str], list[str]]:
  """(the protocol's calls in commit_run, in order; the module's functions after commit_run, in order)."""
  tree = ast.parse(path.read_text(encoding="utf-8"))
  functions = [node for node in tree.body if isinstance(node, ast.FunctionDef)]
  main = next(f for f in functions if f.name == "commit_run")
  calls = []
  for statement in main.body:
    for node in ast.walk(statement):
      if isinstance(node, ast.Call):
        name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
        if name in COMMIT_STEPS and name not in calls:
          calls.append(name)
  after = [f.name for f in functions[functions.index(main) + 1:] if f.name in AFTER_COMMIT]
  return calls, after


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


def test_the_layers_are_each_a_lower_layer_of_the_next():
  for i, package in enumerate(LAYERS):
    assert ALLOWED[package] <= set(LAYERS[:i]), package


def test_no_two_modules_import_each_other():
  graph = import_graph()
  assert "cli.main" in graph and "snapshot.commit" in graph["transforms.commit_steps"]  # the graph was read
  assert cycles(graph) == []


def test_the_cycle_check_sees_a_cycle_through_a_lazy_import(tmp_path):
  for name, text in {"pipeline/__init__.py": "", "pipeline/a.py": "from pipeline import b\n",
                     "pipeline/b.py": "def f():\n  from pipeline.c import g\n",
                     "pipeline/c.py": "import pipeline.a\n", "pipeline/d.py": "from pipeline import a\n"}.items():
    (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / name).write_text(text, encoding="utf-8")
  assert cycles(import_graph(tmp_path)) == [["pipeline.a", "pipeline.b", "pipeline.c"]]


def test_no_source_folder_holds_more_than_the_limit_of_modules():
  assert crowded_folders() == {}


def test_the_folder_check_counts_init_too(tmp_path):
  folder = tmp_path / "transforms"
  folder.mkdir()
  for i in range(MAX_MODULES):
    (folder / f"m{i}.py").write_text("", encoding="utf-8")
  assert crowded_folders(tmp_path) == {}
  (folder / "__init__.py").write_text("", encoding="utf-8")
  assert crowded_folders(tmp_path) == {"transforms": MAX_MODULES + 1}


def test_no_module_is_over_the_line_limit():
  assert long_modules() == {}


def test_the_line_check_sees_a_long_module(tmp_path):
  (tmp_path / "snapshot").mkdir()
  (tmp_path / "snapshot" / "long.py").write_text("x = 1\n" * (MAX_LINES + 1), encoding="utf-8")
  (tmp_path / "snapshot" / "short.py").write_text("x = 1\n" * MAX_LINES, encoding="utf-8")
  assert long_modules(tmp_path) == {"snapshot/long.py": MAX_LINES + 1}


def test_beam_steps_live_only_in_transforms():
  assert beam_steps_outside_transforms() == []


def test_the_beam_step_check_sees_a_step_elsewhere(tmp_path):
  for name in ("snapshot", "transforms"):
    (tmp_path / name).mkdir()
    (tmp_path / name / "m.py").write_text(
        "import apache_beam as beam\nfrom apache_beam import DoFn\n\nclass A(beam.PTransform):\n  pass\n\n"
        "class B(DoFn):\n  pass\n\nclass C(beam.transforms.CombineFn):\n  pass\n\nclass D(object):\n  pass\n",
        encoding="utf-8")
  assert beam_steps_outside_transforms(tmp_path) == ["snapshot/m.py: A", "snapshot/m.py: B", "snapshot/m.py: C"]


def test_the_commit_protocol_reads_top_to_bottom_in_one_place():
  assert commit_protocol() == (list(COMMIT_STEPS), list(AFTER_COMMIT))
  # The job's steps run it, and nothing else builds a manifest or moves LATEST (transforms/write.py commits files
  # itself only when used without a staging directory, as a library step with no manifest).
  steps = (ROOT / "transforms" / "commit_steps.py").read_text(encoding="utf-8")
  assert all(f"commit.{name}(" in steps for name in ("commit_run", "point_latest", "remove_leftovers"))
  callers = {str(p.relative_to(ROOT)) for p in _sources() if p != COMMIT_MODULE
             for call in ("build_manifest(", "write_pointer(") if call in p.read_text(encoding="utf-8")
             and not p.read_text(encoding="utf-8").count(f"def {call}")}
  assert callers == set(), callers


def test_the_protocol_check_sees_steps_out_of_order(tmp_path):
  module = tmp_path / "commit.py"
  module.write_text("def commit_run(plan, facts):\n  check(plan)\n  apply_finalizers(plan)\n"
                    "  files = staging.commit_files(plan)\n  delete_manifest(plan)\n  write_manifest(plan, files)\n\n"
                    "def remove_leftovers():\n  pass\n\ndef point_latest():\n  pass\n", encoding="utf-8")
  calls, after = commit_protocol(module)
  assert calls == ["check", "apply_finalizers", "commit_files", "delete_manifest", "write_manifest"]
  assert (calls, after) != (list(COMMIT_STEPS), list(AFTER_COMMIT)) and after == ["remove_leftovers", "point_latest"]
