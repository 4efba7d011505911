"""Incremental re-embedding: new TextRecords joined by id with the rows of a previous output.

Each input record is classified against the previous rows of its id:

  new        no previous row has its id                          -> encoded
  changed    previous rows have its id, none its text_sha256     -> encoded
  unchanged  a previous row has its id and text_sha256           -> that row is carried over (or, when
                                                                    `carry_over` is off, encoded again)
  deleted    a previous row whose id no longer occurs in the input -> dropped

The join is a CoGroupByKey on the id, so it scales with the runner's shuffle: no worker holds more than one id's
records and rows. Carried-over rows take their text from the input (same hash, same text) and keep their token
columns only with emit_tokens. Counters in the bert_embed namespace: records_new, records_changed,
records_unchanged, records_deleted, records_carried_over.

`DriftCheck` compares the vectors of a deterministic sample of previous rows (the smallest SHA-256 of the id) with
the newly encoded vectors of the same, unchanged records: the cosine tells how far a model or option change moved
the vectors.
"""
from __future__ import annotations

import hashlib
from typing import Iterable, NamedTuple, Optional, Sequence

import apache_beam as beam
import numpy as np
import pyarrow as pa

from transforms.records import EmbeddingRecord, TextRecord, text_sha256

NAMESPACE = "bert_embed"
KINDS = ("new", "changed", "unchanged", "deleted")
CARRIED = "carried"
_NEW, _OLD = "new", "old"


class IncrementalResult(NamedTuple):
  to_encode: beam.PCollection  # TextRecord: new and changed records (and unchanged ones without carry_over)
  carried: beam.PCollection  # EmbeddingRecord reused from the previous output
  counts: dict  # {kind: PCollection[int]} for every kind in KINDS, summed by the manifest step
  drift_sample: Optional[beam.PCollection]  # one list of (key, id, text_sha256, vector), or None


# --------------------------------------------------------------------------------------------
# Reading the previous output.


def _id_column(column) -> list[str]:
  return [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in column.to_pylist()]


def _vectors(column, dim: int) -> np.ndarray:
  """A list<float32> column of equal-length lists -> float32 [rows, dim]."""
  array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
  values = array.flatten().to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
  if values.size != len(array) * dim:
    raise ValueError(f"previous embeddings do not all have dimension {dim}")
  return values.reshape(len(array), dim)


def table_to_records(table: pa.Table, dim: int, with_vectors: bool = True,
                     with_tokens: bool = False) -> Iterable[EmbeddingRecord]:
  """Rows of a previous Parquet output -> EmbeddingRecords (text is never read: the input has it)."""
  n = table.num_rows
  ids = _id_column(table.column("id"))
  shas = table.column("text_sha256").to_pylist()
  vectors = _vectors(table.column("embedding"), dim) if with_vectors else None
  num_tokens = table.column("num_tokens").to_pylist() if with_vectors else [0] * n
  truncated = table.column("truncated").to_pylist() if with_vectors else [False] * n
  token_ids = table.column("token_ids").to_pylist() if with_tokens else None
  sequences = table.column("sequence_output").to_pylist() if with_tokens else None
  for i in range(n):
    yield EmbeddingRecord(
        id=ids[i],
        embedding=vectors[i].copy() if vectors is not None else None,
        num_tokens=int(num_tokens[i]),
        truncated=bool(truncated[i]),
        text_sha256=shas[i],
        token_ids=np.asarray(token_ids[i], dtype=np.int32) if with_tokens else None,
        sequence_output=(np.asarray(sequences[i], dtype=np.float32).reshape(-1, dim) if with_tokens else None))


def example_to_record(serialized: bytes, dim: int, with_tokens: bool = False) -> EmbeddingRecord:
  """One tf.Example of a previous TFRecord output -> an EmbeddingRecord."""
  from tensorflow.core.example import example_pb2  # pylint: disable=import-outside-toplevel
  features = example_pb2.Example.FromString(serialized).features.feature
  num_tokens = int(features["num_tokens"].int64_list.value[0])
  return EmbeddingRecord(
      id=features["id"].bytes_list.value[0].decode("utf-8"),
      embedding=np.asarray(features["embedding"].float_list.value, dtype=np.float32),
      num_tokens=num_tokens,
      truncated=bool(features["truncated"].int64_list.value[0]),
      text_sha256=features["text_sha256"].bytes_list.value[0].decode("utf-8"),
      token_ids=np.asarray(features["token_ids"].int64_list.value, dtype=np.int32) if with_tokens else None,
      sequence_output=(np.asarray(features["sequence_output"].float_list.value, dtype=np.float32).reshape(-1, dim)
                       if with_tokens else None))


class ReadPreviousEmbeddings(beam.PTransform):
  """The rows of a previous output's files (as listed by its manifest) as EmbeddingRecords.

  Args:
    files: the previous manifest's output_files.
    output_format: "parquet" or "tfrecord".
    dim: the embedding dimension.
    with_vectors: read vectors, token counts and flags (else only id and text_sha256, for Parquet).
    with_tokens: also read token_ids and sequence_output.
  """

  def __init__(self, files: Sequence[str], output_format: str, dim: int, *, with_vectors: bool = True,
               with_tokens: bool = False):
    super().__init__()
    if output_format not in ("parquet", "tfrecord"):
      raise ValueError(f"previous output format must be parquet or tfrecord, got {output_format!r}")
    self._files = list(files)
    self._format = output_format
    self._dim = dim
    self._with_vectors = with_vectors or with_tokens
    self._with_tokens = with_tokens

  def expand(self, pbegin):
    files = pbegin | "PreviousFiles" >> beam.Create(self._files)
    dim, with_vectors, with_tokens = self._dim, self._with_vectors, self._with_tokens
    if self._format == "tfrecord":
      return (files
              | "ReadTFRecords" >> beam.io.ReadAllFromTFRecord()
              | "ToRecords" >> beam.Map(example_to_record, dim, with_tokens))
    columns = ["id", "text_sha256"]
    if with_vectors:
      columns += ["embedding", "num_tokens", "truncated"]
    if with_tokens:
      columns += ["token_ids", "sequence_output"]
    return (files
            | "ReadParquet" >> beam.io.ReadAllFromParquetBatched(columns=columns)
            | "ToRecords" >> beam.FlatMap(table_to_records, dim, with_vectors, with_tokens))


# --------------------------------------------------------------------------------------------
# The join.


class _ClassifyFn(beam.DoFn):
  """(id, {new: [TextRecord], old: [EmbeddingRecord or text_sha256]}) -> records to encode; carried rows; counts."""

  def __init__(self, carry_over: bool, keep_text: bool, emit_tokens: bool):
    super().__init__()
    self._carry_over = carry_over
    self._keep_text = keep_text
    self._emit_tokens = emit_tokens
    self._counters = {kind: beam.metrics.Metrics.counter(NAMESPACE, f"records_{kind}") for kind in KINDS}
    self._carried = beam.metrics.Metrics.counter(NAMESPACE, "records_carried_over")

  def _count(self, kind: str, n: int = 1):
    self._counters[kind].inc(n)
    return beam.pvalue.TaggedOutput(kind, n)

  def _carry(self, old: EmbeddingRecord, record: TextRecord) -> EmbeddingRecord:
    return old._replace(
        text=record.text if self._keep_text else None,
        token_ids=old.token_ids if self._emit_tokens else None,
        sequence_output=old.sequence_output if self._emit_tokens else None)

  def process(self, element):
    _, grouped = element
    news, olds = list(grouped[_NEW]), list(grouped[_OLD])
    if not news:
      yield self._count("deleted", len(olds))
      return
    old_by_sha = {}
    for old in olds:
      old_by_sha.setdefault(old if isinstance(old, str) else old.text_sha256, old)
    for record in news:
      if not olds:
        yield self._count("new")
        yield record
        continue
      sha = text_sha256(record.text, record.text_pair) if isinstance(record.text, str) else None
      old = old_by_sha.get(sha)
      if old is None:
        yield self._count("changed")
        yield record
      elif self._carry_over:
        yield self._count("unchanged")
        self._carried.inc()
        yield beam.pvalue.TaggedOutput(CARRIED, self._carry(old, record))
      else:
        yield self._count("unchanged")
        yield record


def _record_id(record) -> str:
  return str(record.id)


def sample_key(record_id: str) -> str:
  """The drift sample takes the previous rows with the smallest key: deterministic, spread over the corpus."""
  return hashlib.sha256(record_id.encode("utf-8")).hexdigest()


class SplitByPrevious(beam.PTransform):
  """TextRecords -> IncrementalResult, against the previous output's files (or against nothing).

  Args:
    previous_files: the previous output's embedding files; None for a run without a previous output (then every
      record is new and goes to the encoder, without a shuffle).
    previous_format: "parquet" or "tfrecord".
    dim: the embedding dimension of the previous output.
    carry_over: reuse the rows of unchanged records (the fingerprints match); else only classify and count.
    keep_text, emit_tokens: the columns the new output has.
    drift_sample: > 0 to also return up to this many previous rows (by `sample_key`) for DriftCheck.
  """

  def __init__(self, previous_files: Optional[Sequence[str]], previous_format: Optional[str] = None,
               dim: int = 0, *, carry_over: bool = False, keep_text: bool = False, emit_tokens: bool = False,
               drift_sample: int = 0):
    super().__init__()
    self._files = None if previous_files is None else list(previous_files)
    self._format = previous_format
    self._dim = dim
    self._carry_over = carry_over
    self._keep_text = keep_text
    self._emit_tokens = emit_tokens
    self._drift_sample = drift_sample

  def expand(self, records) -> IncrementalResult:
    pipeline = records.pipeline
    if self._files is None:
      counts = {kind: pipeline | f"No{kind.capitalize()}" >> beam.Create([]) for kind in KINDS if kind != "new"}
      counts["new"] = records | "CountNew" >> beam.Map(lambda _: 1)
      return IncrementalResult(records, pipeline | "NothingCarried" >> beam.Create([]), counts, None)
    with_vectors = self._carry_over or self._drift_sample > 0
    previous = pipeline | "ReadPrevious" >> ReadPreviousEmbeddings(
        self._files, self._format, self._dim, with_vectors=with_vectors,
        with_tokens=self._carry_over and self._emit_tokens)
    if self._carry_over:
      old = previous | "KeyPrevious" >> beam.Map(lambda r: (r.id, r))
    else:  # only the hash takes part in the join
      old = previous | "KeyPreviousHashes" >> beam.Map(lambda r: (r.id, r.text_sha256))
    new = records | "KeyRecords" >> beam.Map(lambda r: (_record_id(r), r))
    split = ({_NEW: new, _OLD: old}
             | "JoinById" >> beam.CoGroupByKey()
             | "Classify" >> beam.ParDo(_ClassifyFn(self._carry_over, self._keep_text, self._emit_tokens))
             .with_outputs(CARRIED, *KINDS, main="to_encode"))
    sample = None
    if self._drift_sample > 0:
      sample = (previous
                | "SampleKeys" >> beam.Map(lambda r: (sample_key(r.id), r.id, r.text_sha256, r.embedding))
                | "DriftSample" >> beam.combiners.Top.Of(self._drift_sample, key=lambda t: t[0], reverse=True))
    return IncrementalResult(split.to_encode, split[CARRIED], {kind: split[kind] for kind in KINDS}, sample)


# --------------------------------------------------------------------------------------------
# Drift.


def cosine(a: np.ndarray, b: np.ndarray) -> float:
  a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
  if a.shape != b.shape:
    return float("nan")
  norms = np.linalg.norm(a) * np.linalg.norm(b)
  return float(np.dot(a, b) / norms) if norms > 0 else 0.0


def _sample_lookup(sample: list) -> dict:
  return {record_id: (sha, vector) for _, record_id, sha, vector in sample}


def _compare_sampled(rec: EmbeddingRecord, lookup: dict):
  old = lookup.get(rec.id)
  if old is not None and old[0] == rec.text_sha256:
    yield rec.id, cosine(old[1], rec.embedding)


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
