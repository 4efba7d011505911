"""--dedupe-texts vs a plain run on corpora with and without duplication (DirectRunner, one process).

Prints wall time and records/s of both runs per corpus, and the ratio. The duplicated corpus mimics boilerplate:
the sample corpus's real sentences plus a handful of lines (licence, navigation, sign-off) repeated many times.
usage: .venv/bin/python benchmarks/bench_dedupe.py [--model default]
"""
import argparse
import json
import pathlib
import random
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

BOILERPLATE = ["All rights reserved.", "Back to top", "Subscribe to our newsletter for updates.",
               "This page was last edited on the date shown above.", "Share this article", "Terms of use",
               "Posted in Uncategorized", "Click here to read more."]


def sentences(num):
  """Real sentences from this machine (Debian changelogs, stdlib docstrings): benchmarks/corpus.py."""
  from benchmarks.corpus import build  # pylint: disable=import-outside-toplevel
  return build(num)


def write_corpus(path, texts):
  with open(path, "w", encoding="utf-8") as f:
    for i, t in enumerate(texts):
      f.write(json.dumps({"id": f"r{i}", "text": t}) + "\n")


def timed_run(model, corpus, out, dedupe):
  from pipeline.run import run  # pylint: disable=import-outside-toplevel
  argv = ["--model", model, "--input", str(corpus), "--input-format", "jsonl", "--output", str(out)]
  if dedupe:
    argv.append("--dedupe-texts")
  start = time.perf_counter()
  outcome = run(argv)
  return time.perf_counter() - start, outcome.manifest["counts"]


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--model", default="default")
  parser.add_argument("--num", type=int, default=1000, help="real sentences per corpus")
  args = parser.parse_args()
  rng = random.Random(0)
  real = sentences(args.num)
  corpora = {"no duplicates": list(real)}
  dup = real + [rng.choice(BOILERPLATE) for _ in range(len(real))]
  rng.shuffle(dup)
  corpora["50% boilerplate"] = dup
  rows = []
  with tempfile.TemporaryDirectory() as tmp:
    corpus = pathlib.Path(tmp) / "in.jsonl"
    write_corpus(corpus, real[:50])
    timed_run(args.model, corpus, pathlib.Path(tmp) / "warmup", False)  # model export/caches, TF start-up
    for k, (name, texts) in enumerate(corpora.items()):
      write_corpus(corpus, texts)
      times = {}
      for dedupe in ((False, True) if k % 2 == 0 else (True, False)):  # alternate which goes first
        times[dedupe], counts = timed_run(args.model, corpus, pathlib.Path(tmp) / f"out{int(dedupe)}", dedupe)
        if dedupe:
          encoded = counts["encoded"]
      rows.append((name, len(texts), len(set(texts)), encoded, times[False], times[True]))
  print(f"{'corpus':<18}{'records':>9}{'distinct':>10}{'encoded':>9}{'plain s':>9}{'dedupe s':>10}{'speed-up':>10}")
  for name, n, distinct, encoded, plain_s, dedupe_s in rows:
    print(f"{name:<18}{n:>9}{distinct:>10}{encoded:>9}{plain_s:>9.1f}{dedupe_s:>10.1f}{plain_s / dedupe_s:>9.2f}x")


if __name__ == "__main__":
  main()
