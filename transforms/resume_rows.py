"""Resuming: the records a killed or failed run already encoded are taken from its checkpoints, the rest encoded.

The checkpoints (formats/checkpoint_files.py) are read like a previous output (transforms/previous_rows.py):
each file's size and SHA-256 are verified against its name, its footer's resume key against the run's, its pages'
checksums as they are read; what fails is reported as unreadable and its records are encoded. A record is resumed
when a checkpointed row has its id and its text's SHA-256 (with --dedupe-texts, which checkpoints one row per
distinct text under the text's key: its text's SHA-256 alone). Rows written twice (a retried bundle) are alike:
one is kept. A resumed row takes the text and file name from the input, as a carried row does, and must pass the
same checks (transforms/incremental.py carried_row_problem) or its record is encoded. Counter records_resumed.
Checkpoints that are a run's staged shards hold rows in the output's form: those are written again like carried
rows (pipeline/run.py); separate checkpoints hold them uncompacted: those go on with the encoded rows.
"""
from __future__ import annotations

from typing import Mapping, NamedTuple

import apache_beam as beam

from formats.columns import OutputColumns
from formats.output_files import RESUME_KEY
from formats.records import text_sha256
from transforms.incremental import carried_row_problem
from transforms.names import NAMESPACE
from snapshot.manifest import ShardIdentity
from transforms.previous_rows import ReadPreviousEmbeddings

RESUMED = "resumed"
_NEW, _OLD = "new", "old"


class ResumeResult(NamedTuple):
  to_encode: beam.PCollection  # TextRecord: what no checkpoint holds
  resumed: beam.PCollection  # EmbeddingRecord: rows taken from the checkpoints, in their form (output or uncompacted)
  unreadable: beam.PCollection  # (file, reason) of each checkpoint (or part) that could not be used


def _sha(record) -> str:
  return text_sha256(record.text, record.text_pair) if isinstance(record.text, str) else ""


class _MatchFn(beam.DoFn):
  """(key, {new: [TextRecord], old: [EmbeddingRecord]}) -> records to encode; resumed rows (RESUMED)."""

  def __init__(self, columns: OutputColumns, dim: int, keep_text: bool):
    super().__init__()
    self._columns = columns
    self._dim = dim
    self._keep_text = keep_text
    self._resumed = beam.metrics.Metrics.counter(NAMESPACE, "records_resumed")

  def process(self, element):
    _, grouped = element
    olds = list(grouped[_OLD])
    for record in grouped[_NEW]:
      sha = _sha(record)
      row = next((o for o in olds if o.text_sha256 == sha), None)
      if row is not None:
        row = row._replace(id=record.id, source=record.source, text=record.text if self._keep_text else None)
        if carried_row_problem(row, self._dim, self._columns, False) is None:
          self._resumed.inc()
          yield beam.pvalue.TaggedOutput(RESUMED, row)
          continue
      yield record


class ResumeFromCheckpoints(beam.PTransform):
  """TextRecords -> ResumeResult against `files` ({checkpoint: ShardIdentity}).

  `columns`: the checkpoints' columns; `dim`: the model's dimension; `by_text`: match on the text's SHA-256 alone
  (--dedupe-texts); `keep_text`: the resumed rows take the input's text (the output has a text column).
  """

  def __init__(self, files: Mapping[str, ShardIdentity], columns: OutputColumns, dim: int, *, by_text: bool = False,
               keep_text: bool = False):
    super().__init__()
    self._files = dict(files)
    self._columns = columns
    self._dim = dim
    self._by_text = by_text
    self._keep_text = keep_text

  def expand(self, records) -> ResumeResult:
    read = records.pipeline | "ReadCheckpoints" >> ReadPreviousEmbeddings(
        sorted(self._files), "parquet", self._dim, self._columns, self._files, footer_key=RESUME_KEY)
    if self._by_text:
      new = records | "KeyByText" >> beam.Map(lambda r: (_sha(r), r))
      old = read.rows | "KeyRowsByText" >> beam.Map(lambda r: (r.text_sha256, r))
    else:
      new = records | "KeyById" >> beam.Map(lambda r: ((str(r.id), _sha(r)), r))
      old = read.rows | "KeyRowsById" >> beam.Map(lambda r: ((r.id, r.text_sha256), r))
    matched = ({_NEW: new, _OLD: old}
               | "JoinCheckpoints" >> beam.CoGroupByKey()
               | "Match" >> beam.ParDo(_MatchFn(self._columns, self._dim, self._keep_text))
               .with_outputs(RESUMED, main="to_encode"))
    return ResumeResult(matched.to_encode, matched[RESUMED], read.unreadable)


class Resumed(NamedTuple):
  to_encode: object  # PCollection of TextRecord
  resumed: object = None  # PCollection of EmbeddingRecord, None without checkpoints to use
  unreadable: object = None  # PCollection of (checkpoint, reason), None without checkpoints to use


def resume_records(records, resume_plan, cfg) -> Resumed:
  """The records to encode, and the rows resumed from the plan's checkpoints (transforms/resume_rows.py)."""
  if not resume_plan.files:
    return Resumed(records)
  result = records | "Resume" >> ResumeFromCheckpoints(
      resume_plan.files, resume_plan.columns, cfg.model_info.dim, by_text=cfg.dedupe_texts,
      keep_text=cfg.output_columns.text)
  return Resumed(result.to_encode, result.resumed, result.unreadable)
