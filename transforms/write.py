"""Writing the pipeline's outputs: embeddings (Parquet or TFRecord) and dead letters (JSON lines).

Embedding rows must be checked with ValidateEmbeddings (transforms/validate.py) before WriteEmbeddings: the
validation covers everything the sink needs, so the sink never fails on a row that passed, and the rows are not
checked again here. A row that skipped the validation and cannot be converted (wrong types or shapes, non-finite
floats) fails the pipeline, naming ValidateEmbeddings, rather than being written corrupt. The columns and their
types are those of the column table (formats/columns.py); the sinks and file names are in formats/sinks.py
and formats/output_files.py.
"""
from __future__ import annotations

import dataclasses
import json
from typing import Iterator, Mapping, Optional

import apache_beam as beam
import numpy as np
import pyarrow as pa
from apache_beam.metrics import Metrics

from formats import columns as columns_lib
from formats import sinks
from formats.columns import OutputColumns
from formats.output_files import OUTPUT_FORMATS, check_output_prefix
from transforms.names import NAMESPACE as METRICS_NAMESPACE
from formats.records import DeadLetter, EmbeddingRecord
from transforms.validate import unwritable

# Rows are grouped into batches of about this many bytes; each Parquet batch becomes a row group.
DEFAULT_BATCH_BYTES = 32 << 20


@dataclasses.dataclass(frozen=True)
class WriteConfig:
  """What WriteEmbeddings writes: the format, the embedding length, the shard count (0: the runner decides), the
  columns, and the Parquet footer's key-value metadata (TFRecord has no place for it)."""
  format: str
  dim: int
  num_shards: int = 0
  columns: OutputColumns = OutputColumns()
  file_metadata: Optional[Mapping[str, str]] = None
  batch_bytes: int = DEFAULT_BATCH_BYTES

  def __post_init__(self):
    if self.format not in OUTPUT_FORMATS:
      raise ValueError(f"output format must be one of {OUTPUT_FORMATS}, got {self.format!r}")
    columns_lib.check_dim(self.dim)
    if self.num_shards < 0:
      raise ValueError(f"num_shards must be >= 0, got {self.num_shards}")

  def parquet_schema(self) -> pa.Schema:
    return columns_lib.parquet_schema(self.columns, self.dim, self.file_metadata)


def record_bytes(rec: EmbeddingRecord) -> int:
  """Approximate in-memory size of a row, used to size batches."""
  size = 128 + sum(len(s) for s in (rec.id, rec.text) if isinstance(s, str))
  for array in (rec.embedding, rec.token_ids, rec.sequence_output, rec.mlm_token_scores):
    if array is not None:
      size += getattr(array, "nbytes", 4 * np.size(array))
  return size


class _ToArrowTableFn(beam.DoFn):
  """A batch of rows -> one pyarrow.Table (one Parquet row group)."""

  def __init__(self, config: WriteConfig):
    super().__init__()
    self._config = config
    self._schema = config.parquet_schema()
    self._written = Metrics.counter(METRICS_NAMESPACE, "records_written")

  def process(self, batch: list[EmbeddingRecord]) -> Iterator[pa.Table]:
    columns, dim = self._config.columns, self._config.dim
    try:
      table = columns_lib.records_to_table(batch, columns, dim, self._schema)
    except (ValueError, TypeError, pa.ArrowException) as e:
      raise unwritable(batch, columns, dim, e) from e
    self._written.inc(table.num_rows)
    yield table


class _ToExamplesFn(beam.DoFn):
  """A batch of rows -> serialized tf.Examples."""

  def __init__(self, config: WriteConfig):
    super().__init__()
    self._config = config
    self._encoder = None
    self._written = Metrics.counter(METRICS_NAMESPACE, "records_written")

  def setup(self):
    from tfx_bsl.coders import example_coder  # pylint: disable=import-outside-toplevel
    self._encoder = example_coder.RecordBatchToExamplesEncoder()

  def process(self, batch: list[EmbeddingRecord]) -> Iterator[bytes]:
    columns, dim = self._config.columns, self._config.dim
    try:
      examples = columns_lib.records_to_examples(batch, columns, dim, self._encoder)
    except (ValueError, TypeError, pa.ArrowException) as e:
      raise unwritable(batch, columns, dim, e) from e
    self._written.inc(len(examples))
    yield from examples


class WriteEmbeddings(beam.PTransform):
  """Writes EmbeddingRecords to PREFIX-SSSSS-of-NNNNN.parquet or .tfrecord; returns the file names.

  Rows must already have passed ValidateEmbeddings with the same dim and columns. Counter
  bert_embed/records_written counts the rows handed to the sink.
  """

  def __init__(self, output_prefix: str, config: WriteConfig):
    super().__init__()
    check_output_prefix(output_prefix)
    self._prefix = output_prefix
    self._config = config

  def expand(self, pcoll):
    size = max(1, int(self._config.batch_bytes))
    batches = pcoll | "Batch" >> beam.BatchElements(
        min_batch_size=size, max_batch_size=size, element_size_fn=record_bytes)
    config = self._config
    if config.format == "parquet":
      return (batches
              | "ToArrow" >> beam.ParDo(_ToArrowTableFn(config))
              | "WriteParquet" >> sinks.WriteFiles(
                  sinks.ParquetSink(self._prefix, config.parquet_schema(), config.num_shards)))
    return (batches
            | "ToExamples" >> beam.ParDo(_ToExamplesFn(config))
            | "WriteTFRecord" >> sinks.WriteFiles(sinks.TFRecordSink(self._prefix, config.num_shards)))


def dead_letter_line(dead_letter: DeadLetter) -> bytes:
  """One JSON line (without newline) for a dead letter, always valid UTF-8.

  DeadLetter.to_json keeps non-ASCII characters; a lone surrogate (from text decoded with
  surrogateescape) cannot be encoded that way, so such a record falls back to ASCII escapes.
  """
  line = dead_letter.to_json()
  try:
    return line.encode("utf-8")
  except UnicodeEncodeError:
    return json.dumps(dead_letter._asdict(), ensure_ascii=True, sort_keys=True).encode("ascii")


class _DeadLetterLineFn(beam.DoFn):

  def __init__(self):
    super().__init__()
    self._dead_lettered = Metrics.counter(METRICS_NAMESPACE, "records_dead_lettered")

  def process(self, dead_letter: DeadLetter) -> Iterator[bytes]:
    self._dead_lettered.inc()
    yield dead_letter_line(dead_letter)


class WriteDeadLetters(beam.PTransform):
  """Writes DeadLetters to PREFIX-errors-SSSSS-of-NNNNN.jsonl, one to_json() per line; returns the file names.

  An empty input still yields one empty shard. Counter bert_embed/records_dead_lettered counts lines.
  """

  def __init__(self, output_prefix: str, num_shards: int = 0):
    super().__init__()
    check_output_prefix(output_prefix)
    if num_shards < 0:
      raise ValueError(f"num_shards must be >= 0, got {num_shards}")
    self._prefix = output_prefix
    self._num_shards = num_shards

  def expand(self, pcoll):
    return (pcoll
            | "ToJsonLines" >> beam.ParDo(_DeadLetterLineFn())
            | "WriteJsonLines" >> sinks.WriteFiles(sinks.JsonLinesSink(self._prefix, self._num_shards)))
