"""Incremental re-embedding: new TextRecords joined by id with the rows of a previous output.

Each input record is classified against the previous rows of its id:

  new        no previous row has its id                          -> encoded
  changed    previous rows have its id, none its text_sha256     -> encoded
  unchanged  a previous row has its id and text_sha256           -> that row is carried over (or, when
                                                                    `carry_over` is off, encoded again)
  deleted    a previous row whose id no longer occurs in the input -> dropped

The join is a CoGroupByKey on the id, so it scales with the runner's shuffle: no worker holds more than one id's
records and rows. Only the columns a carried row needs are read (transforms/previous_rows.py), never the text:
carried rows take it from the input (same hash, same text). Rows written as windows of a long text (`<id>#<k>`,
with parent_id) join under their parent's id, and an unchanged record carries all its windows. Counters in the
bert_embed namespace: records_new, records_changed, records_unchanged, records_deleted, records_carried_over.

With drift_sample > 0 a deterministic sample of previous rows comes out for DriftCheck (transforms/drift.py).
With carry-over, the ids of the previous rows that are not carried (their record was deleted, changed, or is
encoded again) come out too (`stale_ids`), so that a vector store can be brought to this run's rows.

Damaged previous outputs are never copied. Parquet pages are read with their CRC checksums verified, TFRecord
records with theirs. A previous file (or a row group of one) that cannot be read, fails a checksum or does not
parse is left out: its records find no previous row, count as new and are encoded, and the unreadable parts come
out on `IncrementalResult.unreadable` for the manifest. The rows that were read are each intact (verified) and are
carried as usual, except windows (`<id>#<k>`): some of a record's windows may have been in the unreadable part, so
with any part unreadable a windowed record is encoded again (`previous_damaged`). A previous row that reads but
would not be written as it stands (it fails ValidateEmbeddings' checks for this run's columns, or is not unit
length although the previous output was normalised) is not carried: its record is encoded again and counted as
`previous_damaged` (still `unchanged`: its text is), counter records_previous_damaged. Rows of deleted records that
were in an unreadable part are not counted as deleted.
"""
from __future__ import annotations

import dataclasses
import logging
from typing import Mapping, NamedTuple, Optional, Sequence

import apache_beam as beam
import numpy as np

from formats import compact
from formats.column_checks import float_array_problem
from formats.columns import OutputColumns
from transforms.drift import sample_key
from transforms.previous_rows import ReadPreviousEmbeddings
from snapshot import previous as previous_lib
from snapshot.manifest import ShardIdentity
from snapshot.previous import DAMAGED
from formats.records import EmbeddingRecord, TextRecord, text_sha256
from transforms.validate import row_problem

from transforms.names import NAMESPACE
KINDS = ("new", "changed", "unchanged", "deleted")
CARRIED = "carried"
STALE = "stale_ids"  # with carry-over: ids of previous rows not carried (their record is gone or encoded again)
_NEW, _OLD = "new", "old"
# A normalised vector's norm is 1 up to float32 rounding (~1e-7 per component); a damaged one is far off.
UNIT_NORM_TOLERANCE = 1e-3
WINDOWS_MAY_BE_MISSING = "part of the previous output is unreadable, and with it maybe some of the record's windows"
_LOG = logging.getLogger(__name__)


class IncrementalResult(NamedTuple):
  to_encode: beam.PCollection  # TextRecord: new and changed records (and unchanged ones without carry_over)
  carried: Optional[beam.PCollection]  # EmbeddingRecord reused from the previous output; None without one
  counts: dict  # {kind: PCollection[int], or None for 0} for every kind in KINDS and DAMAGED, summed by the manifest
  drift_sample: Optional[beam.PCollection]  # one list of (key, id, text_sha256, vector), or None
  unreadable: Optional[beam.PCollection] = None  # (file, reason) of each previous file part that could not be read
  # (None without a previous output)
  stale_ids: Optional[beam.PCollection] = None  # str: with carry-over, the ids of previous rows not carried over


def vector_problem(vector: object, dim: int, unit_norm: bool) -> Optional[str]:
  """Why a previous embedding must not be reused: not `dim` finite floats, or (unit_norm) not of length 1.

  A zero vector passes the unit-norm check: normalising one leaves it zero.
  """
  problem = float_array_problem("embedding", vector, (dim,))
  if problem or not unit_norm:
    return problem
  norm = float(np.linalg.norm(np.asarray(vector, dtype=np.float64)))
  if norm != 0.0 and abs(norm - 1.0) > UNIT_NORM_TOLERANCE:
    return f"embedding has norm {norm:.6g}, but the previous output is normalised"
  return None


def carried_row_problem(row: EmbeddingRecord, dim: int, columns: OutputColumns, unit_norm: bool) -> Optional[str]:
  """Why a previous row, as it would be carried (text from the input), must not be written again, or None.

  ValidateEmbeddings' checks for the run's columns, and the unit norm of a normalised output's vectors (in the float
  forms; a float16 vector's length is 1 within the tolerance).
  """
  problem = row_problem(row, columns, dim)
  if problem or not columns.embeddings or not compact.is_float(columns.dtype):
    return problem  # int8 and binary forms have no length to check
  return vector_problem(row.embedding, compact.kept_dims(dim, columns.truncate_dim), unit_norm)


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

  Side input: the unreadable parts of the previous output (then windowed rows are not carried).
  """

  def __init__(self, carry_over: bool, columns: OutputColumns, dim: int = 0, unit_norm: bool = False):
    super().__init__()
    self._carry_over = carry_over
    self._columns = columns
    self._dim = dim
    self._unit_norm = unit_norm
    self._counters = {kind: beam.metrics.Metrics.counter(NAMESPACE, f"records_{kind}") for kind in KINDS + (DAMAGED,)}
    self._carried = beam.metrics.Metrics.counter(NAMESPACE, "records_carried_over")

  def _count(self, kind: str, n: int = 1):
    self._counters[kind].inc(n)
    return beam.pvalue.TaggedOutput(kind, n)

  def _carry(self, old: EmbeddingRecord, record: TextRecord) -> EmbeddingRecord:
    return old._replace(
        source=record.source,
        text=record.text if self._columns.text else None,
        token_ids=old.token_ids if self._columns.tokens else None,
        sequence_output=old.sequence_output if self._columns.tokens else None)

  def _damage(self, rows: list, record: TextRecord) -> Optional[str]:
    """Why one of the rows to carry for `record` is damaged, or None."""
    for row in rows:
      problem = carried_row_problem(self._carry(row, record), self._dim, self._columns, self._unit_norm)
      if problem:
        return f"{row.id}: {problem}"
    return None

  def process(self, element, unreadable=()):
    _, grouped = element
    news, olds = list(grouped[_NEW]), list(grouped[_OLD])
    carried = set()
    yield from self._classify(news, olds, unreadable, carried)
    if self._carry_over:  # the previous rows this run does not carry: gone, or replaced if encoded again
      for row_id in sorted({old.id for old in olds} - carried):
        yield beam.pvalue.TaggedOutput(STALE, row_id)

  def _classify(self, news: list, olds: list, unreadable, carried: set):
    """Yields the outputs of one id's records and previous rows; adds the ids of the carried rows to `carried`."""
    # With parts of the previous output unreadable, a record written as windows may have lost some of them there:
    # its readable windows are not carried. (A record in one row is whole or absent; absent ones count as new.)
    incomplete = bool(unreadable) and any(old.chunk_index is not None for old in olds)
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
        rows_to_carry = _rows_of_record(rows)
        damage = WINDOWS_MAY_BE_MISSING if incomplete else self._damage(rows_to_carry, record)
        if damage:
          _LOG.warning("previous row of %r is damaged, encoding the record again: %s", record.id, damage)
          yield self._count(DAMAGED)
          yield record
          continue
        self._carried.inc()
        for row in rows_to_carry:
          carried.add(row.id)
          yield beam.pvalue.TaggedOutput(CARRIED, self._carry(row, record))
      else:
        yield self._count("unchanged")
        yield record


def _record_id(record) -> str:
  return str(record.id)


def _previous_key(row: EmbeddingRecord) -> str:
  """The input record a previous row came from: its id, or the parent's id for a window row (<id>#<k>)."""
  return row.parent_id if row.parent_id is not None else row.id


class SplitByPrevious(beam.PTransform):
  """TextRecords -> IncrementalResult, against the previous output's files (or against nothing).

  Args:
    previous_files: the previous output's embedding files; None for a run without a previous output (then every
      record is new and goes to the encoder, without a shuffle).
    previous_format: "parquet" or "tfrecord".
    dim: the embedding dimension of the previous output.
    carry_over: reuse the rows of unchanged records (the fingerprints match); else only classify and count.
    columns: the columns the new output has; a carried row needs them (all but the text, which comes from the
      input). Without carry_over only the key, window and (for the drift sample) embedding columns are read.
    drift_sample: > 0 to also return up to this many previous rows (by `sample_key`) for DriftCheck; their
      embedding column is then read.
    unit_norm: the previous output's vectors are normalised (--normalize): a carried or sampled vector must have
      norm 1 (within UNIT_NORM_TOLERANCE).
    identities: {previous file: ShardIdentity} from its manifest; a file that does not match is unreadable (its
      records are encoded again, see ReadPreviousEmbeddings). None: not checked.
  """

  def __init__(self, previous_files: Optional[Sequence[str]], previous_format: Optional[str] = None,
               dim: int = 0, *, carry_over: bool = False, columns: OutputColumns = OutputColumns(),
               drift_sample: int = 0, unit_norm: bool = False,
               identities: Optional[Mapping[str, ShardIdentity]] = None):
    super().__init__()
    self._identities = identities
    self._unit_norm = unit_norm
    self._columns = columns
    self._files = None if previous_files is None else list(previous_files)
    self._format = previous_format
    self._dim = dim
    self._carry_over = carry_over
    self._drift_sample = drift_sample
    # Without carry-over only the hash and window number take part in the join.
    read = columns if carry_over else OutputColumns(embeddings=False, windows=True)
    self._read = dataclasses.replace(read, embeddings=True) if drift_sample > 0 else read

  def expand(self, records) -> IncrementalResult:
    pipeline = records.pipeline
    if self._files is None:
      counts = {kind: None for kind in KINDS + (DAMAGED,)}
      counts["new"] = records | "CountNew" >> beam.Map(lambda _: 1)
      return IncrementalResult(records, None, counts, None, None)
    read = pipeline | "ReadPrevious" >> ReadPreviousEmbeddings(self._files, self._format, self._dim, self._read,
                                                               self._identities)
    previous = read.rows
    if self._carry_over:
      old = previous | "KeyPrevious" >> beam.Map(lambda r: (_previous_key(r), r))
    else:  # only the hash (and window number) takes part in the join
      old = previous | "KeyPreviousHashes" >> beam.Map(
          lambda r: (_previous_key(r), _Old(r.text_sha256, r.chunk_index)))
    new = records | "KeyRecords" >> beam.Map(lambda r: (_record_id(r), r))
    classify = _ClassifyFn(self._carry_over, self._columns, self._dim, self._unit_norm)
    split = ({_NEW: new, _OLD: old}
             | "JoinById" >> beam.CoGroupByKey()
             | "Classify" >> beam.ParDo(classify, unreadable=beam.pvalue.AsList(read.unreadable))
             .with_outputs(CARRIED, DAMAGED, STALE, *KINDS, main="to_encode"))
    sample = None
    if self._drift_sample > 0:
      dim, unit_norm = self._dim, self._unit_norm
      sample = (previous
                | "WithVectors" >> beam.Filter(
                    lambda r: r.embedding is not None and vector_problem(r.embedding, dim, unit_norm) is None)
                | "SampleKeys" >> beam.Map(lambda r: (sample_key(r.id), r.id, r.text_sha256, r.embedding))
                | "DriftSample" >> beam.combiners.Top.Of(self._drift_sample, key=lambda t: t[0], reverse=True))
    counts = {kind: split[kind] for kind in KINDS + (DAMAGED,)}
    return IncrementalResult(split.to_encode, split[CARRIED], counts, sample, read.unreadable,
                             split[STALE] if self._carry_over else None)


class ManifestSection(beam.PTransform):
  """The manifest's `incremental` field, known only once the previous output has been read (manifest_section).

  Input: the (file, reason) pairs of IncrementalResult.unreadable. Output: one dict.
  """

  def __init__(self, p: previous_lib.Plan):
    super().__init__()
    self._plan = p

  def expand(self, unreadable):
    return (unreadable
            | "AllUnreadable" >> beam.combiners.ToList()
            | "Section" >> beam.Map(lambda failures, p: previous_lib.manifest_section(p, failures), self._plan))
