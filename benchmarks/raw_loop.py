"""The raw encoder loop (no Beam), run by bench_throughput.py in a subprocess of its own (so its peak RSS is its own).

Tokenizes the texts once with the preprocessor SavedModel (timed: tokenizer throughput), then encodes the same
packed records with the project's own `encode_batch` in several variants, interleaved in rounds so that every
variant sees the same machine load:

  fixed128-fp32 / fixed128-bf16   batches of 32 padded to 128 (the classic setting), on a subset
  bucketed-fp32 / bucketed-bf16   runtime/buckets.py buckets and token budget, on the subset and on all texts

Prints one JSON object (rates, cosine of bf16 vs fp32, max |difference| of bucketed vs fixed-128 fp32 vectors).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import time

import numpy as np


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument("--model", required=True, help="export root (preprocessor/ + encoder/)")
  parser.add_argument("--texts", required=True)
  parser.add_argument("--subset", type=int, default=256, help="texts for the fixed-128 variants")
  parser.add_argument("--rounds", type=int, default=4)
  parser.add_argument("--max-batch-tokens", type=int, default=4096)
  parser.add_argument("--batch-size", type=int, default=64)
  parser.add_argument("--seq-length", type=int, default=128)
  parser.add_argument("--vectors", default=None, help="save bucketed fp32 / bf16 pooled vectors here (.npz)")
  args = parser.parse_args()

  from runtime import buckets  # pylint: disable=import-outside-toplevel
  from runtime.encoding import encode_batch  # pylint: disable=import-outside-toplevel
  from runtime.tokenizer import Tokenizer  # pylint: disable=import-outside-toplevel
  from transforms.embedding import batching  # pylint: disable=import-outside-toplevel
  from runtime import precision, similarity  # pylint: disable=import-outside-toplevel
  from runtime.pooling import PoolingSpec  # pylint: disable=import-outside-toplevel
  from formats.records import TextRecord  # pylint: disable=import-outside-toplevel
  from runtime.saved_models import load_encoder, load_preprocessor  # pylint: disable=import-outside-toplevel

  with open(args.texts, encoding="utf-8") as f:
    texts = [line.rstrip("\n") for line in f if line.strip()]
  records = [TextRecord(id=str(i), text=t) for i, t in enumerate(texts)]
  pre = load_preprocessor(os.path.join(args.model, "preprocessor"))
  model = load_encoder(os.path.join(args.model, "encoder"))
  tokenizer = Tokenizer(pre.obj, args.seq_length)
  tokenizer.pack(records[:8])  # trace
  start = time.perf_counter()
  packed = []
  for i in range(0, len(records), 256):
    packed += tokenizer.pack(records[i:i + 256])
  tokenize_seconds = time.perf_counter() - start

  probe = precision.probe_inputs(pre.obj, args.seq_length)
  runners = {"fp32": precision.resolve(model.obj, model.device, "fp32", probe),
             "bf16": precision.resolve(model.obj, model.device, "bf16", probe)}
  spec = PoolingSpec("pooled")
  fixed = buckets.make_spec(args.seq_length, (args.seq_length,), 32 * args.seq_length, 32)
  bucketed = buckets.make_spec(args.seq_length, None, args.max_batch_tokens, args.batch_size)
  subset = packed[:args.subset]
  variants = {
      "fixed128-fp32": (fixed, "fp32", subset),
      "fixed128-bf16": (fixed, "bf16", subset),
      "bucketed-fp32-subset": (bucketed, "fp32", subset),
      "bucketed-bf16-subset": (bucketed, "bf16", subset),
      "bucketed-fp32": (bucketed, "fp32", packed),
      "bucketed-bf16": (bucketed, "bf16", packed),
  }
  plans = {}
  for name, (spec_b, prec, elements) in variants.items():
    batches = batching.bucket_batches(elements, spec_b)
    # Warm up every shape once (oneDNN primitives, grappler) outside the timed rounds.
    for length in sorted({spec_b.bucket(max(e.num_tokens for e in b)) for b in batches}):
      sample = next(b for b in batches if spec_b.bucket(max(e.num_tokens for e in b)) == length)
      encode_batch(model, sample, spec, spec_b, runners[prec])
    plans[name] = {"batches": batches, "buckets": spec_b, "precision": prec, "seconds": 0.0, "cpu": 0.0,
                   "results": {}, "precisions": set()}
  for r in range(args.rounds):
    for name, plan in plans.items():
      mine = plan["batches"][r::args.rounds]
      wall, cpu = time.perf_counter(), time.process_time()
      for batch in mine:
        out = encode_batch(model, batch, spec, plan["buckets"], runners[plan["precision"]])
        for element, encoded in zip(batch, out):
          plan["results"][element.record.id] = encoded.embedding
          plan["precisions"].add(encoded.precision)
      plan["seconds"] += time.perf_counter() - wall
      plan["cpu"] += time.process_time() - cpu

  report = {"texts": len(texts), "subset": len(subset), "tokenize_seconds": tokenize_seconds,
            "tokenize_records_per_s": len(texts) / tokenize_seconds,
            "mean_packed_tokens": float(np.mean([e.num_tokens for e in packed])),
            "mean_wordpieces": float(np.mean([e.num_tokens - 2 for e in packed])),
            "precision_report": runners["bf16"].report, "variants": {}}
  for name, plan in plans.items():
    ids = list(plan["results"])
    tokens = sum(e.num_tokens for b in plan["batches"] for e in b)
    padded = sum(len(b) * plan["buckets"].bucket(max(e.num_tokens for e in b)) for b in plan["batches"])
    report["variants"][name] = {
        "records": len(ids), "tokens": tokens, "padded_tokens": padded, "seconds": plan["seconds"],
        "cpu_seconds": plan["cpu"], "records_per_s": len(ids) / plan["seconds"],
        "tokens_per_s": tokens / plan["seconds"], "batches": len(plan["batches"]),
        "precisions": sorted(plan["precisions"])}

  def vectors(name, ids):
    return np.stack([plans[name]["results"][i] for i in ids])

  sub_ids = [e.record.id for e in subset]
  all_ids = [e.record.id for e in packed]
  cos = similarity.cosine(vectors("bucketed-bf16", all_ids), vectors("bucketed-fp32", all_ids))
  report["bf16_vs_fp32_cosine"] = {"min": float(cos.min()), "mean": float(cos.mean())}
  report["bucketed_vs_fixed128_fp32_max_abs_diff"] = float(
      np.abs(vectors("bucketed-fp32-subset", sub_ids) - vectors("fixed128-fp32", sub_ids)).max())
  report["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
  if args.vectors:
    np.savez(args.vectors, ids=np.array(all_ids), fp32=vectors("bucketed-fp32", all_ids),
             bf16=vectors("bucketed-bf16", all_ids))
  print("RESULT " + json.dumps(report))


if __name__ == "__main__":
  main()
