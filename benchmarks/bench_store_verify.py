"""The cost of the verify after a store commit (snapshot/store_verify.py) and of a first load, per store.

Random 384-dimensional float32 vectors with the pipeline's payload are loaded through the stores/ interface as a
run's rebuild would (begin_rebuild, upsert, commit_rebuild), then verify_and_repair runs against the same points:
ids and text_sha256 of every point (their digest) plus the vectors of a sample of 1,000, then of all, then the
sample again with digests that differ (the ids compared one by one). Prints points/s of the load and seconds of
each verify. PostgreSQL: a fresh server (bench_stores.py); Qdrant: a folder (embedded engine).
usage: .venv/bin/python benchmarks/bench_store_verify.py [--num 20000] [--qdrant-num 2000]
"""
import argparse
import os
import pathlib
import random
import shutil
import sys
import tempfile
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.bench_stores import postgres_server  # noqa: E402
from snapshot.store_verify import VerifyFacts, verify_and_repair  # noqa: E402
from stores.base import StorePoint  # noqa: E402
from stores.config import StoreConfig  # noqa: E402
from stores.digest import Digest, digest  # noqa: E402

DIM = 384


def points(num):
  rng = np.random.default_rng(0)
  vectors = rng.normal(size=(num, DIM)).astype(np.float32)
  return [StorePoint(f"doc/{i}", vectors[i], {"text_sha256": f"{i:064x}", "source": "corpus.jsonl"})
          for i in range(num)]


def measure(config, num):
  data = points(num)
  store = config.make()
  start = time.perf_counter()
  physical = store.begin_rebuild(DIM, "bench")
  store.upsert(data, target=physical)
  store.commit_rebuild(physical, "bench", None)
  load = time.perf_counter() - start
  expected = [(p.id, p.payload["text_sha256"]) for p in data]
  result = {"kind": config.kind, "points": num, "load_points_per_s": round(num / load, 1)}
  whole, sample = digest(expected), random.Random(0).sample(data, min(1000, num))
  for label, sample, found in (("verify_sample_1000", sample, whole), ("verify_all", data, whole),
                               ("verify_sample_1000_one_by_one", sample, Digest(whole.count, whole.total + 1))):
    facts = VerifyFacts(found, len(sample), tuple((0.0, p) for p in sample))
    start = time.perf_counter()
    section = verify_and_repair(store, facts, lambda: expected)
    result[label + "_s"] = round(time.perf_counter() - start, 2)
    assert section["repaired"] == 0 and section["left_for_next_run"] == 0, section
  store.close()
  print(result, flush=True)


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--num", type=int, default=20000)
  parser.add_argument("--qdrant-num", type=int, default=2000)
  args = parser.parse_args()
  work = pathlib.Path(tempfile.mkdtemp(prefix="bench-store-verify-", dir="/tmp"))
  work.chmod(0o755)
  try:
    (work / "pg").mkdir()
    url, password, stop = postgres_server(work / "pg")
    os.environ["PGPASSWORD"] = password
    try:
      if args.num:
        measure(StoreConfig("postgres", url, "docs"), args.num)
    finally:
      stop()
    measure(StoreConfig("qdrant", str(work / "qdrant"), "docs"), args.qdrant_num)
  finally:
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
  main()
