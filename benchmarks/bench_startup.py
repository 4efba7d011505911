"""Benchmark: where the time of a small `bert-embed run` goes, phase by phase.

    .venv/bin/python -m benchmarks.bench_startup [--model default] [--lines 1] [--repeats 3] [--precision fp32]

Three measurements:
  1. bare imports: TensorFlow with TF Text's ops as a run imports them (runtime/tf_import.py: no Keras) and Beam,
     in a fresh process (best of --repeats), the floor under any run;
  2. the CLI end to end: `python -m cli run` on --lines lines in a fresh process (best of --repeats, with
     the spread), which is what a user waits for;
  3. one traced run in this process: the imports timed one by one, then `pipeline.run.run` with timing wrappers
     around the functions of each start-up step (option resolution, model inspection, fingerprinting, graph
     construction, the worker's model load, the precision probe, the first tokenizer and encoder batch, the sink,
     the manifest). The DirectRunner runs the workers in this process, so one clock sees launcher and workers.
     Nested spans are reported by self time (a child's time is taken out of its parent), so the rows add up; what
     no wrapper inside the pipeline covers (Beam's own scheduling, fused steps' Python) is in "pipeline execution".
"""
from __future__ import annotations

import argparse
import functools
import importlib
import inspect
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from typing import Callable, Optional

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

IMPORTS = ("tensorflow (and TF Text's ops)", "apache_beam", "pipeline.run")
BARE_IMPORTS = ("from runtime import tf_import, beam_import; tf_import.import_tensorflow(); "
                "beam_import.import_beam_without_pandas()")


class Tracer:
  """Timing wrappers installed on module and class attributes; spans keep their nesting per thread."""

  def __init__(self):
    self.origin = time.perf_counter()
    self.spans: list[dict] = []
    self._local = threading.local()
    self._lock = threading.Lock()
    self._restore: list[tuple[object, str, object]] = []

  def record(self, phase: str, start: float, end: float, child: float = 0.0) -> None:
    with self._lock:
      self.spans.append({"phase": phase, "start": start - self.origin, "seconds": end - start,
                         "self": end - start - child})

  def _call(self, phase: str, fn: Callable, args, kwargs):
    stack = getattr(self._local, "stack", None)
    if stack is None:
      stack = self._local.stack = []
    if phase.startswith("  "):  # a sub-step: named after the step it runs in
      phase = f"{phase} ({stack[-1][0] if stack else 'elsewhere'})"
    stack.append([phase, 0.0])
    start = time.perf_counter()
    try:
      return fn(*args, **kwargs)
    finally:
      end = time.perf_counter()
      _, child = stack.pop()
      if stack:
        stack[-1][1] += end - start
      self.record(phase, start, end, child)

  def wrap(self, owner: object, attr: str, phase: str, first: Optional[int] = None) -> None:
    """Times calls of owner.attr as `phase`; with `first`, only the first `first` calls (later ones run bare)."""
    original = inspect.getattr_static(owner, attr)
    fn = original.__func__ if isinstance(original, (staticmethod, classmethod)) else original
    calls = [0]
    tracer = self

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
      calls[0] += 1
      if first is not None and calls[0] > first:
        return fn(*args, **kwargs)
      return tracer._call(phase, fn, args, kwargs)  # pylint: disable=protected-access

    replacement = type(original)(wrapper) if isinstance(original, (staticmethod, classmethod)) else wrapper
    setattr(owner, attr, replacement)
    self._restore.append((owner, attr, original))

  def unwrap_all(self) -> None:
    for owner, attr, original in reversed(self._restore):
      setattr(owner, attr, original)
    self._restore.clear()


def _install(tracer: Tracer) -> None:
  """The wrappers: each start-up step is the function that does it, patched where it is looked up."""
  import apache_beam as beam  # pylint: disable=import-outside-toplevel
  from pipeline import config, run  # pylint: disable=import-outside-toplevel
  from snapshot import manifest, staging  # pylint: disable=import-outside-toplevel
  from models import model_fingerprint, model_flags, model_inspection  # pylint: disable=import-outside-toplevel
  from transforms.embedding import encode, preprocess  # pylint: disable=import-outside-toplevel
  from transforms import write  # pylint: disable=import-outside-toplevel
  from runtime import precision, saved_models  # pylint: disable=import-outside-toplevel
  tracer.wrap(run, "resolve", "option resolution (matching inputs, checks)")
  tracer.wrap(model_flags, "resolve_model", "model resolution (default model cache)")
  tracer.wrap(model_inspection, "inspect_models", "model inspection (probe texts)")
  tracer.wrap(saved_models, "load_saved_model", "  SavedModel loads")
  tracer.wrap(model_fingerprint, "model_fingerprint", "fingerprinting")
  tracer.wrap(staging, "remove_stale_staging", "removing a failed run's staged files")
  tracer.wrap(run, "build_pipeline", "graph construction")
  tracer.wrap(beam.Pipeline, "run", "pipeline execution (Beam, unwrapped steps)")
  tracer.wrap(encode.BertEncoderModelHandler, "load_model", "worker encoder load (RunInference)")
  tracer.wrap(preprocess._PreprocessBatchFn, "setup", "worker preprocessor load")  # pylint: disable=protected-access
  tracer.wrap(precision, "resolve", "precision probe")
  tracer.wrap(precision, "probe_inputs", "precision probe")
  tracer.wrap(preprocess.Tokenizer, "pack", "first tokenizer batch", first=1)
  tracer.wrap(encode, "encode_batch", "first encoder batch", first=1)
  to_arrow = write._ToArrowTableFn  # pylint: disable=protected-access
  tracer.wrap(to_arrow, "process", "write (rows to Arrow, sink open/close/finalize)")
  tracer.wrap(write, "commit_files", "write (moving the staged files to their final names)")
  tracer.wrap(manifest, "write_atomically", "manifest and LATEST pointer")
  del config


def _timed_subprocess(cmd: list[str], repeats: int, env: dict) -> list[float]:
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                          check=False)
    times.append(time.perf_counter() - start)
    if proc.returncode != 0:
      raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
  return times


def _describe(times: list[float]) -> str:
  spread = f", spread {max(times) - min(times):.1f}" if len(times) > 1 else ""
  median = statistics.median(times)
  return f"best {min(times):.1f} s, median {median:.1f}{spread} ({', '.join(f'{t:.1f}' for t in times)})"


def _load() -> str:
  with open("/proc/loadavg", encoding="utf-8") as f:
    return " ".join(f.read().split()[:3])


def traced_run(argv: list[str]) -> None:
  """Imports and one run in this process, every step timed; prints the table."""
  tracer = Tracer()
  for module in IMPORTS:
    start = time.perf_counter()
    if module.startswith("tensorflow"):
      from runtime import tf_import  # pylint: disable=import-outside-toplevel
      tf_import.import_tensorflow()
    elif module == "apache_beam":  # as the command line imports it
      from runtime import beam_import  # pylint: disable=import-outside-toplevel
      beam_import.import_beam_without_pandas()
    else:
      importlib.import_module(module)
    tracer.record(f"import {module}" + (" (and the project)" if module == "pipeline.run" else ""), start,
                  time.perf_counter())
  _install(tracer)
  from pipeline import run  # pylint: disable=import-outside-toplevel
  start = time.perf_counter()
  try:
    run.run(argv)
  finally:
    tracer.unwrap_all()
  end = time.perf_counter()
  tracer.record("run() total", start, end)
  total = end - tracer.origin
  phases: dict[str, list] = {}
  for span in tracer.spans:
    if span["phase"] == "run() total":
      continue
    entry = phases.setdefault(span["phase"], [0.0, 0, span["start"]])
    entry[0] += span["self"]
    entry[1] += 1
    entry[2] = min(entry[2], span["start"])
  covered = sum(seconds for seconds, _, _ in phases.values())
  print(f"\ntraced run (one process, load average {_load()}): {total:.2f} s from the first import")
  print(f"{'step':<75} {'at s':>6} {'self s':>7} {'calls':>5}")
  for phase, (seconds, calls, first) in sorted(phases.items(), key=lambda kv: kv[1][2]):
    print(f"{phase:<75} {first:>6.2f} {seconds:>7.2f} {calls:>5}")
  print(f"{'other (between the wrapped steps)':<75} {'':>6} {total - covered:>7.2f}")


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--model", default="default")
  parser.add_argument("--lines", type=int, default=1)
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--precision", default="fp32")
  parser.add_argument("--skip-subprocess", action="store_true", help="only the traced run")
  args = parser.parse_args()
  work = tempfile.mkdtemp(prefix="bert-embed-startup-")
  corpus = os.path.join(work, "input.txt")
  with open(corpus, "w", encoding="utf-8") as f:
    for i in range(args.lines):
      f.write(f"Line {i}: the quick brown fox jumps over the lazy dog.\n")
  job = ["--model", args.model, "--input", corpus, "--precision", args.precision]
  env = dict(os.environ, PYTHONPATH=ROOT)
  print(f"bench_startup: {args.lines} line(s), model {args.model}, precision {args.precision}; "
        f"load average at start {_load()}")
  if not args.skip_subprocess:
    imports = _timed_subprocess([sys.executable, "-c", BARE_IMPORTS],
                                args.repeats, env)
    print(f"bare imports (fresh process): {_describe(imports)}")
    cli = _timed_subprocess([sys.executable, "-m", "cli", "run", *job, "--output",
                             os.path.join(work, "cli", "emb")], args.repeats, env)
    print(f"CLI run end to end (fresh process): {_describe(cli)}; best minus best imports "
          f"{min(cli) - min(imports):.1f} s")
  traced_run([*job, "--output", os.path.join(work, "traced", "emb")])


if __name__ == "__main__":
  main()
