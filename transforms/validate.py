"""Checking embedding rows before they are written: the one place a row is validated.

`ValidateEmbeddings` sends every row that cannot be written, as the run's OutputColumns would write it, out as a
DeadLetter(stage="write") with the reason, so the sink (transforms/write.py) never fails on a row that passed.
The checks are the column table's (formats/columns.py), run in table order, first problem wins:

  - a written column is required (text and mlm_pseudo_perplexity may be None) and must be storable: strings
    UTF-8, counts non-negative int32, vectors of the right shape and finite, MLM scores consistent;
  - a column that is not written but set on the row is still checked, with the other columns of its switch (the
    embed stage sets only what is to be written, so a set field that is wrong means a bug upstream), except the
    embedding, which --no-embeddings ignores.

A record is written whole or not at all. With window columns, a failing window of a text encoded as several
windows (num_windows > 1) dead-letters its record: one DeadLetter under the record's id, naming the window and its
reason, and none of the record's windows is written (transforms/embedding/merge_windows.py regroups them by parent
id, one shuffle of such windows); a text in one window is dead-lettered under its record's id too. Rows carried from a
previous output were checked as a whole record when they were carried (transforms/incremental.py).
"""
from __future__ import annotations

from typing import Iterator, NamedTuple, Optional, Sequence

import apache_beam as beam
from apache_beam.metrics import Metrics

from formats.columns import COLUMNS, SWITCHES, OutputColumns, check_dim
from transforms.embedding.merge_windows import WINDOW_FAILED, MergeWindows, is_split
from transforms.names import DEAD_LETTER as DEAD_LETTER_TAG
from transforms.names import NAMESPACE as METRICS_NAMESPACE
from formats.records import DeadLetter, EmbeddingRecord

# The main output tag of ValidateEmbeddings (dead letters go to DEAD_LETTER_TAG).
VALID_TAG = "valid"

# Switches whose columns are checked only when written (see the module docstring).
_CHECKED_ONLY_WHEN_WRITTEN = frozenset({"embeddings"})
_SWITCH_FIELDS = {switch: tuple(c.name for c in COLUMNS if c.switch == switch) for switch in SWITCHES}


def _checked(rec: EmbeddingRecord, columns: OutputColumns) -> set:
  """The switches whose columns `rec` must pass: those written, and those with a field set on the row."""
  switches = {s for s in SWITCHES if getattr(columns, s)}
  for switch, fields in _SWITCH_FIELDS.items():
    if switch not in _CHECKED_ONLY_WHEN_WRITTEN and any(getattr(rec, f) is not None for f in fields):
      switches.add(switch)
  return switches


def row_problem(rec: EmbeddingRecord, columns: OutputColumns, dim: int,
                max_id_bytes: Optional[int] = None) -> Optional[str]:
  """Why `rec` cannot be written with `columns` (dim: the embedding length and sequence_output width; max_id_bytes:
  the longest id in UTF-8 bytes a vector store of the run can hold), or None."""
  if not isinstance(rec, EmbeddingRecord):
    return f"not an EmbeddingRecord but {type(rec).__name__}"
  if max_id_bytes is not None and isinstance(rec.id, str) and len(rec.id.encode("utf-8")) > max_id_bytes:
    return (f"id of {len(rec.id.encode('utf-8'))} bytes is longer than the vector store holds "
            f"({max_id_bytes} bytes)")
  switches = _checked(rec, columns)
  for column in columns.table:
    if column.switch is None or column.switch in switches:
      problem = column.check(rec, dim)
      if problem:
        return problem
  return None


def unwritable(records: Sequence[EmbeddingRecord], columns: OutputColumns, dim: int, error: Exception) -> ValueError:
  """The error of a sink handed a batch it cannot convert: names the first invalid row when there is one."""
  for rec in records:
    problem = row_problem(rec, columns, dim)
    if problem:
      return ValueError(f"record {getattr(rec, 'id', None)!r} cannot be written: {problem}. "
                        "Apply ValidateEmbeddings before WriteEmbeddings to dead-letter such rows.")
  return ValueError(f"a batch of valid rows cannot be written ({type(error).__name__}: {error})")


class Validated(NamedTuple):
  """ValidateEmbeddings' result; unpacks as `valid, dead_letters = ...`."""
  valid: beam.PCollection  # EmbeddingRecord
  dead_letters: beam.PCollection  # DeadLetter


class ValidateEmbeddingsFn(beam.DoFn):
  """Passes writable rows through; turns the others into DeadLetter(stage="write") on DEAD_LETTER_TAG, or, for a
  window of a text in several windows when windows are written, into (parent id, DeadLetter) on WINDOW_FAILED."""

  def __init__(self, dim: int, columns: OutputColumns, max_id_bytes: Optional[int] = None):
    super().__init__()
    self._dim = dim
    self._columns = columns
    self._max_id_bytes = max_id_bytes
    self._rejected = Metrics.counter(METRICS_NAMESPACE, "records_rejected_at_write")

  def process(self, rec: EmbeddingRecord) -> Iterator[object]:
    problem = row_problem(rec, self._columns, self._dim, self._max_id_bytes)
    if problem is None:
      yield rec
      return
    self._rejected.inc()
    dead = DeadLetter.make(getattr(rec, "id", ""), source=getattr(rec, "source", "") or "", stage="write",
                           reason=problem, text=getattr(rec, "text", ""))
    if self._columns.windows and isinstance(rec, EmbeddingRecord) and is_split(rec):
      yield beam.pvalue.TaggedOutput(WINDOW_FAILED, (rec.parent_id, dead))
      return
    if self._columns.windows and isinstance(rec, EmbeddingRecord) and rec.num_windows == 1 and rec.parent_id:
      dead = dead._replace(id=rec.parent_id)  # a text in one window (<id>#0): the record itself
    yield beam.pvalue.TaggedOutput(DEAD_LETTER_TAG, dead)


class ValidateEmbeddings(beam.PTransform):
  """Splits EmbeddingRecords into writable ones and write-stage dead letters (see row_problem), whole records.

  Returns Validated: `result.valid` (EmbeddingRecord) and `result.dead_letters` (DeadLetter), which also unpacks
  as `valid, dead_letters = ...`. Use the dim and columns of the WriteEmbeddings that follows.
  """

  def __init__(self, dim: int, columns: OutputColumns = OutputColumns(), max_id_bytes: Optional[int] = None):
    super().__init__()
    check_dim(dim)
    self._windows = columns.windows
    self._fn = ValidateEmbeddingsFn(dim, columns, max_id_bytes)

  def expand(self, pcoll) -> Validated:
    checked = pcoll | "Validate" >> beam.ParDo(self._fn).with_outputs(DEAD_LETTER_TAG, WINDOW_FAILED, main=VALID_TAG)
    if not self._windows:
      return Validated(checked[VALID_TAG], checked[DEAD_LETTER_TAG])
    valid, whole_dead = (checked[VALID_TAG], checked[WINDOW_FAILED]) | "WholeRecords" >> MergeWindows("rows", False)
    dead = (checked[DEAD_LETTER_TAG], whole_dead) | "AllDeadLetters" >> beam.Flatten()
    return Validated(valid, dead)
