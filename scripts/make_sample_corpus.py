"""Builds sample_corpus/ from real English sentences: the first sentences of Python standard-library docstrings.

Run once by a developer (the output is committed); deterministic for a given Python version.
"""
import importlib
import inspect
import pathlib
import re
import sys

MODULES = ["os", "os.path", "math", "statistics", "random", "json", "csv", "gzip", "zipfile", "tarfile", "shutil",
           "pathlib", "datetime", "calendar", "time", "collections", "itertools", "functools", "heapq", "bisect",
           "string", "textwrap", "difflib", "re", "socket", "http.client", "urllib.parse", "email.message",
           "threading", "queue", "subprocess", "sqlite3", "hashlib", "hmac", "secrets", "base64", "struct",
           "decimal", "fractions", "logging", "argparse", "unittest", "tempfile", "glob", "fnmatch", "pickle",
           "copy", "pprint", "array", "io", "codecs", "unicodedata", "locale", "gettext", "uuid", "ipaddress",
           "html", "xml.etree.ElementTree", "wave", "colorsys", "turtle", "tkinter", "asyncio", "contextlib"]


def first_sentence(doc: str):
  text = " ".join(doc.strip().split("\n\n")[0].split())
  m = re.match(r"(.+?[.!?])(\s|$)", text)
  s = m.group(1) if m else text
  if not 25 <= len(s) <= 220 or ">>>" in s or s.count("(") != s.count(")"):
    return None
  return s


def main(out_dir: str, limit: int = 420):
  seen, sentences = set(), []
  for name in MODULES:
    try:
      mod = importlib.import_module(name)
    except Exception:  # pylint: disable=broad-except
      continue
    for _, obj in sorted(inspect.getmembers(mod), key=lambda kv: kv[0]):
      doc = inspect.getdoc(obj) if (inspect.isfunction(obj) or inspect.isclass(obj) or inspect.isbuiltin(obj)) else None
      s = first_sentence(doc) if doc else None
      if s and s not in seen:
        seen.add(s)
        sentences.append(s)
  sentences = sentences[:limit]
  out = pathlib.Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  shards = 3
  for k in range(shards):
    (out / f"stdlib-docstrings-{k}.txt").write_text("\n".join(sentences[k::shards]) + "\n", encoding="utf-8")
  print(f"{len(sentences)} sentences in {shards} files under {out}")


if __name__ == "__main__":
  main(sys.argv[1] if len(sys.argv) > 1 else "sample_corpus")
