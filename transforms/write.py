"""Writing the pipeline's outputs: embeddings (Parquet or TFRecord) and dead letters (JSON lines).

Embedding rows must be checked with ValidateEmbeddings (transforms/validate.py) before WriteEmbeddings: the
validation covers everything the sink needs, so the sink never fails on a row that passed, and the rows are not
checked again here. A row that skipped the validation and cannot be converted (wrong types or shapes, non-finite
floats) fails the pipeline, naming ValidateEmbeddings, rather than being written corrupt. The columns and their
types are those of the column table (formats/columns.py); the file formats and names are in formats/sinks.py
and formats/output_files.py.

Files are written under temporary names into a staging directory (WriteStaged), each with its size and SHA-256
known as it is written, and moved to their final names by commit_files: in the job, only once its checks passed
(snapshot/commit.py), so a failed run leaves the earlier output as it was.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import random
import uuid
from typing import Iterator, Mapping, Optional

import apache_beam as beam
import numpy as np
import pyarrow as pa
from apache_beam.metrics import Metrics
from apache_beam.transforms.window import GlobalWindows

from formats import columns as columns_lib
from formats import sinks
from formats.columns import OutputColumns
from formats.output_files import (EMBEDDINGS, ERRORS, FILE_KINDS, OUTPUT_FORMATS, check_output_prefix,
                                  staging_dir as staging_dir_path)
from formats.records import DeadLetter, EmbeddingRecord
from snapshot.staging import WrittenFile, close_staged, commit_files, delete_staging_dir, open_staged
from transforms.checkpoint import WriteParts
from transforms.names import NAMESPACE as METRICS_NAMESPACE
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


class _WritePerBundleFn(beam.DoFn):
  """Elements -> one staged file per bundle (none for an empty bundle); emits its WrittenFile."""

  def __init__(self, staging_dir: str, kind: str, sink: sinks.OutputSink):
    super().__init__()
    self._staging_dir = staging_dir
    self._kind = kind
    self._sink = sink
    self._open = None

  def start_bundle(self):
    self._open = None

  def process(self, element):
    if self._open is None:
      sink = copy.copy(self._sink)
      path, handle = open_staged(self._staging_dir, self._kind, sink)
      self._open = [sink, path, handle, 0]
    sink = self._open[0]
    sink.write(element)
    self._open[3] += sink.rows(element)

  def finish_bundle(self):
    if self._open is not None:
      sink, path, handle, rows = self._open
      self._open = None
      yield GlobalWindows.windowed_value(close_staged(self._kind, path, handle, sink, rows))


def _pieces(element, count: int) -> list:
  """A batch of rows (a pyarrow Table: one row group) in up to `count` slices of nearly equal rows, so that the
  shards share its rows rather than one shard taking the whole batch; any other element (one row) as it is."""
  if not isinstance(element, pa.Table) or element.num_rows < 2 or count < 2:
    return [element]
  n = min(count, element.num_rows)
  bounds = [element.num_rows * i // n for i in range(n + 1)]
  return [element.slice(start, end - start) for start, end in zip(bounds, bounds[1:])]


class _AssignShardFn(beam.DoFn):
  """Element -> (shard, element), round robin over `num_shards` from a random start per bundle; a batch of rows is
  first cut into one slice per shard (_pieces)."""

  def __init__(self, num_shards: int):
    super().__init__()
    self._num_shards = num_shards
    self._next = 0

  def start_bundle(self):
    self._next = random.randrange(self._num_shards)

  def process(self, element):
    for piece in _pieces(element, self._num_shards):
      self._next = (self._next + 1) % self._num_shards
      yield self._next, piece


def _write_shard(keyed, staging_dir: str, kind: str, sink: sinks.OutputSink) -> Iterator[WrittenFile]:
  """(shard, elements) -> one staged file holding them (an empty one when the shard got none)."""
  _, elements = keyed
  sink = copy.copy(sink)
  path, handle = open_staged(staging_dir, kind, sink)
  rows = 0
  for element in elements:
    if element is not None:  # the placeholder every shard gets (see WriteStaged)
      sink.write(element)
      rows += sink.rows(element)
  yield close_staged(kind, path, handle, sink, rows)


class WriteStaged(beam.PTransform):
  """Elements -> files in `staging_dir` through `sink`; returns a PCollection of WrittenFile.

  num_shards 0: one file per bundle, written where the bundle is processed (no shuffle). num_shards N: the elements
  are spread over N files through a GroupByKey, and each of the N files exists, also without elements. A retried
  bundle writes new files under new names: only the files of the attempts that succeeded come out. The files get
  their final names when the run commits them (commit_files).
  """

  def __init__(self, staging_dir: str, kind: str, sink: sinks.OutputSink, num_shards: int = 0):
    super().__init__()
    if kind not in FILE_KINDS:
      raise ValueError(f"file kind must be one of {FILE_KINDS}, got {kind!r}")
    if num_shards < 0:
      raise ValueError(f"num_shards must be >= 0, got {num_shards}")
    self._staging_dir = staging_dir
    self._kind = kind
    self._sink = sink
    self._num_shards = num_shards

  def expand(self, pcoll):
    if not self._num_shards:
      return pcoll | "WriteBundles" >> beam.ParDo(_WritePerBundleFn(self._staging_dir, self._kind, self._sink))
    every_shard = pcoll.pipeline | "EveryShard" >> beam.Create([(i, None) for i in range(self._num_shards)])
    return ((pcoll | "AssignShards" >> beam.ParDo(_AssignShardFn(self._num_shards)), every_shard)
            | "WithEveryShard" >> beam.Flatten()
            | "GroupShards" >> beam.GroupByKey()
            | "WriteShards" >> beam.FlatMap(_write_shard, self._staging_dir, self._kind, self._sink))


def _commit(written: list, output_prefix: str, staging_dir: str, kinds: Mapping[str, sinks.OutputSink]):
  committed = commit_files(output_prefix, staging_dir, written, kinds)
  delete_staging_dir(staging_dir)
  return [w.path for w in committed]


def embedding_sink(config: WriteConfig) -> sinks.OutputSink:
  """The sink of the embedding files of `config`'s format."""
  return sinks.ParquetSink(config.parquet_schema()) if config.format == "parquet" else sinks.TFRecordSink()


class WriteEmbeddings(beam.PTransform):
  """Writes EmbeddingRecords to PREFIX-SSSSS-of-NNNNN.parquet or .tfrecord.

  Rows must already have passed ValidateEmbeddings with the same dim and columns. Counter
  bert_embed/records_written counts the rows handed to the sink.

  With `staging_dir`, the files stay there under temporary names and the output is a PCollection of WrittenFile
  (the job commits them with commit_files once its checks passed). Without, this transform commits them itself
  (replacing the prefix's earlier embedding files) and returns the final file names. `parts` (Parquet, with
  `staging_dir`, num_shards 0): the staged files are the run's checkpoints (transforms/checkpoint.py WriteParts).
  """

  def __init__(self, output_prefix: str, config: WriteConfig, staging_dir: Optional[str] = None,
               parts: bool = False):
    super().__init__()
    check_output_prefix(output_prefix)
    if parts and (staging_dir is None or config.format != "parquet" or config.num_shards):
      raise ValueError("parts need a staging_dir, Parquet and num_shards 0")
    self._prefix = output_prefix
    self._config = config
    self._staging_dir = staging_dir
    self._parts = parts

  def expand(self, pcoll):
    if self._parts:
      config = self._config
      return pcoll | "Parts" >> WriteParts(self._staging_dir, config.columns, config.dim, config.parquet_schema())
    size = max(1, int(self._config.batch_bytes))
    batches = pcoll | "Batch" >> beam.BatchElements(
        min_batch_size=size, max_batch_size=size, element_size_fn=record_bytes)
    config = self._config
    if config.format == "parquet":
      encoded = batches | "ToArrow" >> beam.ParDo(_ToArrowTableFn(config))
    else:
      encoded = batches | "ToExamples" >> beam.ParDo(_ToExamplesFn(config))
    return encoded | "Write" >> _Write(self._prefix, EMBEDDINGS, embedding_sink(config), config.num_shards,
                                       self._staging_dir)


class _Write(beam.PTransform):
  """WriteStaged into `staging_dir`, or into a staging directory of its own followed by the commit."""

  def __init__(self, output_prefix: str, kind: str, sink: sinks.OutputSink, num_shards: int,
               staging_dir: Optional[str]):
    super().__init__()
    self._prefix = output_prefix
    self._kind = kind
    self._sink = sink
    self._num_shards = num_shards
    self._staging_dir = staging_dir

  def expand(self, pcoll):
    staging = self._staging_dir or staging_dir_path(self._prefix, uuid.uuid4().hex)
    written = pcoll | "Staged" >> WriteStaged(staging, self._kind, self._sink, self._num_shards)
    if self._staging_dir is not None:
      return written
    return (written
            | "AllStaged" >> beam.combiners.ToList()
            | "Commit" >> beam.FlatMap(_commit, self._prefix, staging, {self._kind: self._sink}))


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
  """Writes DeadLetters to PREFIX-errors-SSSSS-of-NNNNN.jsonl, one to_json() per line.

  An empty input still yields one empty shard. Counter bert_embed/records_dead_lettered counts lines. With
  `staging_dir`, as WriteEmbeddings: the files stay staged and the output is their WrittenFiles.
  """

  def __init__(self, output_prefix: str, num_shards: int = 0, staging_dir: Optional[str] = None):
    super().__init__()
    check_output_prefix(output_prefix)
    if num_shards < 0:
      raise ValueError(f"num_shards must be >= 0, got {num_shards}")
    self._prefix = output_prefix
    self._num_shards = num_shards
    self._staging_dir = staging_dir

  def expand(self, pcoll):
    return (pcoll
            | "ToJsonLines" >> beam.ParDo(_DeadLetterLineFn())
            | "WriteJsonLines" >> _Write(self._prefix, ERRORS, ERRORS_SINK, self._num_shards, self._staging_dir))


ERRORS_SINK = sinks.JsonLinesSink()
