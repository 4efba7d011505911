"""Benchmark: embedding throughput of a BERT-base-shaped model, every comparison in one run.

    .venv/bin/python -m benchmarks.bench_throughput [--num 1500] [--subset 256] [--hf-python /work/hf-venv/bin/python]

Steps (each measured path runs in a process of its own, so that its peak RSS is its own):
  1. a corpus of real sentences from this machine (benchmarks/corpus.py) and a BERT-base model with random weights
     written both as an HF checkpoint and as a bert-embed export (benchmarks/bert_base.py);
  2. the raw encoder loop (benchmarks/raw_loop.py, no Beam): fixed-128 vs bucketed, fp32 vs bf16, interleaved;
  3. the full pipeline (`python -m cli run`: read text -> tokenize -> bucket -> encode -> Parquet + manifest) with
     --precision auto and fp32. Its records/s is marginal: (N - n) / (T(N) - T(n)) with a run on n = --small texts,
     so the launcher's fixed costs (imports, loading and fingerprinting the models, the worker's model load and the
     auto probe) are not counted; they are reported separately;
  4. the Hugging Face PyTorch loop (benchmarks/hf_loop.py, sorted, padded to batch max, batch 32, bf16 autocast and
     fp32) on the same texts and weights, in the separate environment given by --hf-python, when it exists; the bf16
     loop runs before and after the pipeline and the faster of the two counts.
Prints a table, the target ratios, and writes everything to <work>/throughput.json.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from benchmarks import bert_base, corpus  # noqa: E402  pylint: disable=wrong-import-position


def _load() -> str:
  with open("/proc/loadavg", encoding="utf-8") as f:
    return " ".join(f.read().split()[:3])


def _run(cmd: list[str], log: str) -> tuple[float, float, str]:
  """Runs `cmd`; returns (wall seconds, peak RSS MB of that process, stdout). Raises on failure."""
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=ROOT)
  start = time.perf_counter()
  with open(log, "w", encoding="utf-8") as err:
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=err, text=True)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
  wall = time.perf_counter() - start
  if proc.returncode != 0:
    raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}); see {log}")
  return wall, usage.ru_maxrss / 1024, out


def _pipeline(texts: str, export: str, out_dir: str, precision: str, log: str) -> dict:
  prefix = os.path.join(out_dir, "emb")
  wall, rss, _ = _run([sys.executable, "-m", "cli", "run", "--model", export, "--input", texts, "--output", prefix,
                       "--seq-length", "128", "--precision", precision], log)
  with open(prefix + "-manifest.json", encoding="utf-8") as f:
    manifest = json.load(f)
  return {"seconds": wall, "peak_rss_mb": rss, "counts": manifest["counts"],
          "precision_used": manifest.get("precision_used"), "output_files": manifest["output_files"]}


def _row(name, records, seconds, tokens, rss, cpu=None, note=""):
  return {"path": name, "records": records, "records_per_s": records / seconds, "tokens_per_s": tokens / seconds,
          "peak_rss_mb": rss, "cpu_s_per_record": None if cpu is None else cpu / records, "note": note}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--num", type=int, default=1500, help="sentences in the corpus")
  parser.add_argument("--subset", type=int, default=256, help="sentences for the fixed-128 comparison")
  parser.add_argument("--small", type=int, default=32, help="sentences of the pipeline's fixed-cost run")
  parser.add_argument("--work", default="/tmp/bert-embed-bench")
  parser.add_argument("--hf-python", default="/work/hf-venv/bin/python")
  parser.add_argument("--pipeline-fp32", action="store_true", help="also run the pipeline in fp32")
  args = parser.parse_args()

  os.makedirs(args.work, exist_ok=True)
  loads = {"start": _load()}
  texts = corpus.build(args.num)
  corpus_file = os.path.join(args.work, "corpus.txt")
  small_file = os.path.join(args.work, "corpus-small.txt")
  with open(corpus_file, "w", encoding="utf-8") as f:
    f.write("".join(t + "\n" for t in texts))
  with open(small_file, "w", encoding="utf-8") as f:
    f.write("".join(t + "\n" for t in texts[:args.small]))
  model = bert_base.ensure(os.path.join(args.work, "bert_base"))
  print(f"corpus: {len(texts)} sentences; model: {model['export']}", flush=True)

  # 2. Raw encoder loop.
  vectors = os.path.join(args.work, "raw_vectors.npz")
  _, raw_rss, out = _run([sys.executable, "-m", "benchmarks.raw_loop", "--model", model["export"], "--texts",
                          corpus_file, "--subset", str(args.subset), "--vectors", vectors],
                         os.path.join(args.work, "raw_loop.log"))
  raw = json.loads(next(line for line in out.splitlines() if line.startswith("RESULT "))[len("RESULT "):])
  loads["after_raw"] = _load()
  print(f"raw loop done (load {loads['after_raw']})", flush=True)

  # 3 + 4, alternating so that the pipeline and the HF loop see similar load.
  runs = {}
  have_hf = os.path.exists(args.hf_python)
  # The HF bf16 loop runs twice, before and after the pipeline, and its better run counts (torch's OpenMP threads
  # slow down far more than TF's thread pool when other processes share the cores).
  steps = [("hf-bf16", None, True), ("pipeline-small", small_file, "auto"), ("pipeline-auto", corpus_file, "auto"),
           ("hf-bf16-again", None, True), ("hf-fp32", None, False)]
  if args.pipeline_fp32:
    steps += [("pipeline-small-fp32", small_file, "fp32"), ("pipeline-fp32", corpus_file, "fp32")]
  for name, texts_file, setting in steps:
    log = os.path.join(args.work, name + ".log")
    if name.startswith("pipeline"):
      out_dir = os.path.join(args.work, name)
      for old in glob.glob(os.path.join(out_dir, "*")):
        os.remove(old)
      runs[name] = _pipeline(texts_file, model["export"], out_dir, setting, log)
    elif have_hf:
      cmd = [args.hf_python, os.path.join(ROOT, "benchmarks", "hf_loop.py"), "--model", model["hf"], "--texts",
             corpus_file, "--vectors", os.path.join(args.work, name + ".npy")] + (["--bf16"] if setting else [])
      wall, rss, out = _run(cmd, log)
      runs[name] = dict(json.loads(out.strip().splitlines()[-1]), process_seconds=wall, peak_rss_mb=rss)
    loads["after_" + name] = _load()
    print(f"{name} done (load {loads['after_' + name]})", flush=True)

  # Table.
  rows = []
  v = raw["variants"]
  for key, label in (("fixed128-fp32", "raw loop, fixed 128, fp32"), ("fixed128-bf16", "raw loop, fixed 128, bf16"),
                     ("bucketed-fp32-subset", "raw loop, bucketed, fp32"),
                     ("bucketed-bf16-subset", "raw loop, bucketed, bf16"),
                     ("bucketed-fp32", "raw loop, bucketed, fp32"), ("bucketed-bf16", "raw loop, bucketed, bf16")):
    rows.append(_row(label, v[key]["records"], v[key]["seconds"], v[key]["tokens"], raw_rss, v[key]["cpu_seconds"],
                     "subset" if v[key]["records"] == raw["subset"] and raw["subset"] < raw["texts"] else "all"))
  fixed_costs = {}
  for full, small, label in (("pipeline-auto", "pipeline-small", "full pipeline, --precision auto"),
                             ("pipeline-fp32", "pipeline-small-fp32", "full pipeline, --precision fp32")):
    if full not in runs:
      continue
    n_full, n_small = runs[full]["counts"]["written"], runs[small]["counts"]["written"]
    t_full, t_small = runs[full]["seconds"], runs[small]["seconds"]
    tokens = runs[full]["counts"]["tokens"] - runs[small]["counts"]["tokens"]
    used = ",".join(sorted(runs[full]["precision_used"] or {}))
    rows.append(_row(f"{label} ({used})", n_full - n_small, t_full - t_small, tokens,
                     max(runs[full]["peak_rss_mb"], runs[small]["peak_rss_mb"]), note="all, marginal"))
    fixed_costs[full] = t_small
  if "hf-bf16-again" in runs:
    runs["hf-bf16-first"] = runs["hf-bf16"]
    runs["hf-bf16"] = min(runs["hf-bf16-first"], runs["hf-bf16-again"], key=lambda r: r["seconds"])
  for name, label in (("hf-bf16", "HF PyTorch loop, bf16 autocast (better of 2)"),
                      ("hf-fp32", "HF PyTorch loop, fp32")):
    if name in runs:
      r = runs[name]
      rows.append(_row(label, r["records"], r["seconds"], r["tokens"], r["peak_rss_mb"], note="all"))
  rows.append(_row("tokenizer alone (preprocessor SavedModel)", raw["texts"], raw["tokenize_seconds"],
                   raw["mean_packed_tokens"] * raw["texts"], raw_rss, note="all"))

  def rate(label_prefix, note=None):
    for r in rows:
      if r["path"].startswith(label_prefix) and (note is None or r["note"] == note):
        return r["records_per_s"]
    return None

  ratios = {}

  def ratio(name, a, b, target):
    if a and b:
      ratios[name] = {"ratio": round(a / b, 3), "target": target, "met": a / b >= target}

  ratio("full pipeline auto / raw loop bucketed bf16", rate("full pipeline, --precision auto"),
        rate("raw loop, bucketed, bf16", "all"), 0.9)
  ratio("full pipeline fp32 / raw loop bucketed fp32", rate("full pipeline, --precision fp32"),
        rate("raw loop, bucketed, fp32", "all"), 0.9)
  ratio("bucketed / fixed-128 (fp32, same texts)", rate("raw loop, bucketed, fp32", "subset"),
        rate("raw loop, fixed 128, fp32"), 2.5)
  ratio("bucketed / fixed-128 (bf16, same texts)", rate("raw loop, bucketed, bf16", "subset"),
        rate("raw loop, fixed 128, bf16"), 2.5)
  ratio("bf16 / fp32 (fixed 128)", rate("raw loop, fixed 128, bf16"), rate("raw loop, fixed 128, fp32"), 2.0)
  ratio("bf16 / fp32 (bucketed, all)", rate("raw loop, bucketed, bf16", "all"),
        rate("raw loop, bucketed, fp32", "all"), 2.0)
  ratio("full pipeline auto / HF PyTorch bf16 loop", rate("full pipeline, --precision auto"),
        rate("HF PyTorch loop, bf16"), 1.0)

  checks = {"bf16_vs_fp32_cosine": raw["bf16_vs_fp32_cosine"],
            "bucketed_vs_fixed128_fp32_max_abs_diff": raw["bucketed_vs_fixed128_fp32_max_abs_diff"],
            "precision_report": raw["precision_report"], "pipeline_fixed_seconds": fixed_costs,
            "peak_rss_mb_max": max(r["peak_rss_mb"] for r in rows)}
  if "hf-fp32" in runs:
    data = np.load(vectors)
    hf = np.load(os.path.join(args.work, "hf-fp32.npy"))
    from runtime.similarity import cosine  # pylint: disable=import-outside-toplevel
    checks["hf_fp32_vs_tf_fp32_min_cosine"] = float(cosine(hf[data["ids"].astype(int)], data["fp32"]).min())
  corpus_info = {"sentences": raw["texts"], "mean_wordpieces": raw["mean_wordpieces"],
                 "mean_packed_tokens": raw["mean_packed_tokens"], "subset": raw["subset"]}
  result = {"corpus": corpus_info, "rows": rows, "ratios": ratios, "checks": checks, "load": loads, "runs": runs}
  with open(os.path.join(args.work, "throughput.json"), "w", encoding="utf-8") as f:
    json.dump(result, f, indent=2, default=str)

  print(f"\ncorpus: {corpus_info}")
  print(f"\n| path | texts | records/s | tokens/s | CPU s/record | peak RSS MB |")
  print("| --- | --- | ---: | ---: | ---: | ---: |")
  for r in rows:
    cpu = "" if r["cpu_s_per_record"] is None else f"{r['cpu_s_per_record']:.3f}"
    print(f"| {r['path']} | {r['note']} ({r['records']}) | {r['records_per_s']:.1f} | {r['tokens_per_s']:.0f} | "
          f"{cpu} | {r['peak_rss_mb']:.0f} |")
  print("\n| ratio | measured | target | met |")
  print("| --- | ---: | ---: | --- |")
  for name, r in ratios.items():
    print(f"| {name} | {r['ratio']:.2f}x | {r['target']}x | {'yes' if r['met'] else 'no'} |")
  print(f"\nchecks: {json.dumps(checks)}")
  print(f"load averages (1/5/15 min): {loads}")


if __name__ == "__main__":
  main()
