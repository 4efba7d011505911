"""What resuming costs: checkpointing's overhead on an uninterrupted run, and a run killed at ~70% then resumed.

`--num` real sentences (benchmarks/corpus.py) as one text file, `bert-embed run --model default` (MiniLM) on the
in-process DirectRunner, each run the CLI in its own process (wall seconds include start-up and the model load).
1. Overhead: this code (checkpoints written) against `--base DIR`, a copy of the code before checkpoints (e.g.
   `git archive 78db2f4 | tar -x -C DIR`), in alternating pairs; the output folder's bytes are sampled every 0.2 s
   (peak while running, and after the commit).
2. Kill and resume: a run is SIGKILLed (its process group) once its checkpoints hold `--kill-at` of the records, then
   the same command is rerun; the manifest says how many records the rerun resumed and encoded.
usage: .venv/bin/python benchmarks/bench_resume.py --base DIR [--num 20000] [--pairs 1] [--kill-at 0.7]
"""
import argparse
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def folder_bytes(directory):
  total = 0
  for top, _, names in os.walk(directory):
    for name in names:
      try:
        total += os.path.getsize(os.path.join(top, name))
      except OSError:  # renamed or removed meanwhile
        pass
  return total


def checkpointed_rows(directory):
  from formats.checkpoint_files import parse_checkpoint_name  # pylint: disable=import-outside-toplevel
  rows = 0
  for top, _, names in os.walk(directory):
    rows += sum(parse_checkpoint_name(n).rows for n in names if parse_checkpoint_name(n))
  return rows


def start(code, corpus, output, log):
  env = dict(os.environ, PYTHONPATH=str(code))
  module = "cli" if (pathlib.Path(code) / "cli" / "__main__.py").exists() else "pipeline.cli"  # before the move
  argv = [sys.executable, "-m", module, "run", "--model", "default", "--input", corpus, "--output", output]
  return subprocess.Popen(argv, cwd=code, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def timed_run(code, corpus, output, log_path, kill_at_rows=None):
  """Runs to the end (or SIGKILLs once kill_at_rows are checkpointed); returns (seconds, peak bytes, exit status)."""
  directory = os.path.dirname(output)
  os.makedirs(directory, exist_ok=True)
  peak, done = [0], threading.Event()

  def sample():
    while not done.is_set():
      peak[0] = max(peak[0], folder_bytes(directory))
      if kill_at_rows is not None and checkpointed_rows(directory) >= kill_at_rows:
        os.killpg(proc.pid, signal.SIGKILL)
        return
      time.sleep(0.2)

  with open(log_path, "wb") as log:
    began = time.perf_counter()
    proc = start(code, corpus, output, log)
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    status = proc.wait()
    seconds = time.perf_counter() - began
    done.set()
    sampler.join()
  return seconds, peak[0], status


def manifest(output):
  with open(output + "-manifest.json", encoding="utf-8") as f:
    return json.load(f)


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--base", required=True, help="the code before checkpoints (a directory)")
  parser.add_argument("--num", type=int, default=20000)
  parser.add_argument("--pairs", type=int, default=1)
  parser.add_argument("--kill-at", type=float, default=0.7)
  args = parser.parse_args()
  from benchmarks.corpus import build  # pylint: disable=import-outside-toplevel
  tmp = tempfile.mkdtemp(prefix="bench-resume-")
  corpus = os.path.join(tmp, "corpus.txt")
  with open(corpus, "w", encoding="utf-8") as f:
    f.write("".join(s + "\n" for s in build(args.num)))
  print(f"corpus: {args.num} sentences; {tmp}")
  walls = {"with": [], "without": []}
  for pair in range(args.pairs):
    order = ("with", "without") if pair % 2 == 0 else ("without", "with")
    for kind in order:
      out = os.path.join(tmp, f"{kind}-{pair}", "emb")
      code = ROOT if kind == "with" else pathlib.Path(args.base)
      seconds, peak, status = timed_run(code, corpus, out, os.path.join(tmp, f"{kind}-{pair}.log"))
      after = folder_bytes(os.path.dirname(out))
      m = manifest(out)
      walls[kind].append(seconds)
      print(f"pair {pair + 1} {kind} checkpoints: {seconds:.1f} s wall, exit {status}, peak {peak} bytes, after "
            f"commit {after} bytes, written {m['counts']['written']}", flush=True)
  mean = {k: sum(v) / len(v) for k, v in walls.items()}
  print(f"wall with/without: {mean['with'] / mean['without']:.3f}")
  out = os.path.join(tmp, "killed", "emb")
  seconds, peak, status = timed_run(ROOT, corpus, out, os.path.join(tmp, "killed.log"),
                                    kill_at_rows=int(args.kill_at * args.num))
  rows = checkpointed_rows(os.path.dirname(out))
  print(f"killed run: {seconds:.1f} s wall until the kill (exit {status}), {rows} rows checkpointed", flush=True)
  again, peak, status = timed_run(ROOT, corpus, out, os.path.join(tmp, "resumed.log"))
  counts = manifest(out)["counts"]
  print(f"resumed run: {again:.1f} s wall, exit {status}, peak {peak} bytes (the killed run's checkpoints included), "
        f"resumed {counts['resumed']}, encoded {counts['encoded']}, "
        f"written {counts['written']}; killed + resumed {seconds + again:.1f} s vs uninterrupted "
        f"{mean['with']:.1f} s ({(seconds + again) / mean['with']:.2f}x)")
  with open(os.path.join(tmp, "resumed.log"), encoding="utf-8") as f:
    print("resumed run's first line:", next((line.strip() for line in f if "resuming" in line), None))
  shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
  main()
