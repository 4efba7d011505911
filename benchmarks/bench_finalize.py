"""Benchmark: what committing a run's staged files costs, and what checking previous shards' identity costs.

    .venv/bin/python -m benchmarks.bench_finalize [--shards 1,10,100,1000] [--shard-kib 64] [--verify-mib 256]

1. commit_files (transforms/write.py) on N staged shards in a local directory that holds an earlier output of N
   shards: the deletion of the earlier shards that are not replaced, one listing of the staging directory and the
   renames (best of 3, a fresh directory each time);
2. verify_identity (transforms/previous_rows.py): reading a previous shard whole to compare its size and SHA-256,
   in MiB/s (best of 3, from the page cache).
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time

from formats import sinks
from formats.output_files import EMBEDDINGS, shard_name, staging_dir
from transforms import previous_rows
from snapshot.staging import WrittenFile, commit_files


def _commit_seconds(shards: int, shard_bytes: int) -> float:
  best = float("inf")
  for _ in range(3):
    with tempfile.TemporaryDirectory() as root:
      prefix = os.path.join(root, "emb")
      staging = staging_dir(prefix, "0" * 32)
      os.makedirs(staging)
      payload = os.urandom(shard_bytes)
      for i in range(shards):  # an earlier output of as many shards, under the final names
        with open(shard_name(prefix, EMBEDDINGS, i, shards, ".tfrecord"), "wb") as f:
          f.write(payload)
      written = []
      for i in range(shards):
        path = os.path.join(staging, f"embeddings-{i:032x}.tfrecord")
        with open(path, "wb") as f:
          f.write(payload)
        written.append(WrittenFile(EMBEDDINGS, path, shard_bytes, "", 1))
      start = time.perf_counter()
      commit_files(prefix, staging, written, {EMBEDDINGS: sinks.TFRecordSink()})
      best = min(best, time.perf_counter() - start)
  return best


def _verify_mib_per_s(mib: int) -> float:
  with tempfile.TemporaryDirectory() as root:
    path = os.path.join(root, "shard")
    with open(path, "wb") as f:
      handle = sinks.HashingWriter(f)
      for _ in range(mib):
        handle.write(os.urandom(1 << 20))
      identity = previous_rows.ShardIdentity(handle.size_bytes, handle.sha256)
    best = float("inf")
    for _ in range(3):
      start = time.perf_counter()
      previous_rows.verify_identity(path, identity)
      best = min(best, time.perf_counter() - start)
  return mib / best


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--shards", default="1,10,100,1000")
  parser.add_argument("--shard-kib", type=int, default=64)
  parser.add_argument("--verify-mib", type=int, default=256)
  args = parser.parse_args()
  print("| shards | commit (local), ms | per shard, ms |")
  print("| ---: | ---: | ---: |")
  for n in (int(x) for x in args.shards.split(",")):
    seconds = _commit_seconds(n, args.shard_kib << 10)
    print(f"| {n} | {seconds * 1e3:.1f} | {seconds * 1e3 / n:.3f} |")
  print(f"verify_identity (read + SHA-256 of a {args.verify_mib} MiB shard): {_verify_mib_per_s(args.verify_mib):.0f} "
        "MiB/s")


if __name__ == "__main__":
  main()
