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


def sentences():
  out = []
  for f in sorted((ROOT / "sample_corpus").glob("*.txt")):
    out += [line for line in f.read_text(encoding="utf-8").splitlines() if line.strip()]
  return out


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
  args = parser.parse_args()
  rng = random.Random(0)
  real = sentences()
  corpora = {"no duplicates": list(real)}
  dup = real + [rng.choice(BOILERPLATE) for _ in range(len(real))]
  rng.shuffle(dup)
  corpora["50% boilerplate"] = dup
  rows = []
  with tempfile.TemporaryDirectory() as tmp:
    for name, texts in corpora.items():
      corpus = pathlib.Path(tmp) / "in.jsonl"
      write_corpus(corpus, texts)
      distinct = len(set(texts))
      plain_s, _ = timed_run(args.model, corpus, pathlib.Path(tmp) / "plain", False)
      dedupe_s, counts = timed_run(args.model, corpus, pathlib.Path(tmp) / "dedupe", True)
      rows.append((name, len(texts), distinct, counts["encoded"], plain_s, dedupe_s))
  print(f"{'corpus':<18}{'records':>9}{'distinct':>10}{'encoded':>9}{'plain s':>9}{'dedupe s':>10}{'speed-up':>10}")
  for name, n, distinct, encoded, plain_s, dedupe_s in rows:
    print(f"{name:<18}{n:>9}{distinct:>10}{encoded:>9}{plain_s:>9.1f}{dedupe_s:>10.1f}{plain_s / dedupe_s:>9.2f}x")


if __name__ == "__main__":
  main()
