"""The loop a user would write with Hugging Face transformers on PyTorch; run by bench_throughput.py in its own venv.

Sorted by token length, each batch padded to its longest member, `torch.inference_mode()`, and (with --bf16)
`torch.autocast("cpu", dtype=torch.bfloat16)`. Prints one JSON line: records/s, tokens/s, seconds, and writes the
pooled vectors (in corpus order) to --vectors for a cosine check against the TF encoder on the same weights.

This file must not import anything from the project: it runs in a separate environment that has torch and the
project does not depend on it.
"""
import argparse
import json
import os
import time

import numpy as np


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument("--model", required=True, help="HF BertModel directory (config.json, model.safetensors)")
  parser.add_argument("--texts", required=True, help="one text per line")
  parser.add_argument("--batch-size", type=int, default=32)
  parser.add_argument("--max-length", type=int, default=128)
  parser.add_argument("--bf16", action="store_true")
  parser.add_argument("--vectors", default=None, help="where to save the pooled vectors (.npy)")
  args = parser.parse_args()

  import torch  # pylint: disable=import-outside-toplevel
  from transformers import BertModel, BertTokenizerFast  # pylint: disable=import-outside-toplevel

  with open(args.texts, encoding="utf-8") as f:
    texts = [line.rstrip("\n") for line in f if line.strip()]
  tokenizer = BertTokenizerFast(os.path.join(args.model, "vocab.txt"), do_lower_case=True)
  model = BertModel.from_pretrained(args.model, attn_implementation="sdpa").eval()

  autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bf16)
  with torch.inference_mode(), autocast:  # warm-up (oneDNN kernels, autocast weight casts), not timed
    for n in (8, 32, args.max_length):
      model(**tokenizer([" ".join(["word"] * n)] * args.batch_size, truncation=True, max_length=args.max_length,
                        return_tensors="pt"))
  start = time.perf_counter()
  lengths = [len(ids) for ids in tokenizer(texts, truncation=True, max_length=args.max_length)["input_ids"]]
  order = np.argsort(lengths, kind="stable")
  pooled = np.zeros((len(texts), model.config.hidden_size), np.float32)
  with torch.inference_mode(), autocast:
    for i in range(0, len(texts), args.batch_size):
      idx = order[i:i + args.batch_size]
      batch = tokenizer([texts[j] for j in idx], padding="longest", truncation=True, max_length=args.max_length,
                        return_tensors="pt")
      out = model(**batch)
      pooled[idx] = out.pooler_output.float().numpy()
  seconds = time.perf_counter() - start
  if args.vectors:
    np.save(args.vectors, pooled)
  print(json.dumps({"records": len(texts), "tokens": int(sum(lengths)), "seconds": seconds,
                    "records_per_s": len(texts) / seconds, "tokens_per_s": sum(lengths) / seconds,
                    "torch": torch.__version__, "threads": torch.get_num_threads()}))


if __name__ == "__main__":
  main()
