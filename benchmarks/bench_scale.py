"""Scale: wall time, throughput and peak memory of `python -m cli run` on the DirectRunner at growing sizes.

Not a test. Each size is a fresh subprocess on a text corpus of real sentences (benchmarks/corpus.py: Debian
changelog entries and standard-library docstrings). Up to 100,000 lines every line is a distinct sentence; larger
corpora repeat that pool (marked "repeated" in the output), each line still its own record (`<file>:<line>` ids).
The model is a random BERT with hidden size 32 (2 layers, 4 heads) and the 30,522-token uncased WordPiece vocab, so
the run measures the pipeline (reading, tokenizing, batching, writing, accounting) more than the encoder.

Peak RSS is sampled from /proc over the job's whole process tree (launcher and any worker processes) every 0.2 s.
Growth between consecutive sizes is reported as an exponent k in cost ~ size^k: k <= 1 is at most linear.

    python -m benchmarks.bench_scale --sizes 10000,100000
    python -m benchmarks.bench_scale --sizes 10000,100000,1000000    # the 1M run takes tens of minutes
    python -m benchmarks.bench_scale --input-format jsonl ...        # structured ids: the duplicate-id shuffle runs
    python -m benchmarks.bench_scale --spread --lines 2000 --model default   # records spread over the workers

`--spread` measures the shuffle that spreads records over the workers before the encoder (transforms/spread.py):
one file of `--lines` lines against the same lines in eight files, on one worker (the in-process DirectRunner) and
on two (its multi_processing mode), each with the shuffle and without it (the job then encodes each file's records
in the worker that read it). Without/with are forced in the job's process by replacing the spreading step, so the
one-worker case shows what the shuffle would cost where the pipeline leaves it out. Besides records/s it prints the
CPU seconds of each process of the job (launcher first), which show how the encoding was shared.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import pathlib
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from typing import NamedTuple, Optional

ROOT = pathlib.Path(__file__).resolve().parent.parent
POOL_SIZE = 100_000
LINES_PER_FILE = 100_000
MODEL_CONFIG = {
    "vocab_size": 30522, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
    "intermediate_size": 64, "hidden_act": "gelu", "max_position_embeddings": 128, "type_vocab_size": 2,
    "layer_norm_eps": 1e-12,
}
_SUMMARY = re.compile(r"bert-embed: (\d+) records read, (\d+) written.*?(\d+) dead-lettered")


class Result(NamedTuple):
  size: int
  seconds: float
  peak_rss_mb: float
  written: int
  dead_lettered: int
  repeated: bool


def ensure_model(root: str) -> str:
  """Exports the hidden-32 random model under root once; returns the export dir."""
  from benchmarks.bert_base import minilm_vocab_file  # pylint: disable=import-outside-toplevel
  from modeling import export  # pylint: disable=import-outside-toplevel
  export_dir = os.path.join(root, "export")
  stamp = os.path.join(root, "config.json")
  if os.path.exists(stamp):
    with open(stamp, encoding="utf-8") as f:
      if json.load(f) == MODEL_CONFIG:
        return export_dir
  shutil.rmtree(root, ignore_errors=True)
  os.makedirs(root)
  config = os.path.join(root, "bert_config.json")
  with open(config, "w", encoding="utf-8") as f:
    json.dump(MODEL_CONFIG, f)
  export.export_model(f"random:{config}", export_dir, vocab=minilm_vocab_file(), seq_length=128, seed=0)
  with open(stamp, "w", encoding="utf-8") as f:
    json.dump(MODEL_CONFIG, f)
  return export_dir


def write_corpus(directory: str, size: int, pool: list[str], input_format: str) -> bool:
  """size lines in files of LINES_PER_FILE; returns whether texts repeat (size > len(pool))."""
  os.makedirs(directory)
  for start in range(0, size, LINES_PER_FILE):
    path = os.path.join(directory, f"part-{start // LINES_PER_FILE:05d}.{input_format}")
    with open(path, "w", encoding="utf-8") as f:
      for i in range(start, min(size, start + LINES_PER_FILE)):
        text = pool[i % len(pool)]
        f.write((json.dumps({"id": f"doc-{i}", "text": text}) if input_format == "jsonl" else text) + "\n")
  return size > len(pool)


def _children() -> dict[int, list[int]]:
  tree: dict[int, list[int]] = {}
  for name in os.listdir("/proc"):
    if not name.isdigit():
      continue
    try:
      with open(f"/proc/{name}/stat", encoding="utf-8") as f:
        stat = f.read()
    except OSError:
      continue
    ppid = int(stat[stat.rindex(")") + 2:].split()[1])
    tree.setdefault(ppid, []).append(int(name))
  return tree


def tree_rss_kb(pid: int) -> int:
  """Resident memory of pid and all its descendants, in KiB (0 for processes that are gone)."""
  tree, total, stack = _children(), 0, [pid]
  while stack:
    p = stack.pop()
    stack.extend(tree.get(p, ()))
    try:
      with open(f"/proc/{p}/status", encoding="utf-8") as f:
        for line in f:
          if line.startswith("VmRSS:"):
            total += int(line.split()[1])
            break
    except OSError:
      pass
  return total


def run_once(model: str, corpus: str, output: str, input_format: str, extra: list[str]) -> tuple[float, int, str]:
  """Runs the job; returns (wall seconds, peak process-tree RSS in KiB, its stdout)."""
  argv = [sys.executable, "-m", "cli", "run", "--model", model, "--input", os.path.join(corpus, "*"),
          "--input-format", input_format, "--output", output, *extra]
  log_path = os.path.join(os.path.dirname(corpus), "job.log")
  start = time.perf_counter()
  with open(log_path, "wb") as log:
    proc = subprocess.Popen(argv, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    peak = 0
    while proc.poll() is None:
      peak = max(peak, tree_rss_kb(proc.pid))
      time.sleep(0.2)
  seconds = time.perf_counter() - start
  with open(log_path, encoding="utf-8", errors="replace") as f:
    text = f.read()
  if proc.returncode != 0:
    raise RuntimeError(f"the job failed ({proc.returncode}):\n{text[-3000:]}")
  return seconds, peak, text


def tree_cpu_seconds(pid: int, seen: dict[int, float]) -> None:
  """Updates `seen` with the CPU seconds (user + system) of pid and all its descendants."""
  tree, stack, tick = _children(), [pid], os.sysconf("SC_CLK_TCK")
  while stack:
    p = stack.pop()
    stack.extend(tree.get(p, ()))
    try:
      with open(f"/proc/{p}/stat", encoding="utf-8") as f:
        fields = f.read().rsplit(")", 1)[1].split()
      seen[p] = (int(fields[11]) + int(fields[12])) / tick
    except (OSError, IndexError, ValueError):
      pass


def spread_child(argv: list[str]) -> None:
  """The job's process for --spread: argv[0] is "on" or "off", the rest the job's arguments."""
  from pipeline import run as run_module  # pylint: disable=import-outside-toplevel
  from cli.main import finish, main  # pylint: disable=import-outside-toplevel
  from transforms import spread  # pylint: disable=import-outside-toplevel
  if argv[0] == "on":
    spread.single_worker = lambda pipeline: False
  else:
    run_module.spread_records = lambda pcoll, label: pcoll
  finish(main(["run", *argv[1:]]))


def spread_matrix(args, extra: list[str]) -> None:
  """The --spread table: one file against eight, one worker against two, with and without the shuffle."""
  if args.model == "tiny":
    model = ensure_model(os.path.join(args.work, "model"))
  else:
    model = args.model
  from benchmarks import corpus  # pylint: disable=import-outside-toplevel
  lines = corpus.build(args.lines, seed=0)
  root = os.path.join(args.work, "spread")
  shutil.rmtree(root, ignore_errors=True)
  corpora = {"1 file": os.path.join(root, "one"), "8 files": os.path.join(root, "eight")}
  os.makedirs(corpora["1 file"])
  os.makedirs(corpora["8 files"])
  with open(os.path.join(corpora["1 file"], "part-0.txt"), "w", encoding="utf-8") as f:
    f.writelines(line + "\n" for line in lines)
  for k in range(8):
    with open(os.path.join(corpora["8 files"], f"part-{k}.txt"), "w", encoding="utf-8") as f:
      f.writelines(line + "\n" for line in lines[k::8])
  workers = {1: [], 2: ["--direct_running_mode=multi_processing", "--direct_num_workers=2"]}
  print(f"model {args.model}; {args.lines} lines; seq_length {args.seq_length}; extra {extra or 'none'}", flush=True)
  print("| workers | input | shuffle | wall s | encoding records/s | CPU s per process (launcher first) |")
  print("| ---: | --- | --- | ---: | ---: | --- |")
  for n, runner in workers.items():
    for name, directory in corpora.items():
      for mode in ("off", "on"):
        output = os.path.join(root, f"out-{n}-{name[0]}-{mode}", "emb")
        argv = [sys.executable, "-c", "import sys; from benchmarks import bench_scale; "
                "bench_scale.spread_child(sys.argv[1:])", mode, "--model", model, "--input",
                os.path.join(directory, "*"), "--output", output, "--seq-length", args.seq_length, *runner, *extra]
        start, cpu = time.perf_counter(), {}
        with subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as proc:
          while proc.poll() is None:
            tree_cpu_seconds(proc.pid, cpu)
            time.sleep(0.2)
          log = proc.stdout.read()
        seconds = time.perf_counter() - start
        rate = re.search(r"encoding ([0-9.]+) records/s", log)
        match = _SUMMARY.search(log)
        if proc.returncode != 0 or not match or int(match.group(2)) != args.lines:
          raise RuntimeError(f"the job failed ({proc.returncode}):\n{log[-3000:]}")
        launcher = cpu.pop(proc.pid, 0.0)
        others = sorted((c for c in cpu.values() if c >= 0.5), reverse=True)
        print(f"| {n} | {name} | {mode} | {seconds:.1f} | {rate.group(1) if rate else '?'} | "
              f"{launcher:.1f}; {', '.join(f'{c:.1f}' for c in others) or '-'} |", flush=True)


def exponent(a: float, b: float, size_a: int, size_b: int) -> float:
  return math.log(b / a) / math.log(size_b / size_a)


def main(argv: Optional[list[str]] = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--sizes", default="10000,100000", help="comma-separated line counts, ascending")
  parser.add_argument("--input-format", choices=("text", "jsonl"), default="text")
  parser.add_argument("--work", default=os.path.join(tempfile.gettempdir(), "bert-embed-bench-scale"))
  parser.add_argument("--seq-length", default="128")
  parser.add_argument("--keep", action="store_true", help="keep the corpora and outputs")
  parser.add_argument("--spread", action="store_true", help="the spreading shuffle's table (see the module doc)")
  parser.add_argument("--lines", type=int, default=2000, help="--spread: lines of the corpus")
  parser.add_argument("--model", default="tiny", help="--spread: 'tiny' (hidden 32) or any --model value")
  args, extra = parser.parse_known_args(argv)  # the rest goes to the job (e.g. --direct_num_workers=2)
  if args.spread:
    spread_matrix(args, extra)
    return
  sizes = [int(s) for s in args.sizes.split(",")]
  model = ensure_model(os.path.join(args.work, "model"))
  from benchmarks import corpus  # pylint: disable=import-outside-toplevel
  pool = corpus.build(min(max(sizes), POOL_SIZE), seed=0)
  print(f"model: hidden {MODEL_CONFIG['hidden_size']}, {MODEL_CONFIG['num_hidden_layers']} layers, vocab "
        f"{MODEL_CONFIG['vocab_size']}; pool of {len(pool)} distinct sentences; format {args.input_format}; "
        f"seq_length {args.seq_length}; extra {extra or 'none'}", flush=True)
  results: list[Result] = []
  for size in sizes:
    run_dir = os.path.join(args.work, f"{args.input_format}-{size}")
    shutil.rmtree(run_dir, ignore_errors=True)
    repeated = write_corpus(os.path.join(run_dir, "in"), size, pool, args.input_format)
    seconds, peak_kb, log = run_once(model, os.path.join(run_dir, "in"), os.path.join(run_dir, "out", "emb"),
                                     args.input_format, ["--seq-length", args.seq_length, *extra])
    match = _SUMMARY.search(log)
    read, written, dead = (int(g) for g in match.groups()) if match else (-1, -1, -1)
    if read != size:
      raise RuntimeError(f"{size} lines but {read} records read:\n{log[-3000:]}")
    results.append(Result(size, seconds, peak_kb / 1024, written, dead, repeated))
    print(f"{size:>9} lines{' (repeated)' if repeated else ''}: {seconds:8.1f} s, {size / seconds:8.1f} records/s, "
          f"peak RSS {peak_kb / 1024:8.1f} MiB, {written} written, {dead} dead-lettered", flush=True)
    if not args.keep:
      shutil.rmtree(run_dir, ignore_errors=True)
  maxrss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
  print(f"\nlargest single process seen (getrusage RUSAGE_CHILDREN): {maxrss:.1f} MiB\n")
  print("| lines | wall s | records/s | peak RSS MiB (process tree) |")
  print("| ---: | ---: | ---: | ---: |")
  for r in results:
    print(f"| {r.size:,}{' (repeated texts)' if r.repeated else ''} | {r.seconds:.1f} | {r.size / r.seconds:.0f} "
          f"| {r.peak_rss_mb:.0f} |")
  for a, b in zip(results, results[1:]):
    kt = exponent(a.seconds, b.seconds, a.size, b.size)
    km = exponent(a.peak_rss_mb, b.peak_rss_mb, a.size, b.size)
    print(f"{a.size:,} -> {b.size:,}: time ~ size^{kt:.2f}, peak RSS ~ size^{km:.2f} "
          f"({'at most linear' if kt <= 1.05 and km <= 1.05 else 'FASTER THAN LINEAR'})")


if __name__ == "__main__":
  main()
