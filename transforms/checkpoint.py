"""WriteCheckpoints: the rows a run encodes, persisted progressively into its staging directory (for a resume).

Rows are gathered as they leave the encoder and written as one checkpoint (formats/checkpoint_files.py) once
MAX_ROWS are waiting or the oldest has waited MAX_SECONDS (checked as rows arrive), and at the end of each bundle.
Only rows that would pass ValidateEmbeddings are kept (the others are dead-lettered by the run, and encoded again
by a rerun), and only whole records: windows of a long text are not checkpointed (a rerun encodes all of them).
A write that fails is logged and skipped: checkpoints save work, they never fail the run.
"""
from __future__ import annotations

import logging
import time
from typing import Mapping

import apache_beam as beam

from formats import checkpoint_files
from formats import columns as columns_lib
from formats.columns import OutputColumns
from transforms.names import NAMESPACE
from transforms.validate import row_problem

MAX_ROWS = 1000
MAX_SECONDS = 10.0
_LOG = logging.getLogger(__name__)


class _CheckpointFn(beam.DoFn):

  def __init__(self, staging_dir: str, columns: OutputColumns, dim: int, metadata: Mapping[str, str]):
    super().__init__()
    self._staging_dir = staging_dir
    self._columns = columns
    self._dim = dim
    self._metadata = dict(metadata)
    self._rows = []
    self._since = 0.0
    self._written = beam.metrics.Metrics.counter(NAMESPACE, "records_checkpointed")

  def start_bundle(self):
    self._rows, self._since = [], 0.0

  def process(self, row):
    if row.parent_id is not None or row_problem(row, self._columns, self._dim) is not None:
      return
    if not self._rows:
      self._since = time.monotonic()
    self._rows.append(row)
    if len(self._rows) >= MAX_ROWS or time.monotonic() - self._since >= MAX_SECONDS:
      self._flush()

  def finish_bundle(self):
    self._flush()

  def _flush(self):
    rows, self._rows = self._rows, []
    if not rows:
      return
    schema = columns_lib.parquet_schema(self._columns, self._dim, self._metadata)
    try:
      table = columns_lib.records_to_table(rows, self._columns, self._dim, schema)

      def write(handle):
        import pyarrow.parquet as pq  # pylint: disable=import-outside-toplevel
        pq.write_table(table, handle, compression="snappy", write_page_checksum=True)

      checkpoint_files.write_checkpoint(self._staging_dir, write, len(rows))
    except Exception as e:  # pylint: disable=broad-except  (a full disk: the run goes on, a rerun encodes these)
      _LOG.warning("could not write a checkpoint of %d rows into %s: %s", len(rows), self._staging_dir, e)
      return
    self._written.inc(len(rows))


class WriteCheckpoints(beam.PTransform):
  """EmbeddingRecords as they leave the encoder -> checkpoints in `staging_dir` (module docstring).

  `columns`: the checkpoint's columns (the output's, uncompacted, without text); `metadata`: the footer's key-value
  metadata (the resume key under the embedding fingerprint's key). Output: nothing worth consuming.
  """

  def __init__(self, staging_dir: str, columns: OutputColumns, dim: int, metadata: Mapping[str, str]):
    super().__init__()
    self._fn = _CheckpointFn(staging_dir, columns, dim, metadata)

  def expand(self, rows):
    return rows | "Checkpoint" >> beam.ParDo(self._fn)
