"""Reading the rows of a previous output (`--previous`) back as EmbeddingRecords, checksums verified.

Only the columns a run needs are read (an OutputColumns' `carried()` columns, never the text: carried rows take it
from the input), converted by the column table (formats/columns.py): Parquet row groups column-wise, TFRecord
files in batches decoded by tfx-bsl. Parquet pages are read with their CRC checksums verified, TFRecord records
with theirs. A file (or a row group of one) that cannot be read, fails a checksum or does not parse is reported on
`PreviousRows.unreadable` instead of failing the pipeline.
"""
from __future__ import annotations

import logging
from typing import Iterable, NamedTuple, Sequence

import apache_beam as beam
import pyarrow.parquet as pq
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from formats import columns as columns_lib
from formats.columns import KEY_COLUMNS, OutputColumns
from formats.tfrecord_input import verified_payloads

UNREADABLE = "unreadable"
TFRECORD_BATCH = 1024  # tf.Examples decoded at a time
_LOG = logging.getLogger(__name__)


def _open(path: str):
  return FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED)


def _unreadable(path: str, error: Exception) -> beam.pvalue.TaggedOutput:
  reason = f"{type(error).__name__}: {error}"
  _LOG.warning("previous output %s cannot be read (%s): the records in it are encoded again", path, reason)
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


def _read_row_group(part: tuple[str, int], dim: int, names: Sequence[str]) -> Iterable[object]:
  """One row group, its page checksums verified, reading only the wanted columns the file has (e.g. no window
  columns: not windowed); on any failure one UNREADABLE output and no rows."""
  path, index = part
  try:
    with _open(path) as f:
      parquet = pq.ParquetFile(f, page_checksum_verification=True)
      present = [name for name in names if name in parquet.schema_arrow.names]
      table = parquet.read_row_group(index, columns=present)
    rows = columns_lib.arrow_to_records(table, present, dim)
  except Exception as e:  # pylint: disable=broad-except  (checksum failures, undecodable pages, bad values)
    yield _unreadable(f"{path} (row group {index})", e)
    return
  yield from rows


def _read_tfrecords(path: str, dim: int, names: Sequence[str]) -> Iterable[object]:
  """One TFRecord file, each record's length and data CRC verified; on any failure one UNREADABLE output (the
  verified batches before it have been emitted and are used)."""
  decoder = columns_lib.example_decoder(names)
  try:
    with _open(path) as f:
      batch = []
      for record in verified_payloads(f):
        batch.append(record)
        if len(batch) >= TFRECORD_BATCH:
          yield from columns_lib.examples_to_records(batch, names, dim, decoder)
          batch = []
      yield from columns_lib.examples_to_records(batch, names, dim, decoder)
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
    columns: the columns to read (their `carried()` ones); id and text_sha256 always.
  """

  def __init__(self, files: Sequence[str], output_format: str, dim: int, columns: OutputColumns = OutputColumns()):
    super().__init__()
    if output_format not in ("parquet", "tfrecord"):
      raise ValueError(f"previous output format must be parquet or tfrecord, got {output_format!r}")
    self._files = list(files)
    self._format = output_format
    self._dim = dim
    self._names = tuple(dict.fromkeys(KEY_COLUMNS + columns.carried()))

  def expand(self, pbegin) -> PreviousRows:
    files = pbegin | "PreviousFiles" >> beam.Create(self._files)
    if self._format == "tfrecord":
      read = (files
              | "SpreadFiles" >> beam.Reshuffle()
              | "ReadTFRecords" >> beam.FlatMap(_read_tfrecords, self._dim, self._names)
              .with_outputs(UNREADABLE, main="rows"))
      return PreviousRows(read.rows, read[UNREADABLE])
    parts = files | "RowGroups" >> beam.FlatMap(_row_groups).with_outputs(UNREADABLE, main="parts")
    read = (parts.parts
            | "SpreadRowGroups" >> beam.Reshuffle()
            | "ReadRowGroups" >> beam.FlatMap(_read_row_group, self._dim, self._names)
            .with_outputs(UNREADABLE, main="rows"))
    unreadable = (parts[UNREADABLE], read[UNREADABLE]) | "Unreadable" >> beam.Flatten()
    return PreviousRows(read.rows, unreadable)
