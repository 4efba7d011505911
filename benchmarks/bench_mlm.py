"""Benchmark: MLM scoring throughput, batched (`runtime.mlm_scoring.score_records`) vs one masked copy per `.mlm` call.

Exports a random BERT (BERT-mini shape by default) with a vocab built from the sample corpus's words, padded with
unused tokens to `--vocab-size` so the MLM head costs what a real vocab costs, packs the sample corpus, and prints
scored tokens/s of three paths on the same records:

  batched      all records' copies pooled and cut into `--max-tokens` batches (the pipeline's path);
  per-record   `score_records` on one record at a time (no cross-record batching);
  one-copy     one `.mlm` call per masked copy, at the record's unpadded length (on `--naive-records` records).

Usage: .venv/bin/python benchmarks/bench_mlm.py [--records 420] [--layers 4 --hidden 256] [--work-dir DIR]
"""
from __future__ import annotations

import argparse
import collections
import glob
import json
import os
import re
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402  pylint: disable=wrong-import-position

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def _corpus(limit: int) -> list[str]:
  lines = []
  for path in sorted(glob.glob(os.path.join(ROOT, "sample_corpus", "*.txt"))):
    with open(path, encoding="utf-8") as f:
      lines += [line.strip() for line in f if line.strip()]
  return lines[:limit]


def _vocab(texts: list[str], size: int) -> list[str]:
  """Specials, characters and their "##" forms, the corpus's frequent words and suffixes, then [unusedN]."""
  chars = sorted({c for t in texts for c in t.lower() if not c.isspace()})
  words = collections.Counter(w for t in texts for w in re.findall(r"[a-z0-9]+", t.lower()))
  frequent = [w for w, _ in words.most_common(size // 4) if len(w) > 1]
  suffixes = ["##" + s for s in ("s", "ed", "ing", "er", "ly", "es", "ion", "al", "ize")]
  tokens = list(dict.fromkeys(SPECIALS + chars + ["##" + c for c in chars] + suffixes + frequent))
  tokens += [f"[unused{i}]" for i in range(max(0, size - len(tokens)))]
  return tokens


def _export(work: str, args) -> str:
  from modeling import export  # pylint: disable=import-outside-toplevel
  out = os.path.join(work, f"bert_L{args.layers}_H{args.hidden}_V{args.vocab_size}_S{args.seq_length}")
  if os.path.exists(os.path.join(out, "encoder", "saved_model.pb")):
    return out
  vocab_file = os.path.join(work, "vocab.txt")
  with open(vocab_file, "w", encoding="utf-8") as f:
    f.write("".join(t + "\n" for t in _vocab(_corpus(10 ** 6), args.vocab_size)))
  config_file = os.path.join(work, "config.json")
  with open(config_file, "w", encoding="utf-8") as f:
    json.dump({"vocab_size": args.vocab_size, "hidden_size": args.hidden, "num_hidden_layers": args.layers,
               "num_attention_heads": max(1, args.hidden // 64), "intermediate_size": 4 * args.hidden,
               "hidden_act": "gelu", "max_position_embeddings": 512, "type_vocab_size": 2}, f)
  export.export_model(f"random:{config_file}", out, vocab=vocab_file, seq_length=args.seq_length, seed=0)
  return out


def _one_copy_per_call(enc, inputs, special) -> tuple[list[float], int]:
  """PLLs with one `.mlm` call per masked copy, the copy cut to the record's length."""
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  plls, scored = [], 0
  for e in inputs:
    n = e.num_tokens
    total = 0.0
    for i in range(1, n):
      if e.input_word_ids[i] == special["end_of_segment_id"]:
        continue
      ids = e.input_word_ids[:n].copy()
      ids[i] = special["mask_id"]
      out = enc.mlm({"input_word_ids": tf.constant(ids[None]), "input_mask": tf.constant(e.input_mask[None, :n]),
                     "input_type_ids": tf.constant(e.input_type_ids[None, :n]),
                     "masked_lm_positions": tf.constant([[i]], tf.int32)})
      logits = out["mlm_logits"][0, 0]
      total += float(logits[int(e.input_word_ids[i])] - tf.reduce_logsumexp(logits))
      scored += 1
    plls.append(total)
  return plls, scored


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--records", type=int, default=420)
  parser.add_argument("--naive-records", type=int, default=40)
  parser.add_argument("--layers", type=int, default=4)
  parser.add_argument("--hidden", type=int, default=256)
  parser.add_argument("--vocab-size", type=int, default=30522)
  parser.add_argument("--seq-length", type=int, default=128)
  parser.add_argument("--max-tokens", type=int, default=8192)
  parser.add_argument("--work-dir", default=os.path.join(tempfile.gettempdir(), "bert_embed_bench_mlm"))
  args = parser.parse_args()

  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  from runtime import mlm_scoring, mlm_vocab  # pylint: disable=import-outside-toplevel
  from runtime.tokenizer import Tokenizer  # pylint: disable=import-outside-toplevel
  from formats.records import TextRecord  # pylint: disable=import-outside-toplevel
  from runtime.saved_models import load_saved_model  # pylint: disable=import-outside-toplevel
  tf.config.threading.set_inter_op_parallelism_threads(1)

  os.makedirs(args.work_dir, exist_ok=True)
  root = _export(args.work_dir, args)
  pre = load_saved_model(os.path.join(root, "preprocessor"))
  enc = load_saved_model(os.path.join(root, "encoder"))
  special = mlm_vocab.load_special_tokens(pre)
  texts = _corpus(args.records)
  inputs = Tokenizer(pre, args.seq_length).pack([TextRecord(str(i), t) for i, t in enumerate(texts)])
  naive = inputs[:args.naive_records]
  print(f"model: random BERT L={args.layers} H={args.hidden} V={args.vocab_size}; {len(inputs)} records, "
        f"{sum(e.num_tokens for e in inputs)} packed tokens, mean {np.mean([e.num_tokens for e in inputs]):.1f}; "
        f"tf {tf.__version__}, {os.cpu_count()} CPUs")

  mlm_scoring.score_records(enc, inputs[:4], special, max_tokens=args.max_tokens)  # warm-up
  _one_copy_per_call(enc, inputs[:1], special)

  start = time.perf_counter()
  batched = mlm_scoring.score_records(enc, inputs, special, max_tokens=args.max_tokens)
  t_batched = time.perf_counter() - start
  start = time.perf_counter()
  per_record = [mlm_scoring.score_records(enc, [e], special, max_tokens=args.max_tokens)[0] for e in naive]
  t_record = time.perf_counter() - start
  start = time.perf_counter()
  one_copy, one_copy_tokens = _one_copy_per_call(enc, naive, special)
  t_one = time.perf_counter() - start

  agree = np.max(np.abs(np.array([s.pll for s in batched[:len(naive)]]) - one_copy) / np.abs(one_copy))
  rate_batched = sum(s.scored_tokens for s in batched) / t_batched
  rate_record = sum(s.scored_tokens for s in per_record) / t_record
  rate_one = one_copy_tokens / t_one
  print(f"batched (max_tokens={args.max_tokens}): {rate_batched:9.1f} scored tokens/s "
        f"({sum(s.scored_tokens for s in batched)} tokens, {t_batched:.2f} s)")
  print(f"per-record batches:          {rate_record:9.1f} scored tokens/s ({len(naive)} records, {t_record:.2f} s)")
  print(f"one copy per .mlm call:      {rate_one:9.1f} scored tokens/s ({one_copy_tokens} tokens, {t_one:.2f} s)")
  print(f"speed-up batched / one-copy: {rate_batched / rate_one:.1f}x; batched / per-record: "
        f"{rate_batched / rate_record:.1f}x; max relative PLL difference {agree:.1e}")


if __name__ == "__main__":
  main()
