"""The output schema, in one table: every column of the embedding files and how it is stored, checked and read.

Each Column is named like its EmbeddingRecord field (and its Parquet column and tf.Example feature); it has a
storage kind (formats/column_kinds.py), the OutputColumns switch that writes it (None: always written) and a
check (formats/column_checks.py). From this table come the Parquet schema, the Arrow conversion for Parquet and
tf.Example (written by tfx-bsl), the decoding of a previous output's rows, and the validation of a row
(transforms/validate.py). The embedding's form (--output-dtype, --truncate-dim: formats/compact.py) is part of
OutputColumns: `resolved` gives the embedding column its kind and check. Which columns a run writes is an
OutputColumns value, built from the job's options (pipeline/config.py):

  switch          option                              columns
  (always)                                            id, num_tokens, truncated, text_sha256
  embeddings      (off with --no-embeddings)          embedding
  text            --keep-text                         text
  tokens          --emit-tokens                       token_ids, sequence_output
  mlm             --mlm-scores                        mlm_pll, mlm_scored_tokens, mlm_pseudo_perplexity
  mlm_per_token   --mlm-per-token (needs mlm)         mlm_token_scores
  windows         --long-text chunk --chunk-output rows  parent_id, chunk_index, chunk_start_piece, chunk_end_piece

Types that differ between the formats:

  column                  Parquet                          tf.Example
  embedding               list<float32> (float16: list<    float_list; float16/int8/binary: one bytes_list
                          halffloat>, int8: list<int8>,    value, the vector's bytes (formats/column_kinds.py)
                          binary: list<uint8>)
  truncated               bool                             int64_list [1]
  sequence_output         list<list<float32>>              float_list [num_tokens * H], row-major
  mlm_pll                 float64, not null                float_list [1] (float32: ~7 digits kept)
  mlm_pseudo_perplexity   float64, null when None          float_list [1]; feature omitted when None
  mlm_token_scores        list<float32>, items null at     float_list [num_tokens], NaN at [CLS]/[SEP]
                          [CLS]/[SEP] (NaN in the row)     (tf.Example has no nulls)
  text                    string, null when None           bytes_list, empty when None

Integers are int32 in Parquet and int64_list in tf.Example; strings are UTF-8. Use Parquet when mlm_pll's exact
float64 sum matters. A None pseudo-perplexity leaves the feature out of that row's Example: parse it with
`tf.io.FixedLenFeature([], tf.float32, default_value=float("nan"))` or a VarLenFeature.
"""
from __future__ import annotations

import dataclasses
import functools
import itertools
from typing import Callable, Iterable, Iterator, Mapping, Optional, Sequence

import numpy as np
import pyarrow as pa

from formats import column_checks as checks
from formats import column_kinds as kinds
from formats import compact
from formats.records import EmbeddingRecord

SWITCHES = ("embeddings", "text", "tokens", "mlm", "mlm_per_token", "windows")


@dataclasses.dataclass(frozen=True)
class OutputColumns:
  """Which optional columns a run writes (see the module docstring)."""
  embeddings: bool = True
  text: bool = False
  tokens: bool = False
  mlm: bool = False
  mlm_per_token: bool = False
  windows: bool = False
  dtype: str = compact.FLOAT32  # the embedding's form (formats/compact.py)
  truncate_dim: Optional[int] = None  # the embedding keeps its first dimensions (None: all)

  def __post_init__(self):
    if self.mlm_per_token and not self.mlm:
      raise ValueError("mlm_per_token=True needs mlm=True (per-token scores come with the MLM scores)")
    compact.check_dtype(self.dtype)
    if self.truncate_dim is not None:
      check_dim(self.truncate_dim)

  def writes(self, column: "Column") -> bool:
    return column.switch is None or getattr(self, column.switch)

  def resolved(self, column: "Column") -> "Column":
    """`column` as this run stores it: the embedding in its form."""
    if column.name != "embedding" or (self.dtype == compact.FLOAT32 and self.truncate_dim is None):
      return column
    return dataclasses.replace(column, kind=kinds.Vector(self.dtype, self.truncate_dim),
                               check=functools.partial(checks.compact_embedding, self.dtype, self.truncate_dim))

  @property
  def table(self) -> tuple["Column", ...]:
    """Every column (COLUMNS), resolved."""
    return tuple(self.resolved(c) for c in COLUMNS)

  @property
  def selected(self) -> tuple["Column", ...]:
    """The columns written, in file order."""
    return tuple(c for c in self.table if self.writes(c))

  def names(self) -> tuple[str, ...]:
    return tuple(c.name for c in self.selected)

  def carried(self) -> tuple[str, ...]:
    """The columns read back from a previous output for a row carried into this run (not text: the input has it)."""
    return tuple(c.name for c in self.selected if c.carried)

  @classmethod
  def combinations(cls) -> Iterator["OutputColumns"]:
    """Every valid OutputColumns (mlm_per_token only with mlm)."""
    for values in itertools.product((False, True), repeat=len(SWITCHES)):
      switches = dict(zip(SWITCHES, values))
      if not switches["mlm_per_token"] or switches["mlm"]:
        yield cls(**switches)


@dataclasses.dataclass(frozen=True)
class Column:
  name: str  # the EmbeddingRecord field, Parquet column and tf.Example feature
  kind: kinds.Kind
  check: Callable[[EmbeddingRecord, int], Optional[str]]  # why the field cannot be written, or None
  switch: Optional[str] = None  # the OutputColumns switch that writes it; None: always written
  null: str = kinds.NOT_NULL  # whether the field may be None, and how a tf.Example then stores it
  carried: bool = True  # read back from a previous output (see OutputColumns.carried)

  @property
  def nullable(self) -> bool:
    return self.null != kinds.NOT_NULL


def _named(check: Callable, name: str) -> Callable:
  return functools.partial(check, name)


COLUMNS = (
    Column("id", kinds.STRING, _named(checks.string, "id")),
    Column("embedding", kinds.VECTOR, checks.embedding, "embeddings"),
    Column("num_tokens", kinds.INT32, _named(checks.count, "num_tokens")),
    Column("truncated", kinds.BOOL, checks.truth_value),
    Column("text_sha256", kinds.STRING, _named(checks.string, "text_sha256")),
    Column("text", kinds.STRING, _named(checks.optional_string, "text"), "text", kinds.EMPTY, carried=False),
    Column("token_ids", kinds.TOKEN_IDS, checks.token_ids, "tokens"),
    Column("sequence_output", kinds.MATRIX, checks.sequence_output, "tokens"),
    Column("mlm_pll", kinds.FLOAT64, checks.mlm_pll, "mlm"),
    Column("mlm_scored_tokens", kinds.INT32, checks.mlm_scored_tokens, "mlm"),
    Column("mlm_pseudo_perplexity", kinds.FLOAT64, checks.mlm_pseudo_perplexity, "mlm", kinds.OMIT),
    Column("mlm_token_scores", kinds.TOKEN_SCORES, checks.mlm_token_scores, "mlm_per_token"),
    Column("parent_id", kinds.STRING, _named(checks.string, "parent_id"), "windows"),
    Column("chunk_index", kinds.INT32, _named(checks.count, "chunk_index"), "windows"),
    Column("chunk_start_piece", kinds.INT32, _named(checks.count, "chunk_start_piece"), "windows"),
    Column("chunk_end_piece", kinds.INT32, _named(checks.count, "chunk_end_piece"), "windows"),
)
BY_NAME = {c.name: c for c in COLUMNS}
KEY_COLUMNS = ("id", "text_sha256")
assert set(BY_NAME) <= set(EmbeddingRecord._fields)


def check_dim(dim: object) -> None:
  if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)) or dim <= 0:
    raise ValueError(f"dim must be a positive integer, got {dim!r}")


def parquet_schema(columns: OutputColumns, dim: int, file_metadata: Optional[Mapping[str, str]] = None) -> pa.Schema:
  """The Arrow schema of the Parquet files; `file_metadata` becomes the footer's key-value metadata.

  `dim` is not part of the Arrow types (the embedding is a plain list<float32>); callers record it in
  `file_metadata`.
  """
  check_dim(dim)
  fields = [pa.field(c.name, c.kind.parquet_type(), nullable=c.nullable) for c in columns.selected]
  metadata = {str(k): str(v) for k, v in (file_metadata or {}).items()}
  return pa.schema(fields, metadata=metadata or None)


def _values(records: Sequence[EmbeddingRecord], column: Column) -> list:
  values = [getattr(r, column.name) for r in records]
  if not column.nullable and any(v is None for v in values):
    raise ValueError(f"{column.name} is missing in a row")
  return values


def records_to_table(records: Sequence[EmbeddingRecord], columns: OutputColumns, dim: int,
                     schema: Optional[pa.Schema] = None) -> pa.Table:
  """Rows -> a table of parquet_schema(columns, dim) (or `schema`, for its metadata). Rows must be valid
  (transforms/validate.py); raises ValueError (or an Arrow error) on a row that cannot be converted."""
  schema = schema or parquet_schema(columns, dim)
  arrays = [c.kind.to_parquet(c.name, _values(records, c), dim) for c in columns.selected]
  return pa.Table.from_arrays(arrays, schema=schema)


def records_to_example_batch(records: Sequence[EmbeddingRecord], columns: OutputColumns, dim: int) -> pa.RecordBatch:
  """Rows as the list<binary> / list<int64> / list<float32> columns tfx-bsl encodes to tf.Examples.

  A None of an omitted feature (mlm_pseudo_perplexity) is a null list, which records_to_examples leaves out of
  that row's Example; a None text is an empty list.
  """
  selected = columns.selected
  arrays = [c.kind.to_example(c.name, _values(records, c), dim, c.null) for c in selected]
  return pa.RecordBatch.from_arrays(arrays, names=[c.name for c in selected])


def _encode_examples(batch: pa.RecordBatch, encoder) -> list[bytes]:
  """tfx-bsl's encoding, except that a null list leaves the feature out of that row's Example.

  (tfx-bsl itself writes a Feature with no value list for a null, which is neither a value nor an absent key.)
  Rows are encoded in groups that share the same null columns, and put back in order.
  """
  nullable = [i for i, column in enumerate(batch.columns) if column.null_count]
  if not nullable:
    return encoder.encode(batch)
  nulls = np.stack([batch.column(i).is_null().to_numpy(zero_copy_only=False) for i in nullable], axis=1)
  patterns, group_of_row = np.unique(nulls, axis=0, return_inverse=True)
  group_of_row = group_of_row.reshape(-1)
  examples: list[Optional[bytes]] = [None] * batch.num_rows
  for group, pattern in enumerate(patterns):
    rows = np.flatnonzero(group_of_row == group)
    dropped = {nullable[j] for j in np.flatnonzero(pattern)}
    kept = [i for i in range(batch.num_columns) if i not in dropped]
    for row, example in zip(rows, encoder.encode(batch.take(pa.array(rows)).select(kept))):
      examples[row] = example
  return examples


def records_to_examples(records: Sequence[EmbeddingRecord], columns: OutputColumns, dim: int,
                        encoder=None) -> list[bytes]:
  """Serialized tf.Examples, one per row, encoded column-wise by tfx-bsl (see records_to_example_batch)."""
  from tfx_bsl.coders import example_coder  # pylint: disable=import-outside-toplevel
  encoder = encoder or example_coder.RecordBatchToExamplesEncoder()
  return _encode_examples(records_to_example_batch(records, columns, dim), encoder)


_DEFAULTS = {"num_tokens": 0, "truncated": False, "embedding": None}  # for a read without these columns


def arrow_to_records(data, names: Sequence[str], dim: int,
                     columns: Optional[OutputColumns] = None) -> list[EmbeddingRecord]:
  """A Parquet table (or a RecordBatch tfx-bsl decoded from tf.Examples) -> EmbeddingRecords with the fields
  `names` (those the data lacks are None), the embedding in the form of `columns` (default float32)."""
  columns = columns or OutputColumns()
  present = [name for name in names if name in data.schema.names]
  fields = {name: columns.resolved(BY_NAME[name]).kind.decode(data.column(name), dim) for name in present}
  return [EmbeddingRecord(**{**_DEFAULTS, **{name: fields[name][i] for name in present}})
          for i in range(data.num_rows)]


_TFMD_TYPES = {kinds.BYTES: "BYTES", kinds.INT64: "INT", kinds.FLOAT: "FLOAT"}


def example_decoder(names: Sequence[str], columns: Optional[OutputColumns] = None):
  """A tfx-bsl decoder of serialized tf.Examples to a RecordBatch with the features `names` (null when absent;
  a feature of the wrong kind fails the decoding), the embedding in the form of `columns` (default float32)."""
  columns = columns or OutputColumns()
  from tensorflow_metadata.proto.v0 import schema_pb2  # pylint: disable=import-outside-toplevel
  from tfx_bsl.coders import example_coder  # pylint: disable=import-outside-toplevel
  schema = schema_pb2.Schema()
  for name in names:
    feature = schema.feature.add(name=name)
    feature.type = schema_pb2.FeatureType.Value(_TFMD_TYPES[columns.resolved(BY_NAME[name]).kind.feature])
  return example_coder.ExamplesToRecordBatchDecoder(schema.SerializeToString())


def examples_to_records(serialized: Sequence[bytes], names: Sequence[str], dim: int, decoder=None,
                        columns: Optional[OutputColumns] = None) -> list[EmbeddingRecord]:
  """Serialized tf.Examples -> EmbeddingRecords with the fields `names` (an omitted feature is None); `decoder`
  must be example_decoder(names, columns)."""
  if not serialized:
    return []
  batch = (decoder or example_decoder(names, columns)).DecodeBatch(list(serialized))
  return arrow_to_records(batch, names, dim, columns)


TFRECORD_BATCH = 1024  # tf.Examples decoded at a time


def payloads_to_records(payloads: Iterable[bytes], names: Sequence[str], dim: int, decoder=None,
                        columns: Optional[OutputColumns] = None) -> Iterator[EmbeddingRecord]:
  """Serialized tf.Examples (e.g. a TFRecord file's verified payloads) -> EmbeddingRecords, decoded TFRECORD_BATCH
  at a time (examples_to_records): the batches before a payload that fails to come are yielded."""
  decoder = decoder or example_decoder(names, columns)
  batch = []
  for payload in payloads:
    batch.append(payload)
    if len(batch) >= TFRECORD_BATCH:
      yield from examples_to_records(batch, names, dim, decoder, columns)
      batch = []
  yield from examples_to_records(batch, names, dim, decoder, columns)
