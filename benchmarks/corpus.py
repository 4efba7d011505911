"""A realistic English sentence corpus assembled from text already on the machine.

Sources: the change entries of Debian package changelogs (/usr/share/doc/*/changelog*.gz) and the docstrings of
Python's standard library. Both are real prose written by people, with the usual mix of short notes and long
explanations; nothing is repeated or generated. The selection is deterministic for a given machine and seed.

    python -m benchmarks.corpus --num 2000 --out /tmp/corpus.txt
"""
from __future__ import annotations

import argparse
import ast
import glob
import gzip
import os
import random
import re
import sysconfig

_BULLET = re.compile(r"^\s{2,}[*+-]\s+(.*)$")
_CONTINUATION = re.compile(r"^\s{4,}(\S.*)$")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")
_MIN_WORDS = 3
_MAX_CHARS = 600


def _clean(text: str) -> str:
  return " ".join(text.split())


def _usable(sentence: str) -> bool:
  words = sentence.split()
  if len(words) < _MIN_WORDS or len(sentence) > _MAX_CHARS:
    return False
  letters = sum(c.isalpha() for c in sentence)
  return letters >= 0.6 * len(sentence.replace(" ", ""))


def changelog_entries(pattern: str = "/usr/share/doc/*/changelog*.gz") -> list[str]:
  """One text per changelog bullet (continuation lines joined)."""
  out = []
  for path in sorted(glob.glob(pattern)):
    try:
      with gzip.open(path, "rt", encoding="utf-8", errors="replace") as f:
        lines = f.read().splitlines()
    except (OSError, EOFError):
      continue
    current = None
    for line in lines:
      bullet = _BULLET.match(line)
      if bullet:
        if current:
          out.append(_clean(current))
        current = bullet.group(1)
        continue
      more = _CONTINUATION.match(line)
      if current is not None and more and not _BULLET.match(line):
        current += " " + more.group(1)
      else:
        if current:
          out.append(_clean(current))
        current = None
    if current:
      out.append(_clean(current))
  return out


def stdlib_docstring_sentences(limit_files: int = 400) -> list[str]:
  """Sentences from the docstrings of the standard library's modules, classes and functions."""
  root = sysconfig.get_paths()["stdlib"]
  paths = sorted(glob.glob(os.path.join(root, "*.py")) + glob.glob(os.path.join(root, "*", "*.py")))
  paths = [p for p in paths if "test" not in os.path.relpath(p, root)][:limit_files]
  out = []
  for path in paths:
    try:
      with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read())
    except (OSError, SyntaxError, UnicodeDecodeError, ValueError):
      continue
    for node in ast.walk(tree):
      if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
        doc = ast.get_docstring(node)
        if doc:
          first_paragraph = doc.split("\n\n")[0]
          out.extend(_SENTENCE_END.split(_clean(first_paragraph)))
  return out


def build(num: int, seed: int = 0) -> list[str]:
  """`num` distinct sentences: about 3/4 changelog entries, 1/4 docstring sentences, shuffled with `seed`."""
  rng = random.Random(seed)
  changelog = sorted({s for s in changelog_entries() if _usable(s)})
  docs = sorted({s for s in stdlib_docstring_sentences() if _usable(s)} - set(changelog))
  rng.shuffle(changelog)
  rng.shuffle(docs)
  take_docs = min(len(docs), num // 4)
  picked = changelog[:num - take_docs] + docs[:take_docs]
  if len(picked) < num:
    raise RuntimeError(f"only {len(picked)} usable sentences on this machine (asked for {num})")
  rng.shuffle(picked)
  return picked


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--num", type=int, default=2000)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--out", required=True)
  args = parser.parse_args()
  sentences = build(args.num, args.seed)
  with open(args.out, "w", encoding="utf-8") as f:
    f.write("".join(s + "\n" for s in sentences))
  print(f"wrote {len(sentences)} sentences to {args.out}")


if __name__ == "__main__":
  main()
