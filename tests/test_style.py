"""One line length for the whole tree: no tracked Python or shell line is longer than MAX_LINE characters."""
from __future__ import annotations

import pathlib
import subprocess

ROOT = pathlib.Path(__file__).resolve().parent.parent
MAX_LINE = 120
CHECKED_SUFFIXES = (".py", ".sh")


def _checked_files() -> list[pathlib.Path]:
  """The .py and .sh files git tracks or would track (not ignored), or, outside a git checkout, every such file
  outside hidden directories."""
  try:
    command = ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard", "--",
               *(f"*{s}" for s in CHECKED_SUFFIXES)]
    listed = subprocess.run(command, cwd=ROOT, check=True, capture_output=True).stdout.decode("utf-8").split("\0")
    paths = [ROOT / name for name in listed if name]
  except (OSError, subprocess.CalledProcessError):
    paths = [p for s in CHECKED_SUFFIXES for p in ROOT.rglob(f"*{s}")
             if not any(part.startswith(".") for part in p.relative_to(ROOT).parts)]
  return sorted(p for p in paths if p.is_file())


def long_lines(path: pathlib.Path, limit: int = MAX_LINE) -> list[str]:
  """`path:line: N characters` for each line of the file longer than `limit` characters."""
  text = path.read_text(encoding="utf-8", errors="surrogateescape")
  return [f"{path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}:{number}: {len(line)} characters"
          for number, line in enumerate(text.splitlines(), 1) if len(line) > limit]


def test_no_tracked_python_or_shell_line_is_longer_than_the_limit():
  files = _checked_files()
  assert ROOT / "tests" / "test_style.py" in files and ROOT / "setup.py" in files  # the listing found the tree
  assert any(p.suffix == ".sh" for p in files)
  found = [hit for path in files for hit in long_lines(path)]
  assert found == []


def test_the_check_counts_characters_not_bytes(tmp_path):
  module = tmp_path / "m.py"
  module.write_text("x = 1\n" + "#" * 121 + "\n" + "é" * 120 + "\n", encoding="utf-8")
  assert long_lines(module) == [f"{module}:2: 121 characters"]
