"""Incremental re-embedding: new TextRecords joined by id with the rows of a previous output.

Each input record is classified against the previous rows of its id:

  new        no previous row has its id                          -> encoded
  changed    previous rows have its id, none its text_sha256     -> encoded
  unchanged  a previous row has its id and text_sha256           -> that row is carried over (or, when
                                                                    `carry_over` is off, encoded again)
  deleted    a previous row whose id no longer occurs in the input -> dropped

The join is a CoGroupByKey on the id, so it scales with the runner's shuffle: no worker holds more than one id's
records and rows. Only the columns a carried row needs are read (`row_columns`), never the text: carried rows take
it from the input (same hash, same text). Rows written as windows of a long text (`<id>#<k>`, with parent_id) join
under their parent's id, and an unchanged record carries all its windows. Counters in the bert_embed namespace:
records_new, records_changed, records_unchanged, records_deleted, records_carried_over.

`DriftCheck` compares the vectors of a deterministic sample of previous rows (the smallest SHA-256 of the id) with
the newly encoded vectors of the same, unchanged records: the cosine tells how far a model or option change moved
the vectors.

Damaged previous outputs are never copied. Parquet pages are read with their CRC checksums verified, TFRecord
records with theirs. A previous file (or a row group of one) that cannot be read, fails a checksum or does not
parse makes the whole run a full re-embed: every record is then counted as new and encoded, and the unreadable
files come out on `IncrementalResult.unreadable` for the manifest. A previous row that reads but would not be
written as it stands (wrong dimension, non-finite values, other invalid fields, or not unit length although the
previous output was normalised) is not carried: its record is encoded again and counted as `previous_damaged`
(still `unchanged`: its text is), counter records_previous_damaged.
"""
from __future__ import annotations

import hashlib
import logging
from typing import Iterable, NamedTuple, Optional, Sequence

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io import tfrecordio
from apache_beam.io.filesystems import FileSystems

from transforms import write
from transforms.records import EmbeddingRecord, TextRecord, text_sha256

from transforms.names import NAMESPACE
KINDS = ("new", "changed", "unchanged", "deleted")
DAMAGED = "previous_damaged"  # unchanged records whose previous row is damaged (re-encoded); a count like KINDS
CARRIED = "carried"
UNREADABLE = "unreadable"
_NEW, _OLD = "new", "old"
# A normalised vector's norm is 1 up to float32 rounding (~1e-7 per component); a damaged one is far off.
UNIT_NORM_TOLERANCE = 1e-3
_LOG = logging.getLogger(__name__)


class IncrementalResult(NamedTuple):
  to_encode: beam.PCollection  # TextRecord: new and changed records (and unchanged ones without carry_over)
  carried: beam.PCollection  # EmbeddingRecord reused from the previous output
  counts: dict  # {kind: PCollection[int]} for every kind in KINDS and DAMAGED, summed by the manifest step
  drift_sample: Optional[beam.PCollection]  # one list of (key, id, text_sha256, vector), or None
  unreadable: Optional[beam.PCollection] = None  # (file, reason) of each previous file part that could not be read


# --------------------------------------------------------------------------------------------
# Reading the previous output.

# How each EmbeddingRecord field is stored (text is never read back: the input has it).
_STRINGS = ("id", "text_sha256", "parent_id")
_INTS = ("num_tokens", "mlm_scored_tokens", "chunk_index", "chunk_start_piece", "chunk_end_piece")
_BOOLS = ("truncated",)
_FLOATS = ("mlm_pll", "mlm_pseudo_perplexity")
_ARRAYS = {"embedding": np.float32, "token_ids": np.int32, "mlm_token_scores": np.float32}
_MATRICES = ("sequence_output",)  # [num_tokens, dim]; flattened in tf.Examples
KEY_COLUMNS = ("id", "text_sha256")
ROW_COLUMNS = ("num_tokens", "truncated")  # besides the key: what every carried row needs
TOKEN_COLUMNS = ("token_ids", "sequence_output")
MLM_COLUMNS = ("mlm_pll", "mlm_scored_tokens", "mlm_pseudo_perplexity")
CHUNK_COLUMNS = ("parent_id", "chunk_index", "chunk_start_piece", "chunk_end_piece")


def row_columns(*, embeddings: bool = True, emit_tokens: bool = False, mlm: bool = False,
                mlm_per_token: bool = False, chunks: bool = False) -> tuple[str, ...]:
  """The columns a carried-over row needs, for the output columns of the current run."""
  columns = list(KEY_COLUMNS + ROW_COLUMNS)
  columns += ["embedding"] if embeddings else []
  columns += list(TOKEN_COLUMNS) if emit_tokens else []
  columns += list(MLM_COLUMNS) if mlm else []
  columns += ["mlm_token_scores"] if mlm_per_token else []
  columns += list(CHUNK_COLUMNS) if chunks else []
  return tuple(columns)


def _convert(name: str, value, dim: int):
  """One stored value -> the EmbeddingRecord field's type."""
  if value is None:
    return None
  if name in _STRINGS:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)
  if name in _INTS:
    return int(value)
  if name in _BOOLS:
    return bool(value)
  if name in _FLOATS:
    return float(value)
  if name in _MATRICES:
    return np.asarray(value, dtype=np.float32).reshape(-1, dim)
  return np.asarray(value, dtype=_ARRAYS[name])  # a None item (Parquet null) becomes NaN


def _vectors(column, dim: int):
  """A list<float32> column -> float32 [rows, dim] without a Python float per value, when every row has `dim`
  values; else one array (or None for a null) per row, for the row check to reject the odd ones."""
  array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
  values = array.flatten().to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
  if values.size == len(array) * dim and not array.null_count:
    return values.reshape(len(array), dim)
  return [None if v is None else np.asarray(v, dtype=np.float32) for v in array.to_pylist()]


def table_to_records(table: pa.Table, dim: int, columns: Sequence[str]) -> Iterable[EmbeddingRecord]:
  """Rows of a previous Parquet output -> EmbeddingRecords with the given columns (absent ones None)."""
  fields = {}
  columns = [name for name in columns if name in table.column_names]
  for name in columns:
    if name == "embedding":
      fields[name] = _vectors(table.column(name), dim)
    else:
      fields[name] = [_convert(name, v, dim) for v in table.column(name).to_pylist()]
  defaults = {"num_tokens": 0, "truncated": False, "embedding": None}
  for i in range(table.num_rows):
    values = {name: fields[name][i] for name in columns}
    yield EmbeddingRecord(**{**defaults, **values})


def example_to_record(serialized: bytes, dim: int, columns: Sequence[str]) -> EmbeddingRecord:
  """One tf.Example of a previous TFRecord output -> an EmbeddingRecord with the given columns."""
  from tensorflow.core.example import example_pb2  # pylint: disable=import-outside-toplevel
  features = example_pb2.Example.FromString(serialized).features.feature
  values = {"num_tokens": 0, "truncated": False, "embedding": None}
  for name in columns:
    if name not in features:  # an omitted feature is a None (e.g. mlm_pseudo_perplexity)
      values[name] = None
      continue
    feature = features[name]
    kind = feature.WhichOneof("kind")
    stored = list(getattr(feature, kind).value) if kind else []
    if name in _ARRAYS or name in _MATRICES:
      values[name] = _convert(name, stored, dim)
    else:
      values[name] = _convert(name, stored[0] if stored else None, dim)
  return EmbeddingRecord(**values)


def _open(path: str):
  return FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED)


def _unreadable(path: str, error: Exception) -> beam.pvalue.TaggedOutput:
  reason = f"{type(error).__name__}: {error}"
  _LOG.warning("previous output %s cannot be read (%s): this run encodes every record", path, reason)
  return beam.pvalue.TaggedOutput(UNREADABLE, (path, reason[:500]))


def _row_groups(path: str) -> Iterable[object]:
  """A Parquet file -> (path, row group index) pairs: the unit of parallel reading (or one UNREADABLE output)."""
  try:
    with _open(path) as f:
      count = pq.ParquetFile(f).num_row_groups
  except Exception as e:  # pylint: disable=broad-except  (a missing, truncated or garbled file)
    yield _unreadable(path, e)
    return
  for i in range(count):
    yield path, i


def _read_row_group(part: tuple[str, int], dim: int, columns: Sequence[str]) -> Iterable[object]:
  """One row group, its page checksums verified, reading only the wanted columns the file has (e.g. no window
  columns: not windowed); on any failure one UNREADABLE output and no rows."""
  path, index = part
  try:
    with _open(path) as f:
      parquet = pq.ParquetFile(f, page_checksum_verification=True)
      present = [name for name in columns if name in parquet.schema_arrow.names]
      table = parquet.read_row_group(index, columns=present)
    rows = list(table_to_records(table, dim, present))
  except Exception as e:  # pylint: disable=broad-except  (checksum failures, undecodable pages, bad values)
    yield _unreadable(f"{path} (row group {index})", e)
    return
  yield from rows


def _read_tfrecords(path: str, dim: int, columns: Sequence[str]) -> Iterable[object]:
  """One TFRecord file, each record's length and data CRC verified; on any failure one UNREADABLE output (the
  rows before it may have been emitted: an unreadable previous output carries nothing anyway)."""
  try:
    with _open(path) as f:
      while True:
        record = tfrecordio._TFRecordUtil.read_record(f)  # pylint: disable=protected-access
        if record is None:
          return
        yield example_to_record(record, dim, columns)
  except Exception as e:  # pylint: disable=broad-except  (CRC mismatch, truncated record, unparsable Example)
    yield _unreadable(path, e)


class PreviousRows(NamedTuple):
  rows: beam.PCollection  # EmbeddingRecord
  unreadable: beam.PCollection  # (file, reason) for each file (or Parquet row group) that could not be read


class ReadPreviousEmbeddings(beam.PTransform):
  """The rows of a previous output's files (as listed by its manifest) as EmbeddingRecords, and what could not be
  read (see PreviousRows): checksums are verified, and a damaged file never fails the pipeline.

  Args:
    files: the previous manifest's output_files.
    output_format: "parquet" or "tfrecord".
    dim: the embedding dimension.
    columns: the fields to read (see row_columns); id and text_sha256 always.
  """

  def __init__(self, files: Sequence[str], output_format: str, dim: int, columns: Sequence[str] = KEY_COLUMNS):
    super().__init__()
    if output_format not in ("parquet", "tfrecord"):
      raise ValueError(f"previous output format must be parquet or tfrecord, got {output_format!r}")
    unknown = sorted(set(columns) - set(EmbeddingRecord._fields) | ({"text"} & set(columns)))
    if unknown:
      raise ValueError(f"cannot read previous columns {unknown}")
    self._files = list(files)
    self._format = output_format
    self._dim = dim
    self._columns = tuple(dict.fromkeys(KEY_COLUMNS + tuple(columns)))

  def expand(self, pbegin) -> PreviousRows:
    files = pbegin | "PreviousFiles" >> beam.Create(self._files)
    if self._format == "tfrecord":
      read = (files
              | "SpreadFiles" >> beam.Reshuffle()
              | "ReadTFRecords" >> beam.FlatMap(_read_tfrecords, self._dim, self._columns)
              .with_outputs(UNREADABLE, main="rows"))
      return PreviousRows(read.rows, read[UNREADABLE])
    parts = files | "RowGroups" >> beam.FlatMap(_row_groups).with_outputs(UNREADABLE, main="parts")
    read = (parts.parts
            | "SpreadRowGroups" >> beam.Reshuffle()
            | "ReadRowGroups" >> beam.FlatMap(_read_row_group, self._dim, self._columns)
            .with_outputs(UNREADABLE, main="rows"))
    unreadable = (parts[UNREADABLE], read[UNREADABLE]) | "Unreadable" >> beam.Flatten()
    return PreviousRows(read.rows, unreadable)


def vector_problem(vector: object, dim: int, unit_norm: bool) -> Optional[str]:
  """Why a previous embedding must not be reused: not `dim` finite floats, or (unit_norm) not of length 1.

  A zero vector passes the unit-norm check: normalising one leaves it zero.
  """
  problem = write._float_array_problem("embedding", vector, (dim,))  # pylint: disable=protected-access
  if problem or not unit_norm:
    return problem
  norm = float(np.linalg.norm(np.asarray(vector, dtype=np.float64)))
  if norm != 0.0 and abs(norm - 1.0) > UNIT_NORM_TOLERANCE:
    return f"embedding has norm {norm:.6g}, but the previous output is normalised"
  return None


def carried_row_problem(row: EmbeddingRecord, dim: int, columns: Sequence[str], emit_tokens: bool,
                        unit_norm: bool) -> Optional[str]:
  """Why a previous row, as it would be carried (text from the input), must not be written again, or None.

  The same checks as ValidateEmbeddings for the columns the run writes (`columns`: see row_columns), the window
  fields of windowed output, and the unit norm of a normalised output's vectors.
  """
  embeddings, mlm, mlm_per_token = "embedding" in columns, "mlm_pll" in columns, "mlm_token_scores" in columns
  problem = write.embedding_problem(row, dim, emit_tokens=emit_tokens, embeddings=embeddings, mlm=mlm,
                                    mlm_per_token=mlm_per_token)
  if problem:
    return problem
  if "parent_id" in columns and row.chunk_index is not None:
    missing = [name for name in CHUNK_COLUMNS if getattr(row, name) is None]
    if missing:
      return f"window row without {', '.join(missing)}"
  if embeddings:
    return vector_problem(row.embedding, dim, unit_norm)
  return None


# --------------------------------------------------------------------------------------------
# The join.


class _Old(NamedTuple):
  """What the join needs of a previous row without carry-over: its hash and whether it starts a record."""
  text_sha256: str
  chunk_index: Optional[int] = None


def _starts_record(old) -> bool:
  """One row per previous record: the row itself, or window 0 of a record written as several windows."""
  return old.chunk_index is None or old.chunk_index == 0


def _rows_of_record(olds: list) -> list:
  """The rows to carry for one record: the first row, or the first of each window (sorted) for windowed rows."""
  if all(o.chunk_index is None for o in olds):
    return olds[:1]
  windows = {}
  for old in olds:
    windows.setdefault(old.chunk_index, old)
  return [windows[k] for k in sorted(windows)]


class _ClassifyFn(beam.DoFn):
  """(id, {new: [TextRecord], old: [EmbeddingRecord or _Old]}) -> records to encode; carried rows; counts.

  Side input: the unreadable parts of the previous output; when there are any, every record is new.
  """

  def __init__(self, carry_over: bool, keep_text: bool, emit_tokens: bool, dim: int = 0,
               columns: Sequence[str] = (), unit_norm: bool = False):
    super().__init__()
    self._carry_over = carry_over
    self._keep_text = keep_text
    self._emit_tokens = emit_tokens
    self._dim = dim
    self._columns = tuple(columns)
    self._unit_norm = unit_norm
    self._counters = {kind: beam.metrics.Metrics.counter(NAMESPACE, f"records_{kind}") for kind in KINDS + (DAMAGED,)}
    self._carried = beam.metrics.Metrics.counter(NAMESPACE, "records_carried_over")

  def _count(self, kind: str, n: int = 1):
    self._counters[kind].inc(n)
    return beam.pvalue.TaggedOutput(kind, n)

  def _carry(self, old: EmbeddingRecord, record: TextRecord) -> EmbeddingRecord:
    return old._replace(
        text=record.text if self._keep_text else None,
        token_ids=old.token_ids if self._emit_tokens else None,
        sequence_output=old.sequence_output if self._emit_tokens else None)

  def _damage(self, rows: list, record: TextRecord) -> Optional[str]:
    """Why one of the rows to carry for `record` is damaged, or None."""
    for row in rows:
      problem = carried_row_problem(self._carry(row, record), self._dim, self._columns, self._emit_tokens,
                                    self._unit_norm)
      if problem:
        return f"{row.id}: {problem}"
    return None

  def process(self, element, unreadable=()):
    _, grouped = element
    news, olds = list(grouped[_NEW]), list(grouped[_OLD])
    if unreadable:  # the previous output is incomplete: nothing in it can be relied on
      for record in news:
        yield self._count("new")
        yield record
      return
    if not news:
      yield self._count("deleted", sum(1 for old in olds if _starts_record(old)))
      return
    old_by_sha = {}
    for old in olds:
      old_by_sha.setdefault(old.text_sha256, []).append(old)
    for record in news:
      if not olds:
        yield self._count("new")
        yield record
        continue
      sha = text_sha256(record.text, record.text_pair) if isinstance(record.text, str) else None
      rows = old_by_sha.get(sha)
      if rows is None:
        yield self._count("changed")
        yield record
      elif self._carry_over:
        yield self._count("unchanged")
        carried = _rows_of_record(rows)
        damage = self._damage(carried, record)
        if damage:
          _LOG.warning("previous row of %r is damaged, encoding the record again: %s", record.id, damage)
          yield self._count(DAMAGED)
          yield record
          continue
        self._carried.inc()
        for row in carried:
          yield beam.pvalue.TaggedOutput(CARRIED, self._carry(row, record))
      else:
        yield self._count("unchanged")
        yield record


def _record_id(record) -> str:
  return str(record.id)


def _previous_key(row: EmbeddingRecord) -> str:
  """The input record a previous row came from: its id, or the parent's id for a window row (<id>#<k>)."""
  return row.parent_id if row.parent_id is not None else row.id


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
    columns: the columns of a carried row (see row_columns); only id and text_sha256 are read without carry_over.
    keep_text, emit_tokens: the text and token columns the new output has.
    drift_sample: > 0 to also return up to this many previous rows (by `sample_key`) for DriftCheck; their
      embedding column is then read.
    unit_norm: the previous output's vectors are normalised (--normalize): a carried or sampled vector must have
      norm 1 (within UNIT_NORM_TOLERANCE).
  """

  def __init__(self, previous_files: Optional[Sequence[str]], previous_format: Optional[str] = None,
               dim: int = 0, *, carry_over: bool = False, columns: Sequence[str] = (), keep_text: bool = False,
               emit_tokens: bool = False, drift_sample: int = 0, unit_norm: bool = False):
    super().__init__()
    self._unit_norm = unit_norm
    self._row_columns = tuple(columns)
    self._files = None if previous_files is None else list(previous_files)
    self._format = previous_format
    self._dim = dim
    self._carry_over = carry_over
    self._keep_text = keep_text
    self._emit_tokens = emit_tokens
    self._drift_sample = drift_sample
    read = list(KEY_COLUMNS) + (list(columns) if carry_over else ["parent_id", "chunk_index"])
    if drift_sample > 0 and "embedding" not in read:
      read.append("embedding")
    self._columns = tuple(dict.fromkeys(read))

  def expand(self, records) -> IncrementalResult:
    pipeline = records.pipeline
    if self._files is None:
      counts = {kind: pipeline | f"No{kind.capitalize()}" >> beam.Create([]) for kind in KINDS if kind != "new"}
      counts["new"] = records | "CountNew" >> beam.Map(lambda _: 1)
      counts[DAMAGED] = pipeline | "NoneDamaged" >> beam.Create([])
      return IncrementalResult(records, pipeline | "NothingCarried" >> beam.Create([]), counts, None,
                               pipeline | "NothingUnreadable" >> beam.Create([]))
    read = pipeline | "ReadPrevious" >> ReadPreviousEmbeddings(self._files, self._format, self._dim, self._columns)
    previous = read.rows
    if self._carry_over:
      old = previous | "KeyPrevious" >> beam.Map(lambda r: (_previous_key(r), r))
    else:  # only the hash (and window number) takes part in the join
      old = previous | "KeyPreviousHashes" >> beam.Map(
          lambda r: (_previous_key(r), _Old(r.text_sha256, r.chunk_index)))
    new = records | "KeyRecords" >> beam.Map(lambda r: (_record_id(r), r))
    classify = _ClassifyFn(self._carry_over, self._keep_text, self._emit_tokens, self._dim, self._row_columns,
                           self._unit_norm)
    split = ({_NEW: new, _OLD: old}
             | "JoinById" >> beam.CoGroupByKey()
             | "Classify" >> beam.ParDo(classify, unreadable=beam.pvalue.AsList(read.unreadable))
             .with_outputs(CARRIED, DAMAGED, *KINDS, main="to_encode"))
    sample = None
    if self._drift_sample > 0:
      dim, unit_norm = self._dim, self._unit_norm
      sample = (previous
                | "WithVectors" >> beam.Filter(
                    lambda r: r.embedding is not None and vector_problem(r.embedding, dim, unit_norm) is None)
                | "SampleKeys" >> beam.Map(lambda r: (sample_key(r.id), r.id, r.text_sha256, r.embedding))
                | "DriftSample" >> beam.combiners.Top.Of(self._drift_sample, key=lambda t: t[0], reverse=True))
    counts = {kind: split[kind] for kind in KINDS + (DAMAGED,)}
    return IncrementalResult(split.to_encode, split[CARRIED], counts, sample, read.unreadable)


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
  if old is not None and old[0] == rec.text_sha256 and rec.embedding is not None:
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
