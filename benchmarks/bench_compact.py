"""Compact vector forms: bytes per vector and recall@10 against float32 nearest neighbours.

2,000 real English sentences (the first paragraphs of Python standard-library docstrings, benchmarks/corpus.py) are
embedded once in float32 with `--model default` (MiniLM, normalised mean pooling); every form is then made from
those vectors with the code the pipeline writes with (formats/compact.py) and written with the output column
table (Parquet, zstd as the sink writes it; TFRecord) to measure bytes per vector. Recall@10: each sentence is a
query against the other 1,999; the float32 cosine top 10 is the truth, each form ranks with its own measure:
float32/float16 (truncated: renormalised) cosine, int8 codes' dot product (both sides quantized) and float32 query
against the dequantized codes, binary Hamming distance.
usage: .venv/bin/python benchmarks/bench_compact.py [--num 2000]
"""
import argparse
import os
import pathlib
import platform
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

K = 10


def sentences(num):
  from benchmarks.corpus import _usable, stdlib_docstring_sentences  # pylint: disable=import-outside-toplevel
  picked = sorted({s for s in stdlib_docstring_sentences() if _usable(s)})
  if len(picked) < num:
    raise RuntimeError(f"only {len(picked)} docstring sentences (asked for {num})")
  return picked[:num]


def top_k(scores):
  """Indices of the K highest scores per row, the row itself excluded."""
  scores = scores.astype(np.float64, copy=True)
  np.fill_diagonal(scores, -np.inf)
  return np.argpartition(-scores, K, axis=1)[:, :K]


def recall(truth, found):
  return float(np.mean([len(set(t) & set(f)) / K for t, f in zip(truth, found)]))


def file_bytes(vectors, dtype, truncate_dim, output_format, tmp):
  """Bytes per row of a file holding only id (r00000..), num_tokens, truncated, text_sha256 and the embedding."""
  import pyarrow.parquet as pq  # pylint: disable=import-outside-toplevel
  from formats import columns as columns_lib  # pylint: disable=import-outside-toplevel
  from formats.columns import OutputColumns  # pylint: disable=import-outside-toplevel
  from formats.records import EmbeddingRecord  # pylint: disable=import-outside-toplevel
  columns = OutputColumns(dtype=dtype, truncate_dim=truncate_dim)
  dim = 384
  rows = [EmbeddingRecord(f"r{i:05d}", v, 12, False, "0" * 64) for i, v in enumerate(vectors)]
  path = os.path.join(tmp, f"{dtype}-{truncate_dim}.{output_format}")
  if output_format == "parquet":
    pq.write_table(columns_lib.records_to_table(rows, columns, dim), path, compression="zstd")
  else:
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    with tf.io.TFRecordWriter(path) as w:
      for example in columns_lib.records_to_examples(rows, columns, dim):
        w.write(example)
  return os.path.getsize(path) / len(rows)


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--num", type=int, default=2000)
  args = parser.parse_args()
  from formats import compact  # pylint: disable=import-outside-toplevel
  from pipeline.api import embed  # pylint: disable=import-outside-toplevel
  texts = sentences(args.num)
  start = time.perf_counter()
  full = embed(texts, "default", pooling="mean", normalize=True).astype(np.float32)
  print(f"embedded {len(texts)} sentences in {time.perf_counter() - start:.1f} s; dimension {full.shape[1]}")
  truth = top_k(full @ full.T)
  with tempfile.TemporaryDirectory() as tmp:
    print(f"CPU: {cpu_name()}; rows hold id, num_tokens, truncated, text_sha256 and the embedding")
    print("| form | dims | vector bytes (raw) | Parquet bytes/row | TFRecord bytes/row | recall@10 |")
    print("| --- | ---: | ---: | ---: | ---: | --- |")
    for dims in (None, 256, 128, 64):
      kept = compact.truncate(full, dims, normalize=True)
      n = kept.shape[1]
      forms = {"float32": compact.encode(kept, "float32"), "float16": compact.encode(kept, "float16")}
      ranges = compact.calibrate(kept)
      forms["int8"] = compact.encode(kept, "int8", ranges)
      forms["binary"] = compact.encode(kept, "binary")
      for dtype, stored in forms.items():
        if dtype in ("float32", "float16"):
          values = stored.astype(np.float32)
          found = {"cosine": top_k(values @ values.T)}
        elif dtype == "int8":
          codes = stored.astype(np.float32)
          found = {"codes' dot product": top_k(codes @ codes.T),
                   "float query vs dequantized": top_k(kept @ compact.dequantize_int8(stored, ranges).T)}
        else:
          bits = compact.unpack_bits(stored, n).astype(np.float32)
          hamming = bits @ (1 - bits).T + (1 - bits) @ bits.T
          found = {"Hamming": top_k(-hamming)}
        raw = stored.nbytes / len(stored)
        sizes = [file_bytes(stored, dtype, dims, fmt, tmp) for fmt in ("parquet", "tfrecord")]
        scores = ", ".join(f"{recall(truth, f):.3f} ({how})" for how, f in found.items())
        print(f"| {dtype} | {n} | {raw:.0f} | {sizes[0]:.1f} | {sizes[1]:.1f} | {scores} |")


def cpu_name():
  try:
    out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    return next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name"))
  except (OSError, subprocess.CalledProcessError, StopIteration):
    return platform.processor() or "unknown"


if __name__ == "__main__":
  main()
