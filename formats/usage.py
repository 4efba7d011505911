"""What every layer raises for a bad option or input, and the reading of repeated --input flags."""
from __future__ import annotations


class UsageError(ValueError):
  """A bad option or input, reported before the job starts."""


def split_patterns(values) -> list[str]:
  """Repeated --input flags, each possibly comma-separated (commas inside {a,b} globs are kept)."""
  out = []
  for value in values or ():
    depth, current = 0, []
    for ch in value:
      depth += ch == "{"
      depth -= ch == "}"
      if ch == "," and depth == 0:
        out.append("".join(current))
        current = []
      else:
        current.append(ch)
    out.append("".join(current))
  return [p.strip() for p in out if p.strip()]
