"""Why one column of a row cannot be written, or None: the checks the column table (formats/columns.py) runs.

Every check takes (row, dim) and reads its own field; those that depend on another field (token_ids on
num_tokens, mlm_pseudo_perplexity on mlm_scored_tokens) come after it in the table, which checks in order and
stops at the first problem, so the field they depend on is already known to be valid.
"""
from __future__ import annotations

import math
import numbers
from typing import Optional

import numpy as np

from formats import compact
from formats.records import EmbeddingRecord

INT32_MAX = 2**31 - 1


def _is_real(value: object) -> bool:
  return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _is_integer(value: object) -> bool:
  return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def string_problem(name: str, value: object) -> Optional[str]:
  """Why `value` cannot be stored as a UTF-8 string field, or None."""
  if not isinstance(value, str):
    return f"{name} is not a string but {type(value).__name__}"
  try:
    value.encode("utf-8")
  except UnicodeEncodeError as e:
    return f"{name} is not encodable as UTF-8 ({e.reason} at position {e.start})"
  return None


def float_array_problem(name: str, values: object, shape: tuple[int, ...]) -> Optional[str]:
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


def string(name: str, rec: EmbeddingRecord, dim: int) -> Optional[str]:
  value = getattr(rec, name)
  return f"{name} is missing" if value is None else string_problem(name, value)


def optional_string(name: str, rec: EmbeddingRecord, dim: int) -> Optional[str]:
  value = getattr(rec, name)
  return None if value is None else string_problem(name, value)


def count(name: str, rec: EmbeddingRecord, dim: int) -> Optional[str]:
  """A non-negative int32 (num_tokens, the window fields)."""
  value = getattr(rec, name)
  if value is None:
    return f"{name} is missing"
  if not _is_integer(value):
    return f"{name} is not an integer but {type(value).__name__}"
  if not 0 <= int(value) <= INT32_MAX:
    return f"{name} {value} is out of range"
  return None


def truth_value(rec: EmbeddingRecord, dim: int) -> Optional[str]:
  """`truncated` is written as its truth value, which it must have (a numpy array of several values has none)."""
  try:
    bool(rec.truncated)
  except (TypeError, ValueError) as e:
    return f"truncated is not a truth value ({e})"
  return None


def embedding(rec: EmbeddingRecord, dim: int) -> Optional[str]:
  return float_array_problem("embedding", rec.embedding, (dim,))


def compact_embedding(dtype: str, truncate_dim: Optional[int], rec: EmbeddingRecord, dim: int) -> Optional[str]:
  """The embedding in the form `dtype` (formats/compact.py) with kept_dims(dim, truncate_dim) dimensions: finite
  floats that survive the cast (float forms), or an array of exactly the form's integer type (int8, binary)."""
  length = compact.stored_length(compact.kept_dims(dim, truncate_dim), dtype)
  if compact.is_float(dtype):
    problem = float_array_problem("embedding", rec.embedding, (length,))
    if problem or dtype == compact.FLOAT32:
      return problem
    with np.errstate(over="ignore"):
      half = np.asarray(rec.embedding, dtype=np.float32).astype(np.float16)
    bad = int(np.count_nonzero(~np.isfinite(half)))
    return f"embedding has {bad} value(s) beyond float16's range" if bad else None
  if rec.embedding is None:
    return "embedding is missing"
  array = np.asarray(rec.embedding)
  expected = np.dtype(compact.NUMPY_DTYPES[dtype])
  if array.dtype != expected:
    if np.issubdtype(array.dtype, np.floating):  # not encoded: say why (e.g. non-finite values) when there is a reason
      problem = float_array_problem("embedding", array, array.shape)
      if problem:
        return problem
    return f"embedding is {array.dtype}, not the {dtype} form ({expected})"
  if array.shape != (length,):
    return f"embedding has shape {array.shape}, expected ({length},) in the {dtype} form"
  return None


def token_ids(rec: EmbeddingRecord, dim: int) -> Optional[str]:
  if rec.token_ids is None:
    return "token_ids is missing"
  ids = np.asarray(rec.token_ids)
  if ids.ndim != 1 or (ids.size and not np.issubdtype(ids.dtype, np.integer)):
    return f"token_ids must be a 1-D integer vector, got dtype {ids.dtype} and shape {ids.shape}"
  if ids.size and (ids.min() < 0 or ids.max() > INT32_MAX):
    return "token_ids has values outside the int32 range"
  if ids.size != rec.num_tokens:
    return f"token_ids has {ids.size} ids but num_tokens is {rec.num_tokens}"
  return None


def sequence_output(rec: EmbeddingRecord, dim: int) -> Optional[str]:
  if rec.sequence_output is None:
    return "sequence_output is missing"
  return float_array_problem("sequence_output", rec.sequence_output, (int(rec.num_tokens), dim))


def mlm_pll(rec: EmbeddingRecord, dim: int) -> Optional[str]:
  pll = rec.mlm_pll
  if pll is None:
    return "mlm_pll is missing"
  if not _is_real(pll):
    return f"mlm_pll is not a number but {type(pll).__name__}"
  if not math.isfinite(pll):
    return f"mlm_pll is not finite ({pll})"
  return None


def mlm_scored_tokens(rec: EmbeddingRecord, dim: int) -> Optional[str]:
  scored = rec.mlm_scored_tokens
  if scored is None:
    return "mlm_scored_tokens is missing"
  if not _is_integer(scored):
    return f"mlm_scored_tokens is not an integer but {type(scored).__name__}"
  if not 0 <= int(scored) <= int(rec.num_tokens):
    return f"mlm_scored_tokens {scored} is outside [0, num_tokens={rec.num_tokens}]"
  return None


def mlm_pseudo_perplexity(rec: EmbeddingRecord, dim: int) -> Optional[str]:
  """Finite and positive, or None exactly when no token was scored."""
  scored, perplexity = rec.mlm_scored_tokens, rec.mlm_pseudo_perplexity
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


def mlm_token_scores(rec: EmbeddingRecord, dim: int) -> Optional[str]:
  """num_tokens values, NaN where not scored ([CLS]/[SEP]), no infinities; when mlm_scored_tokens is an integer
  it must equal the number of the other (scored) positions."""
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
