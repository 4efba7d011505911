"""`python benchmarks/trace_cli.py OUT.json run ARGS`: `bert-embed run ARGS`, timing where the wall time goes.

Records, as wall and CPU seconds from the process start: the option checks (pipeline.run.resolve, which checks a
vector store at launch), the graph construction, each bundle the DirectRunner's FnApiRunner executes (named after
its fused stage), the commit step and its vector store part, and the whole process; writes them to OUT.json
({"total", "cpu", "spans": [[name, start, wall, cpu], ...]}). Used by bench_store_sync.py --trace.
"""
import json
import os
import resource
import sys
import time

_ORIGIN = time.perf_counter()
_SPANS = []


def _wrap(owner, attr, name):
  original = getattr(owner, attr)

  def timed(*args, **kwargs):
    start, cpu = time.perf_counter(), time.process_time()
    try:
      return original(*args, **kwargs)
    finally:
      label = name(args) if callable(name) else name
      _SPANS.append([label, start - _ORIGIN, time.perf_counter() - start, time.process_time() - cpu])

  setattr(owner, attr, timed)


def main():
  out, argv = sys.argv[1], sys.argv[2:]
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  # pylint: disable=import-outside-toplevel
  from apache_beam.runners.portability.fn_api_runner import fn_runner
  from cli.main import finish, main as cli_main
  from pipeline import run
  from snapshot import commit, store_commit
  _wrap(run, "resolve", "option checks (resolve)")
  _wrap(run, "build_pipeline", "graph construction")
  _wrap(fn_runner.FnApiRunner, "_execute_bundle", lambda args: "bundle " + args[2].stage.name)
  _wrap(commit, "commit_run", "  of which the commit step (commit_run)")
  _wrap(store_commit.StoreFinalizer, "commit", "  of which the store apply + verify")
  try:
    code = cli_main(argv)
  finally:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    with open(out, "w", encoding="utf-8") as f:
      json.dump({"total": time.perf_counter() - _ORIGIN, "cpu": usage.ru_utime + usage.ru_stime, "spans": _SPANS}, f)
  finish(code)


if __name__ == "__main__":
  main()
