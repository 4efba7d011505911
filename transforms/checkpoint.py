"""The rows a run encodes, persisted progressively into its staging directory (for a resume), in one of two forms
(formats/checkpoint_files.py; snapshot/resume.py checkpoint_form decides which).

WriteParts: the run's staged embedding shards are its checkpoints. The output rows (validated, in the output's
form) are written as they reach the write, one staged shard closed and published under a checkpoint's name once
MAX_ROWS are waiting or the oldest has waited MAX_SECONDS (checked as rows arrive), and at the end of each bundle;
each comes out as its WrittenFile, which the commit moves to its final name. No second copy of the vectors: the
disk a run needs while it runs is its output's. A write that fails fails the bundle, as any write of the output.

WriteCheckpoints: separate checkpoints, where the write waits for a barrier. Rows are gathered as they leave the
encoder and written as one checkpoint at the same cadence. Only rows that would pass ValidateEmbeddings are kept
(the others are dead-lettered by the run, and encoded again by a rerun), and only whole records: windows of a long
text are not checkpointed (a rerun encodes all of them). A write that fails is logged and skipped: these
checkpoints save work, they never fail the run.
"""
from __future__ import annotations

import logging
import time
from typing import Mapping

import apache_beam as beam

import pyarrow as pa
from apache_beam.transforms.window import GlobalWindows

from formats import checkpoint_files
from formats import columns as columns_lib
from formats import sinks
from formats.columns import OutputColumns
from formats.output_files import EMBEDDINGS
from snapshot.staging import WrittenFile
from transforms.names import NAMESPACE
from transforms.validate import row_problem, unwritable

MAX_ROWS = 1000
MAX_SECONDS = 10.0
_LOG = logging.getLogger(__name__)


def write_parquet(staging_dir: str, table: pa.Table, schema: pa.Schema) -> str:
  """One checkpoint of `table` (one row group) through the output's Parquet sink; returns its published path."""
  sink = sinks.ParquetSink(schema)

  def write(handle):
    sink.open(handle)
    sink.write(table)
    sink.flush()

  return checkpoint_files.write_checkpoint(staging_dir, write, table.num_rows)


class _BufferedRowsFn(beam.DoFn):
  """Rows gathered and handed to `_write` once MAX_ROWS wait or the oldest has waited MAX_SECONDS (checked as rows
  arrive), and at the end of each bundle; what `_write` returns, when not None, is emitted."""

  def __init__(self):
    super().__init__()
    self._rows = []
    self._since = 0.0

  def _keeps(self, row) -> bool:  # pylint: disable=unused-argument
    return True

  def _write(self, rows: list):
    raise NotImplementedError

  def start_bundle(self):
    self._rows, self._since = [], 0.0

  def process(self, row):
    if not self._keeps(row):
      return
    if not self._rows:
      self._since = time.monotonic()
    self._rows.append(row)
    if len(self._rows) >= MAX_ROWS or time.monotonic() - self._since >= MAX_SECONDS:
      written = self._write_waiting()
      if written is not None:
        yield written

  def finish_bundle(self):
    written = self._write_waiting()
    if written is not None:
      yield GlobalWindows.windowed_value(written)

  def _write_waiting(self):
    rows, self._rows = self._rows, []
    return self._write(rows) if rows else None


class _CheckpointFn(_BufferedRowsFn):

  def __init__(self, staging_dir: str, columns: OutputColumns, dim: int, metadata: Mapping[str, str]):
    super().__init__()
    self._staging_dir = staging_dir
    self._columns = columns
    self._dim = dim
    self._metadata = dict(metadata)
    self._written = beam.metrics.Metrics.counter(NAMESPACE, "records_checkpointed")

  def _keeps(self, row) -> bool:
    return row.parent_id is None and row_problem(row, self._columns, self._dim) is None

  def _write(self, rows: list) -> None:
    schema = columns_lib.parquet_schema(self._columns, self._dim, self._metadata)
    try:
      write_parquet(self._staging_dir, columns_lib.records_to_table(rows, self._columns, self._dim, schema), schema)
    except Exception as e:  # pylint: disable=broad-except  (a full disk: the run goes on, a rerun encodes these)
      _LOG.warning("could not write a checkpoint of %d rows into %s: %s", len(rows), self._staging_dir, e)
      return
    self._written.inc(len(rows))


class WriteCheckpoints(beam.PTransform):
  """EmbeddingRecords as they leave the encoder -> checkpoints in `staging_dir` (module docstring).

  `columns`: the checkpoint's columns (the output's, uncompacted, without text); `metadata`: the footer's key-value
  metadata (the resume key under RESUME_KEY). Output: nothing worth consuming.
  """

  def __init__(self, staging_dir: str, columns: OutputColumns, dim: int, metadata: Mapping[str, str]):
    super().__init__()
    self._fn = _CheckpointFn(staging_dir, columns, dim, metadata)

  def expand(self, rows):
    return rows | "Checkpoint" >> beam.ParDo(self._fn)


class _PartsFn(_BufferedRowsFn):
  """Validated output rows -> staged shards published as checkpoints, each emitted as its WrittenFile."""

  def __init__(self, staging_dir: str, columns: OutputColumns, dim: int, schema: pa.Schema):
    super().__init__()
    self._staging_dir = staging_dir
    self._columns = columns
    self._dim = dim
    self._schema = schema
    self._written = beam.metrics.Metrics.counter(NAMESPACE, "records_written")
    self._checkpointed = beam.metrics.Metrics.counter(NAMESPACE, "records_checkpointed")

  def _write(self, rows: list) -> WrittenFile:
    try:
      table = columns_lib.records_to_table(rows, self._columns, self._dim, self._schema)
    except (ValueError, TypeError, pa.ArrowException) as e:
      raise unwritable(rows, self._columns, self._dim, e) from e
    path = write_parquet(self._staging_dir, table, self._schema)
    name = checkpoint_files.parse_checkpoint_name(path)
    self._written.inc(len(rows))
    self._checkpointed.inc(len(rows))
    return WrittenFile(EMBEDDINGS, path, name.size_bytes, name.sha256, len(rows))


class WriteParts(beam.PTransform):
  """Validated EmbeddingRecords -> staged embedding shards that are the run's checkpoints (module docstring); returns
  their WrittenFiles. `schema`: the output's Parquet schema, its footer metadata with the resume key (RESUME_KEY)."""

  def __init__(self, staging_dir: str, columns: OutputColumns, dim: int, schema: pa.Schema):
    super().__init__()
    self._fn = _PartsFn(staging_dir, columns, dim, schema)

  def expand(self, rows):
    return rows | "WriteParts" >> beam.ParDo(self._fn)
