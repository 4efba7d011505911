"""Turning the encoder's float32 vectors into the run's stored form (--truncate-dim, --output-dtype).

Truncation and renormalisation are per row. int8 needs each dimension's range before any row can be written, so
the ranges are a combine over all of the run's (truncated) vectors, the per-dimension minimum and maximum, read by
the quantizing step as a side input: the runner completes the combine, which holds one [2, dims] accumulator per
bundle, before that step starts, so the vectors are held (or materialised by the runner) once between the two.
Minimum and maximum rather than percentiles: they are exact and associative (one small accumulator, no sort of
N values per dimension), every value of the run then has its own code, and they are what sentence-transformers
calibrates with; an outlier widens its dimension's steps. Given fixed ranges (an incremental run carrying int8 rows
quantized with its previous output's ranges), no combine runs and the vectors are quantized with those (values
beyond them clipped), so that the carried and the new rows share one quantizer.

A row whose embedding is not `dim` finite floats is passed on unchanged, for ValidateEmbeddings to dead-letter it
with its reason; it takes no part in the calibration.
"""
from __future__ import annotations

from typing import Iterator, NamedTuple, Optional

import apache_beam as beam
import numpy as np

from formats import compact
from formats.column_checks import float_array_problem
from formats.records import EmbeddingRecord


class Calibration(NamedTuple):
  """The int8 ranges of a run and how many vectors they were computed on."""
  ranges: Optional[compact.Int8Ranges]
  vectors: int

  def to_json(self, source: str) -> Optional[dict]:
    if self.ranges is None:
      return None
    return {**self.ranges.to_json(), "vectors": self.vectors, "calibrated_on": source}


def _float_vector(rec: EmbeddingRecord, dim: int) -> Optional[np.ndarray]:
  """The row's embedding as float32 [dim], or None when it has none or it is not `dim` finite floats."""
  if not isinstance(rec, EmbeddingRecord) or rec.embedding is None:
    return None
  if float_array_problem("embedding", rec.embedding, (dim,)):
    return None
  return np.asarray(rec.embedding, dtype=np.float32)


class _MinMaxFn(beam.CombineFn):
  """Truncated vectors -> Calibration (per-dimension minimum and maximum)."""

  def create_accumulator(self):
    return Calibration(None, 0)

  def add_input(self, accumulator, vector):
    return Calibration(compact.merge_ranges(accumulator.ranges, compact.Int8Ranges(vector, vector)),
                       accumulator.vectors + 1)

  def merge_accumulators(self, accumulators):
    ranges, count = None, 0
    for acc in accumulators:
      ranges, count = compact.merge_ranges(ranges, acc.ranges), count + acc.vectors
    return Calibration(ranges, count)

  def extract_output(self, accumulator):
    return accumulator


class _EncodeFn(beam.DoFn):
  """Truncates (and renormalises) each row's vector and stores it in the form `dtype`."""

  def __init__(self, dim: int, dtype: str, truncate_dim: Optional[int], normalize: bool):
    super().__init__()
    self._dim, self._dtype, self._truncate_dim, self._normalize = dim, dtype, truncate_dim, normalize

  def process(self, rec: EmbeddingRecord, calibration: Optional[Calibration] = None) -> Iterator[EmbeddingRecord]:
    vector = _float_vector(rec, self._dim)
    if vector is None:
      yield rec
      return
    kept = compact.truncate(vector, self._truncate_dim, self._normalize)
    ranges = calibration.ranges if calibration is not None else None
    yield rec._replace(embedding=compact.encode(kept, self._dtype, ranges))


class CompactVectors(beam.PTransform):
  """EmbeddingRecords with float32 [dim] vectors -> the same rows with vectors in the stored form.

  `ranges`: int8 ranges to quantize with (None: calibrate on these rows). After the transform, `calibration` is a
  PCollection of one Calibration when it calibrated, else None.
  """

  def __init__(self, dim: int, dtype: str, truncate_dim: Optional[int], normalize: bool,
               ranges: Optional[compact.Int8Ranges] = None):
    super().__init__()
    compact.check_dtype(dtype)
    self._dim, self._dtype, self._truncate_dim, self._normalize = dim, dtype, truncate_dim, normalize
    self._ranges = ranges
    self.calibration = None

  def expand(self, rows):
    encode = _EncodeFn(self._dim, self._dtype, self._truncate_dim, self._normalize)
    if self._dtype != compact.INT8:
      return rows | "Encode" >> beam.ParDo(encode)
    if self._ranges is not None:
      return rows | "Encode" >> beam.ParDo(encode, Calibration(self._ranges, 0))
    dim, truncate_dim, normalize = self._dim, self._truncate_dim, self._normalize
    self.calibration = (rows
                        | "FloatVectors" >> beam.FlatMap(
                            lambda r: [] if (v := _float_vector(r, dim)) is None
                            else [compact.truncate(v, truncate_dim, normalize)])
                        | "Calibrate" >> beam.CombineGlobally(_MinMaxFn()))
    return rows | "Encode" >> beam.ParDo(encode, beam.pvalue.AsSingleton(self.calibration))
