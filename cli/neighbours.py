"""A sanity check a person can judge: the nearest neighbour of a few records of a finished Parquet output."""
from __future__ import annotations

import numpy as np

from runtime.similarity import cosine


def load_parquet_output(files: list[str]):
  """(ids, texts or None, float32 [N, H]) from the output Parquet files; packed sign bits (--output-dtype binary)
  as +1/-1 per bit, int8 codes as their values."""
  import pyarrow.parquet as pq  # pylint: disable=import-outside-toplevel
  from apache_beam.io.filesystems import FileSystems  # pylint: disable=import-outside-toplevel
  ids, texts, vectors = [], [], []
  for path in files:
    with FileSystems.open(path) as f:
      table = pq.read_table(f)
    ids += table.column("id").to_pylist()
    if "text" in table.column_names:
      texts += table.column("text").to_pylist()
    column = table.column("embedding")
    rows = [np.asarray(v) for v in column.to_pylist()]
    if str(column.type.value_type) == "uint8":  # binary: packed sign bits
      rows = [np.unpackbits(np.asarray(v, dtype=np.uint8)).astype(np.float32) * 2 - 1 for v in rows]
    vectors += rows
  return ids, (texts or None), np.asarray(vectors, dtype=np.float32).reshape(len(ids), -1)


def nearest_neighbours(vectors: np.ndarray, queries: list[int]) -> list[tuple[int, float]]:
  """For each query row, the most cosine-similar other row and its similarity."""
  out = []
  for q in queries:
    sims = cosine(vectors, vectors[q])
    sims[q] = -np.inf
    best = int(np.argmax(sims))
    out.append((best, float(sims[best])))
  return out


def report(files: list[str], how_many: int) -> str:
  ids, texts, vectors = load_parquet_output(files)
  if len(ids) < 2:
    return "(fewer than two records: no neighbours to show)"
  order = np.argsort(ids)
  queries = [int(order[i]) for i in np.linspace(0, len(ids) - 1, num=min(how_many, len(ids)), dtype=int)]
  lines = ["nearest neighbours (cosine):"]
  for q, (n, sim) in zip(queries, nearest_neighbours(vectors, queries)):
    lines.append(f"  {texts[q] if texts else ids[q]}")
    lines.append(f"    -> {sim:.3f}  {texts[n] if texts else ids[n]}")
  return "\n".join(lines)
