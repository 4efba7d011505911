"""How far a model or option change moved the vectors: previous vectors of a sample against the new ones.

When the embedding fingerprint changed, SplitByPrevious (transforms/incremental.py) samples previous rows
deterministically (the smallest SHA-256 of the id, `sample_key`), and `DriftCheck` compares their vectors with the
newly encoded vectors of the same, unchanged records: the cosine tells how far the vectors moved. The summary goes
into the manifest's `drift` field.
"""
from __future__ import annotations

import hashlib
from typing import Optional

import apache_beam as beam
import numpy as np

from formats.records import EmbeddingRecord
from runtime.similarity import cosine


def sample_key(record_id: str) -> str:
  """The drift sample takes the previous rows with the smallest key: deterministic, spread over the corpus."""
  return hashlib.sha256(record_id.encode("utf-8")).hexdigest()


def _sample_lookup(sample: list) -> dict:
  return {record_id: (sha, vector) for _, record_id, sha, vector in sample}


def _compare_sampled(rec: EmbeddingRecord, lookup: dict):
  old = lookup.get(rec.id)
  if old is not None and old[0] == rec.text_sha256 and rec.embedding is not None:
    before, after = np.asarray(old[1]), np.asarray(rec.embedding)
    yield rec.id, float(cosine(before, after)) if before.shape == after.shape else float("nan")


def summarize_drift(pairs: list, requested: int) -> dict:
  """The manifest's `drift`: cosine statistics over the sampled (id, cosine) pairs, plus the 5 lowest."""
  pairs = sorted(pairs, key=lambda p: (p[1], p[0]))
  values = np.array([c for _, c in pairs], dtype=np.float64)
  summary = {"requested": requested, "sample_size": len(pairs)}
  if len(pairs):
    summary.update({
        "mean_cosine": round(float(values.mean()), 6), "min_cosine": round(float(values.min()), 6),
        "median_cosine": round(float(np.median(values)), 6), "max_cosine": round(float(values.max()), 6),
        "lowest": [{"id": i, "cosine": round(float(c), 6)} for i, c in pairs[:5]]})
  return summary


class DriftCheck(beam.PTransform):
  """New EmbeddingRecords -> one dict comparing them with the sampled previous vectors (see summarize_drift).

  Only records whose text is unchanged are compared. With `sample` None the output is empty (no drift check).
  """

  def __init__(self, sample: Optional[beam.PCollection], requested: int = 0):
    super().__init__()
    self._sample = sample
    self._requested = requested

  def expand(self, embeddings):
    if self._sample is None:
      return embeddings.pipeline | "NoDriftCheck" >> beam.Create([])
    lookup = self._sample | "SampleById" >> beam.Map(_sample_lookup)
    return (embeddings
            | "CompareSampled" >> beam.FlatMap(_compare_sampled, beam.pvalue.AsSingleton(lookup))
            | "AllCosines" >> beam.combiners.ToList()
            | "Summarize" >> beam.Map(summarize_drift, self._requested))
