"""Sinks for the pipeline's outputs: embeddings (Parquet or TFRecord) and dead letters (JSON lines).

All files go through Beam's file-based sinks, which write to a temporary directory and rename the
finished shards into place, so a reader never sees a half-written `PREFIX-SSSSS-of-NNNNN.*` file.
Every sink returns the PCollection of its final file names, also for an empty input (Beam then
writes one empty shard), so the manifest step can list them.

A run touches only its own files. Beam's sinks delete everything matching `PREFIX-*-of-NNNNN.ext`
before renaming, which also takes the shards of another run whose prefix starts with this one
(`emb` would delete `emb-large-00000-of-00001.parquet`); the sinks here (`_OwnShardsOnly`) delete
only the exact names they are about to write, and name their scratch directories so that no other
prefix's clean-up can mistake them for its own (`scratch_dir_name`). Parquet pages carry CRC
checksums, which a later `--previous` run verifies before reusing a vector.

Embedding rows must be checked with `ValidateEmbeddings` before `WriteEmbeddings`: rows with a
wrong-length or non-finite vector (or other unwritable fields) leave as DeadLetter(stage="write")
instead of failing the sink. `WriteEmbeddings` re-checks every batch and raises on a bad row, so a
pipeline that forgets the validation fails loudly rather than writing corrupt rows.

Which columns are written is chosen by the same keyword flags everywhere (ValidateEmbeddings,
embedding_problem, WriteEmbeddings, parquet_schema, the tf.Example converters):

  keep_text / emit_tokens: `text`; `token_ids` and `sequence_output`.
  embeddings=False (--no-embeddings): no `embedding` column; a row's embedding is ignored.
  mlm=True (--mlm-scores): `mlm_pll`, `mlm_scored_tokens`, `mlm_pseudo_perplexity`.
  mlm_per_token=True (--mlm-per-token, needs mlm): `mlm_token_scores`.

Types of the MLM columns:

  column                  Parquet                          tf.Example
  mlm_pll                 float64, not null                float_list [1] (float32: ~7 digits kept)
  mlm_scored_tokens       int32, not null                  int64_list [1]
  mlm_pseudo_perplexity   float64, null when None          float_list [1]; feature omitted when None
  mlm_token_scores        list<float32>, items null at     float_list [num_tokens], NaN at [CLS]/[SEP]
                          [CLS]/[SEP] (NaN in the row)     (tf.Example has no nulls)

tf.Example float_list holds float32, so `mlm_pll` (a float64 sum) is rounded to about 7 significant
digits in TFRecord output; use Parquet when the exact sum matters. A None pseudo-perplexity (no token
scored) leaves the feature out of that row's Example: parse it with
`tf.io.FixedLenFeature([], tf.float32, default_value=float("nan"))` or a VarLenFeature.
"""
from __future__ import annotations

import json
import math
import numbers
import re
from typing import Iterator, NamedTuple, Optional, Sequence

import uuid

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam import coders
from apache_beam.io import filebasedsink, textio, tfrecordio
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.io.iobase import Write
from apache_beam.metrics import Metrics
from tfx_bsl.coders import example_coder

from transforms.records import DeadLetter, EmbeddingRecord

OUTPUT_FORMATS = ("parquet", "tfrecord")
from transforms.names import DEAD_LETTER as DEAD_LETTER_TAG
from transforms.names import NAMESPACE as METRICS_NAMESPACE

# Output tags of ValidateEmbeddings.
VALID_TAG = "valid"

# Dead letters go to PREFIX-errors-SSSSS-of-NNNNN.jsonl.
ERRORS_INFIX = "-errors"
ERRORS_SUFFIX = ".jsonl"

# Rows are grouped into batches of about this many bytes; each Parquet batch becomes a row group.
DEFAULT_BATCH_BYTES = 32 << 20
PARQUET_CODEC = "snappy"

_INT32_MAX = 2**31 - 1
# Beam's default shard template '-SSSSS-of-NNNNN': shard number and count, 5 digits each.
_SHARD_PATTERN = r"-\d{5}-of-\d{5}"
_OUTPUT_EXTENSIONS = r"\.(?:parquet|tfrecord)"
# The kinds of sink scratch directory (see scratch_dir_name).
SCRATCH_KINDS = ("embeddings", "errors")


# --------------------------------------------------------------------------------------------
# File names.


def check_output_prefix(output_prefix: str) -> None:
  """Raises ValueError unless `output_prefix` is a usable file name prefix (no directory, no globs)."""
  if not isinstance(output_prefix, str) or not output_prefix:
    raise ValueError(f"output prefix must be a non-empty string, got {output_prefix!r}")
  if output_prefix.endswith(("/", "\\")):
    raise ValueError(f"output prefix must end in a file name stem, not a directory: {output_prefix!r}")
  if any(c in output_prefix for c in "*?[]"):
    # Beam's sinks glob for their own shards, and local FileSystems.delete expands globs: a prefix
    # like 'out/e*b' could make them delete other files.
    raise ValueError(f"output prefix must not contain glob characters *?[]: {output_prefix!r}")


def errors_prefix(output_prefix: str) -> str:
  """The file prefix of the dead-letter shards for `output_prefix`."""
  return output_prefix + ERRORS_INFIX


def path_basename(path: str) -> str:
  """The last component of a local path or URL."""
  return re.split(r"[/\\]", path)[-1]


def is_output_file(path: str, output_prefix: str) -> bool:
  """True when `path` is named exactly like one of `output_prefix`'s embedding shards.

  That is PREFIX-SSSSS-of-NNNNN.parquet or .tfrecord: not `PREFIX-large-00000-of-00001.parquet` (the
  prefix `PREFIX-large`), nor `PREFIX-00000-of-00001.parquet.bak`. Only the file names are compared.
  """
  stem = re.escape(path_basename(output_prefix))
  return re.fullmatch(stem + _SHARD_PATTERN + _OUTPUT_EXTENSIONS, path_basename(path)) is not None


def is_error_file(path: str, output_prefix: str) -> bool:
  """True when `path` is named exactly like one of `output_prefix`'s dead-letter shards.

  `emb-errors-00000-of-00001.jsonl` is the prefix `emb`'s; the prefix `emb-errors` writes
  `emb-errors-00000-of-00001.parquet` and `emb-errors-errors-00000-of-00001.jsonl`.
  """
  stem = re.escape(path_basename(errors_prefix(output_prefix)))
  return re.fullmatch(stem + _SHARD_PATTERN + re.escape(ERRORS_SUFFIX), path_basename(path)) is not None


def scratch_dir_name(output_prefix: str, kind: str, token: str) -> str:
  """The name of a sink's scratch directory: beam-temp-KIND-TOKEN-STEM (TOKEN: 32 hex digits).

  Beam's own `beam-temp-STEM-UUID` cannot tell the dead-letter sink of `emb` (stem `emb-errors`) from
  the embedding sink of `emb-errors`; with the run's stem last, after fixed-length fields, a name
  belongs to exactly one prefix.
  """
  if kind not in SCRATCH_KINDS:
    raise ValueError(f"scratch kind must be one of {SCRATCH_KINDS}, got {kind!r}")
  return f"beam-temp-{kind}-{token}-{path_basename(output_prefix)}"


def is_scratch_dir(path: str, output_prefix: str) -> bool:
  """True when `path` is named like a sink scratch directory of `output_prefix` (see scratch_dir_name)."""
  kinds = "|".join(SCRATCH_KINDS)
  pattern = rf"beam-temp-(?:{kinds})-[0-9a-f]{{32}}-" + re.escape(path_basename(output_prefix))
  return re.fullmatch(pattern, path_basename(path.rstrip("/\\"))) is not None


# --------------------------------------------------------------------------------------------
# Validation.


def _string_problem(name: str, value: object) -> Optional[str]:
  """Why `value` cannot be stored as a UTF-8 string field, or None."""
  if not isinstance(value, str):
    return f"{name} is not a string but {type(value).__name__}"
  try:
    value.encode("utf-8")
  except UnicodeEncodeError as e:
    return f"{name} is not encodable as UTF-8 ({e.reason} at position {e.start})"
  return None


def _float_array_problem(name: str, values: object, shape: tuple[int, ...]) -> Optional[str]:
  """Why `values` is not a finite float32 array of `shape`, or None."""
  try:
    with np.errstate(all="ignore"):  # float64 values beyond float32's range become inf, caught below
      array = np.asarray(values, dtype=np.float32)
  except (TypeError, ValueError) as e:
    return f"{name} is not numeric ({e})"
  if array.shape != shape:
    return f"{name} has shape {array.shape}, expected {shape}"
  bad = int(np.count_nonzero(~np.isfinite(array)))
  if bad:
    return f"{name} has {bad} non-finite value(s)"
  return None


def _num_tokens_problem(num_tokens: object) -> Optional[str]:
  if isinstance(num_tokens, bool) or not isinstance(num_tokens, numbers.Integral):
    return f"num_tokens is not an integer but {type(num_tokens).__name__}"
  if not 0 <= int(num_tokens) <= _INT32_MAX:
    return f"num_tokens {num_tokens} is out of range"
  return None


def _tokens_problem(rec: EmbeddingRecord, dim: int) -> Optional[str]:
  """Why token_ids / sequence_output cannot be written (they are required with emit_tokens)."""
  if rec.token_ids is None:
    return "token_ids is missing"
  ids = np.asarray(rec.token_ids)
  if ids.ndim != 1 or (ids.size and not np.issubdtype(ids.dtype, np.integer)):
    return f"token_ids must be a 1-D integer vector, got dtype {ids.dtype} and shape {ids.shape}"
  if ids.size and (ids.min() < 0 or ids.max() > _INT32_MAX):
    return "token_ids has values outside the int32 range"
  if ids.size != rec.num_tokens:
    return f"token_ids has {ids.size} ids but num_tokens is {rec.num_tokens}"
  if rec.sequence_output is None:
    return "sequence_output is missing"
  return _float_array_problem("sequence_output", rec.sequence_output, (ids.size, dim))


def _is_real(value: object) -> bool:
  return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _is_integer(value: object) -> bool:
  return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _mlm_problem(rec: EmbeddingRecord) -> Optional[str]:
  """Why the MLM scalars (pll, scored tokens, pseudo-perplexity) cannot be written, or None.

  Expects a valid num_tokens.
  """
  pll, scored, perplexity = rec.mlm_pll, rec.mlm_scored_tokens, rec.mlm_pseudo_perplexity
  if pll is None:
    return "mlm_pll is missing"
  if not _is_real(pll):
    return f"mlm_pll is not a number but {type(pll).__name__}"
  if not math.isfinite(pll):
    return f"mlm_pll is not finite ({pll})"
  if scored is None:
    return "mlm_scored_tokens is missing"
  if not _is_integer(scored):
    return f"mlm_scored_tokens is not an integer but {type(scored).__name__}"
  if not 0 <= int(scored) <= int(rec.num_tokens):
    return f"mlm_scored_tokens {scored} is outside [0, num_tokens={rec.num_tokens}]"
  if scored == 0:
    if perplexity is not None:
      return f"mlm_pseudo_perplexity is {perplexity} but no token was scored (it must be None)"
    return None
  if perplexity is None:
    return f"mlm_pseudo_perplexity is missing although {scored} token(s) were scored"
  if not _is_real(perplexity):
    return f"mlm_pseudo_perplexity is not a number but {type(perplexity).__name__}"
  if not (math.isfinite(perplexity) and perplexity > 0):
    return f"mlm_pseudo_perplexity {perplexity} is not finite and positive"
  return None


def _token_scores_problem(rec: EmbeddingRecord) -> Optional[str]:
  """Why mlm_token_scores cannot be written, or None. Expects a valid num_tokens.

  NaN marks the positions that were not scored ([CLS]/[SEP]); when mlm_scored_tokens is an integer
  it must equal the number of the other (scored) positions.
  """
  if rec.mlm_token_scores is None:
    return "mlm_token_scores is missing"
  try:
    with np.errstate(all="ignore"):
      scores = np.asarray(rec.mlm_token_scores, dtype=np.float32)
  except (TypeError, ValueError) as e:
    return f"mlm_token_scores is not numeric ({e})"
  if scores.shape != (rec.num_tokens,):
    return f"mlm_token_scores has shape {scores.shape}, expected ({rec.num_tokens},) (one per token)"
  infinite = int(np.count_nonzero(np.isinf(scores)))
  if infinite:
    return f"mlm_token_scores has {infinite} infinite value(s)"
  scored = int(np.count_nonzero(~np.isnan(scores)))
  if _is_integer(rec.mlm_scored_tokens) and scored != rec.mlm_scored_tokens:
    return (f"mlm_token_scores has {scored} scored (non-NaN) value(s) but mlm_scored_tokens is "
            f"{rec.mlm_scored_tokens}")
  return None


def _check_columns(mlm: bool, mlm_per_token: bool) -> None:
  """Raises ValueError on an impossible combination of column flags (embeddings combines with any)."""
  if mlm_per_token and not mlm:
    raise ValueError("mlm_per_token=True needs mlm=True (per-token scores come with the MLM scores)")


def embedding_problem(rec: EmbeddingRecord, dim: int, *, emit_tokens: bool = False, embeddings: bool = True,
                      mlm: bool = False, mlm_per_token: bool = False) -> Optional[str]:
  """Why `rec` cannot be written to the embedding files, or None when it can.

  The optional fields are checked whenever they are set (the embed stage sets them only when they
  are to be written), so a row that passes can be written with any keep_text / emit_tokens / mlm /
  mlm_per_token. The embedding is the exception: with embeddings=False it is not written and is
  ignored (normally None).

  Args:
    rec: the row.
    dim: the model's hidden size H (the required embedding length and sequence_output width).
    emit_tokens: whether token_ids and sequence_output are written; then they are required.
    embeddings: whether the embedding is written; then it is required.
    mlm: whether mlm_pll / mlm_scored_tokens / mlm_pseudo_perplexity are written; then mlm_pll must be
      finite, mlm_scored_tokens in [0, num_tokens] and mlm_pseudo_perplexity finite and positive, or
      None exactly when no token was scored.
    mlm_per_token: whether mlm_token_scores is written (needs mlm); then it must hold num_tokens
      values, NaN where not scored, no infinities.
  """
  _check_columns(mlm, mlm_per_token)
  if not isinstance(rec, EmbeddingRecord):
    return f"not an EmbeddingRecord but {type(rec).__name__}"
  problem = _string_problem("id", rec.id) or _string_problem("text_sha256", rec.text_sha256)
  if problem:
    return problem
  if embeddings:
    problem = _float_array_problem("embedding", rec.embedding, (dim,))
    if problem:
      return problem
  problem = _num_tokens_problem(rec.num_tokens)
  if problem:
    return problem
  if rec.text is not None:
    problem = _string_problem("text", rec.text)
    if problem:
      return problem
  if emit_tokens or rec.token_ids is not None or rec.sequence_output is not None:
    problem = _tokens_problem(rec, dim)
    if problem:
      return problem
  scalars = (rec.mlm_pll, rec.mlm_scored_tokens, rec.mlm_pseudo_perplexity)
  if mlm or any(value is not None for value in scalars):
    problem = _mlm_problem(rec)
    if problem:
      return problem
  if mlm_per_token or rec.mlm_token_scores is not None:
    return _token_scores_problem(rec)
  return None


def _require_writable(records: Sequence[EmbeddingRecord], dim: int, emit_tokens: bool,
                      **columns: bool) -> None:
  """Raises ValueError on the first row that would be written wrongly (columns: embeddings, mlm, ...)."""
  for rec in records:
    problem = embedding_problem(rec, dim, emit_tokens=emit_tokens, **columns)
    if problem:
      raise ValueError(f"record {getattr(rec, 'id', None)!r} cannot be written: {problem}. "
                       "Apply ValidateEmbeddings before WriteEmbeddings to dead-letter such rows.")


class ValidateEmbeddingsFn(beam.DoFn):
  """Passes writable rows through; turns the others into DeadLetter(stage="write") on DEAD_LETTER_TAG."""

  def __init__(self, dim: int, emit_tokens: bool = False, *, embeddings: bool = True, mlm: bool = False,
               mlm_per_token: bool = False):
    super().__init__()
    _check_columns(mlm, mlm_per_token)
    self._dim = dim
    self._emit_tokens = emit_tokens
    self._columns = {"embeddings": embeddings, "mlm": mlm, "mlm_per_token": mlm_per_token}
    self._rejected = Metrics.counter(METRICS_NAMESPACE, "records_rejected_at_write")

  def process(self, rec: EmbeddingRecord) -> Iterator[object]:
    problem = embedding_problem(rec, self._dim, emit_tokens=self._emit_tokens, **self._columns)
    if problem is None:
      yield rec
      return
    self._rejected.inc()
    yield beam.pvalue.TaggedOutput(DEAD_LETTER_TAG, DeadLetter.make(
        getattr(rec, "id", ""), source="", stage="write", reason=problem, text=getattr(rec, "text", "")))


class ValidateEmbeddings(beam.PTransform):
  """Splits EmbeddingRecords into writable ones and write-stage dead letters.

  Returns a tagged output: `result.valid` (EmbeddingRecord) and `result.dead_letters` (DeadLetter),
  which also unpacks as `valid, dead_letters = ...`. Use the dim and column flags of the
  WriteEmbeddings that follows (see embedding_problem): emit_tokens=True additionally dead-letters rows
  that lack token_ids / sequence_output, embeddings=False stops requiring an embedding, mlm=True /
  mlm_per_token=True require valid MLM scores / per-token scores.
  """

  def __init__(self, dim: int, *, emit_tokens: bool = False, embeddings: bool = True, mlm: bool = False,
               mlm_per_token: bool = False):
    super().__init__()
    _check_dim(dim)
    self._fn = ValidateEmbeddingsFn(dim, emit_tokens, embeddings=embeddings, mlm=mlm,
                                    mlm_per_token=mlm_per_token)

  def expand(self, pcoll):
    return pcoll | "Validate" >> beam.ParDo(self._fn).with_outputs(DEAD_LETTER_TAG, main=VALID_TAG)


def _check_dim(dim: object) -> None:
  if isinstance(dim, bool) or not isinstance(dim, numbers.Integral) or dim <= 0:
    raise ValueError(f"dim must be a positive integer, got {dim!r}")


# --------------------------------------------------------------------------------------------
# Columnar conversion (shared by Parquet and TFRecord).


def _list_array(lengths: Sequence[int], values: object, value_type: pa.DataType) -> pa.ListArray:
  """A list<value_type> array whose i-th list holds the next lengths[i] values."""
  offsets = np.zeros(len(lengths) + 1, dtype=np.int32)
  np.cumsum(lengths, out=offsets[1:])
  if not isinstance(values, pa.Array):
    values = pa.array(values, type=value_type)
  return pa.ListArray.from_arrays(pa.array(offsets), values)


def _fixed_lists(matrix: np.ndarray, value_type: pa.DataType) -> pa.ListArray:
  """A list<value_type> array with one list per row of a 2-D matrix."""
  rows, cols = matrix.shape
  return _list_array([cols] * rows, matrix.reshape(-1), value_type)


def _ragged_lists(arrays: Sequence[np.ndarray], dtype: type, value_type: pa.DataType) -> pa.ListArray:
  """A list<value_type> array with one list per (flattened) numpy array."""
  flat = [np.asarray(a, dtype=dtype).reshape(-1) for a in arrays]
  values = np.concatenate(flat) if flat else np.zeros(0, dtype=dtype)
  return _list_array([f.size for f in flat], values, value_type)


def _singletons(values: Sequence[object], value_type: pa.DataType) -> pa.ListArray:
  """A list<value_type> array of one-element lists (tf.Example has no scalars)."""
  return _list_array([1] * len(values), values, value_type)


def _embedding_matrix(records: Sequence[EmbeddingRecord], dim: int) -> np.ndarray:
  """float32 [len(records), dim]."""
  if not records:
    return np.zeros((0, dim), dtype=np.float32)
  return np.stack([np.asarray(r.embedding, dtype=np.float32) for r in records])


def _token_scores_column(records: Sequence[EmbeddingRecord], nan_as_null: bool) -> pa.ListArray:
  """list<float32> of the per-token scores; NaN (unscored [CLS]/[SEP]) becomes a null item if nan_as_null.

  Without nan_as_null the NaNs stay values: tfx-bsl would write a null item as 0.0.
  """
  flat = [np.asarray(r.mlm_token_scores, dtype=np.float32).reshape(-1) for r in records]
  values = np.concatenate(flat) if flat else np.zeros(0, dtype=np.float32)
  items = pa.array(values, type=pa.float32(), mask=np.isnan(values) if nan_as_null else None)
  return _list_array([f.size for f in flat], items, pa.float32())


def _sequence_column(records: Sequence[EmbeddingRecord], dim: int) -> pa.ListArray:
  """list<list<float32>>: per row, one H-vector per token."""
  seqs = [np.asarray(r.sequence_output, dtype=np.float32).reshape(-1, dim) for r in records]
  token_rows = np.concatenate(seqs) if seqs else np.zeros((0, dim), np.float32)
  inner = _fixed_lists(token_rows, pa.float32())
  return _list_array([s.shape[0] for s in seqs], inner, inner.type)


def parquet_schema(dim: int, keep_text: bool = False, emit_tokens: bool = False,
                   file_metadata: Optional[dict[str, str]] = None, *, embeddings: bool = True,
                   mlm: bool = False, mlm_per_token: bool = False, chunks: bool = False) -> pa.Schema:
  """The Arrow schema of the Parquet files; `file_metadata` becomes the footer's key-value metadata.

  `dim` is not part of the Arrow types (the embedding is a plain list<float32>); callers record it
  in `file_metadata`. The column flags are those of embedding_problem; records_to_table reads them
  back from the column names.
  """
  _check_dim(dim)
  _check_columns(mlm, mlm_per_token)
  fields = [pa.field("id", pa.string(), nullable=False)]
  if embeddings:
    fields.append(pa.field("embedding", pa.list_(pa.float32()), nullable=False))
  fields += [
      pa.field("num_tokens", pa.int32(), nullable=False),
      pa.field("truncated", pa.bool_(), nullable=False),
      pa.field("text_sha256", pa.string(), nullable=False),
  ]
  if keep_text:
    fields.append(pa.field("text", pa.string()))
  if emit_tokens:
    fields.append(pa.field("token_ids", pa.list_(pa.int32()), nullable=False))
    fields.append(pa.field("sequence_output", pa.list_(pa.list_(pa.float32())), nullable=False))
  if mlm:
    fields.append(pa.field("mlm_pll", pa.float64(), nullable=False))
    fields.append(pa.field("mlm_scored_tokens", pa.int32(), nullable=False))
    fields.append(pa.field("mlm_pseudo_perplexity", pa.float64()))  # null when nothing was scored
  if mlm_per_token:
    # Items are nullable (pa.list_'s default): null where the row's array holds NaN ([CLS]/[SEP]).
    fields.append(pa.field("mlm_token_scores", pa.list_(pa.float32()), nullable=False))
  if chunks:  # --long-text chunk --chunk-output rows: every row is a window of its parent text
    fields += [pa.field(name, pa.string() if name == "parent_id" else pa.int32(), nullable=False)
               for name in CHUNK_COLUMNS]
  metadata = {str(k): str(v) for k, v in (file_metadata or {}).items()}
  return pa.schema(fields, metadata=metadata or None)


CHUNK_COLUMNS = ("parent_id", "chunk_index", "chunk_start_piece", "chunk_end_piece")


def _require_chunk_fields(records: Sequence[EmbeddingRecord]) -> None:
  for r in records:
    if any(getattr(r, name) is None for name in CHUNK_COLUMNS):
      raise ValueError(f"row {r.id!r} has no window fields, but the output has window columns")


def records_to_table(records: Sequence[EmbeddingRecord], schema: pa.Schema, dim: int) -> pa.Table:
  """Converts rows to a table of `schema` (from parquet_schema). Raises ValueError on a bad row.

  The columns written (and so the checks) follow the schema's column names.
  """
  names = set(schema.names)
  keep_text = "text" in names
  emit_tokens = "token_ids" in names
  embeddings, mlm, mlm_per_token = "embedding" in names, "mlm_pll" in names, "mlm_token_scores" in names
  _require_writable(records, dim, emit_tokens, embeddings=embeddings, mlm=mlm, mlm_per_token=mlm_per_token)
  columns = {
      "id": pa.array([r.id for r in records], type=pa.string()),
      "num_tokens": pa.array([int(r.num_tokens) for r in records], type=pa.int32()),
      "truncated": pa.array([bool(r.truncated) for r in records], type=pa.bool_()),
      "text_sha256": pa.array([r.text_sha256 for r in records], type=pa.string()),
  }
  if embeddings:
    columns["embedding"] = _fixed_lists(_embedding_matrix(records, dim), pa.float32())
  if keep_text:
    columns["text"] = pa.array([r.text for r in records], type=pa.string())
  if emit_tokens:
    columns["token_ids"] = _ragged_lists([r.token_ids for r in records], np.int32, pa.int32())
    columns["sequence_output"] = _sequence_column(records, dim)
  if mlm:
    columns["mlm_pll"] = pa.array([float(r.mlm_pll) for r in records], type=pa.float64())
    columns["mlm_scored_tokens"] = pa.array([int(r.mlm_scored_tokens) for r in records], type=pa.int32())
    columns["mlm_pseudo_perplexity"] = pa.array(
        [None if r.mlm_pseudo_perplexity is None else float(r.mlm_pseudo_perplexity) for r in records],
        type=pa.float64())
  if mlm_per_token:
    columns["mlm_token_scores"] = _token_scores_column(records, nan_as_null=True)
  if "parent_id" in names:
    _require_chunk_fields(records)
    columns["parent_id"] = pa.array([r.parent_id for r in records], type=pa.string())
    for name in CHUNK_COLUMNS[1:]:
      columns[name] = pa.array([int(getattr(r, name)) for r in records], type=pa.int32())
  return pa.Table.from_arrays([columns[name] for name in schema.names], schema=schema)


def _first_length(values: object) -> int:
  """Length of an embedding, for batches whose dim is inferred (0 if it is not a vector)."""
  try:
    return int(np.asarray(values, dtype=np.float32).size)
  except (TypeError, ValueError):
    return 0


def records_to_example_batch(records: Sequence[EmbeddingRecord], keep_text: bool = False,
                             emit_tokens: bool = False, dim: Optional[int] = None, *, embeddings: bool = True,
                             mlm: bool = False, mlm_per_token: bool = False, chunks: bool = False
                             ) -> pa.RecordBatch:
  """Rows as the list<binary> / list<int64> / list<float32> columns tfx-bsl encodes to tf.Examples.

  With dim None, every row must have the first row's embedding length (or sequence_output width when
  embeddings=False). A None text becomes an empty bytes_list. A None mlm_pseudo_perplexity becomes a
  null list, which embeddings_to_examples turns into an omitted feature. The NaNs of mlm_token_scores
  stay NaN values (tfx-bsl would write null items as 0.0). Raises ValueError on a bad row.
  """
  _check_columns(mlm, mlm_per_token)
  if dim is None:
    dim = _inferred_dim(records, embeddings)
  _require_writable(records, dim, emit_tokens, embeddings=embeddings, mlm=mlm, mlm_per_token=mlm_per_token)
  columns = {"id": _singletons([r.id.encode("utf-8") for r in records], pa.binary())}
  if embeddings:
    columns["embedding"] = _fixed_lists(_embedding_matrix(records, dim), pa.float32())
  columns.update({
      "num_tokens": _singletons([int(r.num_tokens) for r in records], pa.int64()),
      "truncated": _singletons([int(bool(r.truncated)) for r in records], pa.int64()),
      "text_sha256": _singletons([r.text_sha256.encode("utf-8") for r in records], pa.binary()),
  })
  if keep_text:
    texts = [[] if r.text is None else [r.text.encode("utf-8")] for r in records]
    columns["text"] = pa.array(texts, type=pa.list_(pa.binary()))
  if emit_tokens:
    columns["token_ids"] = _ragged_lists([r.token_ids for r in records], np.int64, pa.int64())
    columns["sequence_output"] = _ragged_lists([r.sequence_output for r in records], np.float32,
                                               pa.float32())
  if mlm:
    # float_list is float32: the float64 pll keeps about 7 significant digits.
    columns["mlm_pll"] = _singletons([float(r.mlm_pll) for r in records], pa.float32())
    columns["mlm_scored_tokens"] = _singletons([int(r.mlm_scored_tokens) for r in records], pa.int64())
    columns["mlm_pseudo_perplexity"] = pa.array(
        [None if r.mlm_pseudo_perplexity is None else [float(r.mlm_pseudo_perplexity)] for r in records],
        type=pa.list_(pa.float32()))
  if mlm_per_token:
    columns["mlm_token_scores"] = _token_scores_column(records, nan_as_null=False)
  if chunks:
    _require_chunk_fields(records)
    columns["parent_id"] = _singletons([r.parent_id.encode("utf-8") for r in records], pa.binary())
    for name in CHUNK_COLUMNS[1:]:
      columns[name] = _singletons([int(getattr(r, name)) for r in records], pa.int64())
  return pa.RecordBatch.from_arrays(list(columns.values()), names=list(columns))


def _inferred_dim(records: Sequence[EmbeddingRecord], embeddings: bool) -> int:
  """The H of a batch converted without an explicit dim."""
  if not records:
    return 1
  if embeddings:
    return _first_length(records[0].embedding)
  sequence = records[0].sequence_output
  width = np.shape(sequence)[-1] if sequence is not None and np.ndim(sequence) == 2 else 0
  return int(width) or 1  # any positive dim: no column depends on it


def _encode_examples(batch: pa.RecordBatch,
                     encoder: example_coder.RecordBatchToExamplesEncoder) -> list[bytes]:
  """tfx-bsl's encoding, except that a null list leaves the feature out of that row's Example.

  (tfx-bsl itself writes a Feature with no value list for a null, which is neither a value nor an
  absent key.) Rows are encoded in groups that share the same null columns, and put back in order.
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


def embeddings_to_examples(records: Sequence[EmbeddingRecord], keep_text: bool = False,
                           emit_tokens: bool = False, dim: Optional[int] = None,
                           encoder: Optional[example_coder.RecordBatchToExamplesEncoder] = None, *,
                           embeddings: bool = True, mlm: bool = False, mlm_per_token: bool = False,
                           chunks: bool = False) -> list[bytes]:
  """Serialized tf.Examples, one per row, encoded column-wise by tfx-bsl (see records_to_example_batch)."""
  encoder = encoder or example_coder.RecordBatchToExamplesEncoder()
  batch = records_to_example_batch(records, keep_text, emit_tokens, dim, embeddings=embeddings, mlm=mlm,
                                   mlm_per_token=mlm_per_token, chunks=chunks)
  return _encode_examples(batch, encoder)


def embedding_to_example(rec: EmbeddingRecord, keep_text: bool = False, emit_tokens: bool = False, *,
                         embeddings: bool = True, mlm: bool = False, mlm_per_token: bool = False) -> bytes:
  """One row as a serialized tf.Example (see embeddings_to_examples for batches)."""
  return embeddings_to_examples([rec], keep_text, emit_tokens, embeddings=embeddings, mlm=mlm,
                                mlm_per_token=mlm_per_token)[0]


def record_bytes(rec: EmbeddingRecord) -> int:
  """Approximate in-memory size of a row, used to size batches."""
  size = 128 + sum(len(s) for s in (rec.id, rec.text) if isinstance(s, str))
  for array in (rec.embedding, rec.token_ids, rec.sequence_output, rec.mlm_token_scores):
    if array is not None:
      size += getattr(array, "nbytes", 4 * np.size(array))
  return size


# --------------------------------------------------------------------------------------------
# Sinks.


class _OwnShardsOnly:
  """Mixin for a Beam FileBasedSink: deletes only its own shard names, keeps scratch names unambiguous.

  FileBasedSink.pre_finalize deletes every file matching PREFIX-*-of-NNNNN.ext before the rename, so
  a run with the prefix `emb` would delete the shards of a finished run with the prefix `emb-large`.
  Here only the exact names this sink is about to write are deleted (a stale shard of the same name
  would otherwise confuse the rename's already-renamed check). The subclass sets `_run_prefix` (the
  run's output prefix, also for the dead-letter sink) and `_scratch_kind` (one of SCRATCH_KINDS).
  """

  _run_prefix: str
  _scratch_kind: str

  def _create_temp_dir(self, file_path_prefix):
    base, _ = FileSystems.split(file_path_prefix)
    return FileSystems.join(base, scratch_dir_name(self._run_prefix, self._scratch_kind, uuid.uuid1().hex))

  def pre_finalize(self, init_result, writer_results):
    self._delete_own_shards(len(list(writer_results)), None)

  def pre_finalize_windowed(self, init_result, writer_results, window=None):
    self._delete_own_shards(len(list(writer_results)), window)

  def _delete_own_shards(self, num_shards: int, window) -> None:
    own = {path_basename(self._get_final_name(i, num_shards, window)) for i in range(num_shards)}
    candidates = FileSystems.match([self._get_final_name_glob(num_shards, window)])
    existing = [m.path for result in candidates for m in result.metadata_list if path_basename(m.path) in own]
    if existing:
      FileSystems.delete(existing)


class _ParquetShard(NamedTuple):
  handle: object  # the file handle FileBasedSink.open returned
  writer: pq.ParquetWriter


class _ParquetSink(_OwnShardsOnly, filebasedsink.FileBasedSink):
  """pyarrow.Tables -> PREFIX-SSSSS-of-NNNNN.parquet, one row group per table, with page checksums."""

  def __init__(self, output_prefix: str, schema: pa.Schema, num_shards: int):
    super().__init__(output_prefix, coder=None, file_name_suffix=".parquet", num_shards=num_shards,
                     mime_type="application/x-parquet", compression_type=CompressionTypes.UNCOMPRESSED)
    self._run_prefix = output_prefix
    self._scratch_kind = "embeddings"
    self._schema = schema

  def open(self, temp_path):
    handle = super().open(temp_path)
    return _ParquetShard(handle, pq.ParquetWriter(
        handle, self._schema, compression=PARQUET_CODEC, use_compliant_nested_type=True,
        write_page_checksum=True))

  def write_record(self, file_handle, value):
    file_handle.writer.write_table(value)

  def close(self, file_handle):
    file_handle.writer.close()
    file_handle.handle.close()


class _TFRecordSink(_OwnShardsOnly, tfrecordio._TFRecordSink):  # pylint: disable=protected-access
  """Serialized tf.Examples -> PREFIX-SSSSS-of-NNNNN.tfrecord (each record with its CRCs)."""

  def __init__(self, output_prefix: str, num_shards: int):
    super().__init__(output_prefix, coders.BytesCoder(), ".tfrecord", num_shards, None,
                     CompressionTypes.UNCOMPRESSED, None)
    self._run_prefix = output_prefix
    self._scratch_kind = "embeddings"


class _JsonLinesSink(_OwnShardsOnly, textio._TextSink):  # pylint: disable=protected-access
  """Dead-letter lines -> PREFIX-errors-SSSSS-of-NNNNN.jsonl."""

  def __init__(self, output_prefix: str, num_shards: int):
    super().__init__(errors_prefix(output_prefix), file_name_suffix=ERRORS_SUFFIX, num_shards=num_shards,
                     compression_type=CompressionTypes.UNCOMPRESSED)
    self._run_prefix = output_prefix
    self._scratch_kind = "errors"


class _WriteFiles(beam.PTransform):
  """Writes through one of the sinks above (as Beam's WriteToParquetBatched etc. do: one `Write` step)."""

  def __init__(self, sink: filebasedsink.FileBasedSink):
    super().__init__()
    self._sink = sink

  def expand(self, pcoll):
    return pcoll | Write(self._sink)


class _ToArrowTableFn(beam.DoFn):
  """A batch of rows -> one pyarrow.Table (one Parquet row group)."""

  def __init__(self, schema: pa.Schema, dim: int):
    super().__init__()
    self._schema = schema
    self._dim = dim
    self._written = Metrics.counter(METRICS_NAMESPACE, "records_written")

  def process(self, batch: list[EmbeddingRecord]) -> Iterator[pa.Table]:
    table = records_to_table(batch, self._schema, self._dim)
    self._written.inc(table.num_rows)
    yield table


class _ToExamplesFn(beam.DoFn):
  """A batch of rows -> serialized tf.Examples."""

  def __init__(self, dim: int, keep_text: bool, emit_tokens: bool, *, embeddings: bool = True,
               mlm: bool = False, mlm_per_token: bool = False, chunks: bool = False):
    super().__init__()
    self._dim = dim
    self._keep_text = keep_text
    self._emit_tokens = emit_tokens
    self._columns = {"embeddings": embeddings, "mlm": mlm, "mlm_per_token": mlm_per_token, "chunks": chunks}
    self._encoder = None
    self._written = Metrics.counter(METRICS_NAMESPACE, "records_written")

  def setup(self):
    self._encoder = example_coder.RecordBatchToExamplesEncoder()

  def process(self, batch: list[EmbeddingRecord]) -> Iterator[bytes]:
    examples = embeddings_to_examples(batch, self._keep_text, self._emit_tokens, self._dim, self._encoder,
                                      **self._columns)
    self._written.inc(len(examples))
    yield from examples


class WriteEmbeddings(beam.PTransform):
  """Writes EmbeddingRecords to PREFIX-SSSSS-of-NNNNN.parquet or .tfrecord; returns the file names.

  Rows must already have passed ValidateEmbeddings (same dim and column flags); a bad row here fails
  the pipeline. `file_metadata` goes into the Parquet footer (TFRecord has no place for it). The
  column flags (keep_text, emit_tokens, embeddings, mlm, mlm_per_token) are described in the module
  docstring. Counter bert_embed/records_written counts the rows handed to the sink.
  """

  def __init__(self, output_prefix: str, output_format: str, dim: int, *, num_shards: int = 0,
               keep_text: bool = False, emit_tokens: bool = False,
               file_metadata: Optional[dict[str, str]] = None, batch_bytes: int = DEFAULT_BATCH_BYTES,
               embeddings: bool = True, mlm: bool = False, mlm_per_token: bool = False, chunks: bool = False):
    super().__init__()
    check_output_prefix(output_prefix)
    if output_format not in OUTPUT_FORMATS:
      raise ValueError(f"output format must be one of {OUTPUT_FORMATS}, got {output_format!r}")
    _check_dim(dim)
    if num_shards < 0:
      raise ValueError(f"num_shards must be >= 0, got {num_shards}")
    self._prefix = output_prefix
    self._format = output_format
    self._dim = dim
    self._num_shards = num_shards
    self._keep_text = keep_text
    self._emit_tokens = emit_tokens
    self._columns = {"embeddings": embeddings, "mlm": mlm, "mlm_per_token": mlm_per_token, "chunks": chunks}
    self._schema = parquet_schema(dim, keep_text, emit_tokens, file_metadata, **self._columns)
    self._batch_bytes = max(1, int(batch_bytes))

  def expand(self, pcoll):
    batches = pcoll | "Batch" >> beam.BatchElements(
        min_batch_size=self._batch_bytes, max_batch_size=self._batch_bytes, element_size_fn=record_bytes)
    if self._format == "parquet":
      return self._write_parquet(batches)
    return self._write_tfrecord(batches)

  def _write_parquet(self, batches):
    return (batches
            | "ToArrow" >> beam.ParDo(_ToArrowTableFn(self._schema, self._dim))
            | "WriteParquet" >> _WriteFiles(_ParquetSink(self._prefix, self._schema, self._num_shards)))

  def _write_tfrecord(self, batches):
    return (batches
            | "ToExamples" >> beam.ParDo(_ToExamplesFn(self._dim, self._keep_text, self._emit_tokens,
                                                        **self._columns))
            | "WriteTFRecord" >> _WriteFiles(_TFRecordSink(self._prefix, self._num_shards)))


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
            | "WriteJsonLines" >> _WriteFiles(_JsonLinesSink(self._prefix, self._num_shards)))

