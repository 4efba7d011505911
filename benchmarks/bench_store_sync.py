"""End-to-end cost of keeping a PostgreSQL + pgvector table in sync on a 2%-changed re-embedding.

Builds a jsonl corpus of N real sentences (benchmarks/corpus.py) with stable ids `doc/0..`, embeds it once (v1) with
`--vector-store postgres` into a fresh table, then makes v2 with 2% of the records touched (1% changed, 0.5% deleted,
0.5% new) and runs v2 with `--previous` v1, each to a new prefix from the same v1: with the store (sync mode:
upserts and deletes only what changed, staged and applied at the commit, then verified)
and without it (output only), in interleaved order. Each run is the CLI in
its own process (`python -m cli run`, DirectRunner), so its wall seconds include start-up. Prints wall
seconds per run, the ratio with/without, the manifest's store counts and verify, and whether the table's ids equal
v2's ids. Before each run with the store, the table and its snapshot marker are put back as v1 left them.
The Qdrant folder is left out: its embedded engine commits every point on its own (bench_stores.py, RESULTS.md).
With --trace each v2 run goes through benchmarks/trace_cli.py, and the mean seconds of its steps (option checks,
graph construction, the Beam bundles, the commit and its store part) are printed per kind of run.
usage: .venv/bin/python benchmarks/bench_store_sync.py [--num 20000] [--seq-length 128] [--pairs 3] [--trace]
"""
import argparse
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks import corpus  # noqa: E402
from benchmarks.bench_stores import postgres_server  # noqa: E402

TABLE = "docs"


def write_jsonl(path, records):
  with open(path, "w", encoding="utf-8") as f:
    for rid, text in records.items():
      f.write(json.dumps({"id": rid, "text": text}) + "\n")


def versions(num):
  """v1 (num records) and v2: 1% changed, 0.5% deleted, 0.5% new (ids never reused)."""
  share = num // 200
  sentences = corpus.build(num + share)
  v1 = {f"doc/{i}": s for i, s in enumerate(sentences[:num])}
  v2 = dict(v1)
  for i in range(0, 2 * share * 2, 2):  # every second id among the first 4*share: changed
    v2[f"doc/{i}"] = v1[f"doc/{i}"] + " (revised)"
  for i in range(1, 2 * share, 2):  # odd ids among the first 2*share: deleted
    del v2[f"doc/{i}"]
  for j, s in enumerate(sentences[num:]):
    v2[f"doc/{num + j}"] = s
  return v1, v2


def run(args, work, input_path, output, *extra):
  trace = f"{output}-trace.json" if getattr(args, "trace", False) else None
  cli = [str(ROOT / "benchmarks" / "trace_cli.py"), trace] if trace else ["-m", "cli"]
  argv = [sys.executable, *cli, "run", "--model", "default", "--input", str(input_path),
          "--input-format", "jsonl", "--seq-length", str(args.seq_length), "--output", str(output), *extra]
  env = dict(os.environ, PYTHONPATH=str(ROOT))
  start = time.perf_counter()
  done = subprocess.run(argv, cwd=work, env=env, capture_output=True, text=True, check=False)
  seconds = time.perf_counter() - start
  if done.returncode != 0:
    raise RuntimeError(f"run failed ({done.returncode}): {' '.join(argv)}\n{done.stderr[-3000:]}")
  with open(f"{output}-manifest.json", encoding="utf-8") as f:
    manifest = json.load(f)
  if trace:
    with open(trace, encoding="utf-8") as f:
      manifest["_trace"] = json.load(f)
  return seconds, manifest


def steps(trace):
  """{step: wall seconds} of one traced run: the named steps, the Beam bundles summed, the rest of the process."""
  out = {}
  for name, _, wall, _ in trace["spans"]:
    key = "Beam bundles (all stages)" if name.startswith("bundle ") else name
    out[key] = out.get(key, 0.0) + wall
  named = sum(v for k, v in out.items() if not k.startswith("  "))
  out["rest (imports, Beam's set-up, exit)"] = trace["total"] - named
  out["process (traced)"], out["process CPU"] = trace["total"], trace["cpu"]
  return out


_STEP_ORDER = ["option checks (resolve)", "graph construction", "Beam bundles (all stages)",
               "  of which the commit step (commit_run)", "  of which the store apply + verify",
               "rest (imports, Beam's set-up, exit)", "process (traced)", "process CPU"]


def print_steps(traces):
  for kind, runs in traces.items():
    if not runs:
      continue
    each = [steps(t) for t in runs]
    print(f"steps of v2 {kind} store (mean of {len(each)}):")
    for name in sorted(each[0], key=_STEP_ORDER.index):
      print(f"  {name:<40} {sum(e.get(name, 0.0) for e in each) / len(each):6.2f} s")


def table_ids(url):
  import psycopg  # pylint: disable=import-outside-toplevel
  with psycopg.connect(url) as conn:
    rows = conn.execute(f"SELECT id FROM {TABLE}").fetchall()
  return [r[0] for r in rows]


def keep_v1(url):
  """A copy of the table and its snapshot marker as v1 left them, so that every `with` run syncs from v1."""
  import psycopg  # pylint: disable=import-outside-toplevel
  with psycopg.connect(url) as conn:
    conn.execute(f"CREATE TABLE v1_copy AS TABLE {TABLE}")
    conn.execute("CREATE TABLE v1_marker AS SELECT * FROM bert_embed_collections")


def restore_v1(url):
  import psycopg  # pylint: disable=import-outside-toplevel
  with psycopg.connect(url) as conn:
    conn.execute(f"TRUNCATE {TABLE}")
    conn.execute(f"INSERT INTO {TABLE} SELECT * FROM v1_copy")
    conn.execute("TRUNCATE bert_embed_collections")
    conn.execute("INSERT INTO bert_embed_collections SELECT * FROM v1_marker")


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--num", type=int, default=20000)
  parser.add_argument("--seq-length", type=int, default=128)
  parser.add_argument("--pairs", type=int, default=3, help="with/without pairs of v2 runs (order alternates)")
  parser.add_argument("--trace", action="store_true", help="time the steps of each v2 run (trace_cli.py)")
  args = parser.parse_args()
  work = pathlib.Path(tempfile.mkdtemp(prefix="bench-store-sync-", dir="/tmp"))
  work.chmod(0o755)  # the server's own user (as root: pgserver) must reach its folder
  try:
    v1, v2 = versions(args.num)
    write_jsonl(work / "v1.jsonl", v1)
    write_jsonl(work / "v2.jsonl", v2)
    (work / "pg").mkdir()
    url, password, stop = postgres_server(work / "pg")
    os.environ["PGPASSWORD"] = password
    store = ["--vector-store", "postgres", "--vector-store-url", url, "--vector-collection", TABLE]
    try:
      print(f"corpus: v1 {len(v1)} records, v2 {len(v2)} (seq length {args.seq_length}, --model default)", flush=True)
      seconds, manifest = run(args, work, work / "v1.jsonl", work / "v1" / "emb", *store)
      print(f"v1 with store: {seconds:.1f} s, {manifest['counts'].get('written')} written, "
            f"store_upserted {manifest['counts'].get('store_upserted')}", flush=True)
      keep_v1(url)
      previous = ["--previous", str(work / "v1" / "emb")]
      times, traces = {"with": [], "without": []}, {"with": [], "without": []}
      for pair in range(args.pairs):
        order = ("with", "without") if pair % 2 == 0 else ("without", "with")
        for kind in order:
          output = work / f"v2-{kind}-{pair}" / "emb"
          extra = previous + (store if kind == "with" else [])
          if kind == "with":
            restore_v1(url)
          seconds, manifest = run(args, work, work / "v2.jsonl", output, *extra)
          times[kind].append(seconds)
          if "_trace" in manifest:
            traces[kind].append(manifest["_trace"])
          c = manifest["counts"]
          line = (f"v2 {kind:<7} store: {seconds:6.1f} s  new {c.get('new')} changed {c.get('changed')} "
                  f"unchanged {c.get('unchanged')} deleted {c.get('deleted')} written {c.get('written')}")
          if kind == "with":
            ids = table_ids(url)
            line += (f"  store_upserted {c.get('store_upserted')} store_deleted {c.get('store_deleted')}  "
                     f"table rows {len(ids)}, ids equal v2's: {sorted(ids) == sorted(v2)}, mode "
                     f"{manifest['vector_store']['mode']}, in_sync {manifest['vector_store']['in_sync']}, "
                     f"verify {json.dumps(manifest['vector_store']['verify'])}")
          print(line, flush=True)
      with_s, without_s = sum(times["with"]) / args.pairs, sum(times["without"]) / args.pairs
      print(f"mean v2 with store {with_s:.1f} s, without {without_s:.1f} s, ratio {with_s / without_s:.3f}")
      print_steps(traces)
    finally:
      stop()
  finally:
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
  main()
