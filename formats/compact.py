"""Compact vector forms: truncation to the first dimensions and the float16, int8 and binary encodings.

Shared by the pipeline (--output-dtype, --truncate-dim) and whatever else turns float32 vectors into these forms;
numpy only.

  form      stored per dimension                  element type
  float32   the value                             float32
  float16   the value rounded to half precision   float16
  int8      the value's step in its dimension's   int8 (-128..127)
            calibrated range (see quantize_int8)
  binary    one sign bit (value > 0)              uint8, 8 dimensions per byte (np.packbits order: the first
                                                  dimension is the high bit of byte 0); the dimension count is
                                                  padded with 0 bits to a multiple of 8

Truncation (Matryoshka-style) keeps the first N dimensions; when the vectors are normalised, the kept part is
normalised again to length 1 (a zero vector stays zero).
"""
from __future__ import annotations

import math
from typing import NamedTuple, Optional

import numpy as np

FLOAT32, FLOAT16, INT8, BINARY = "float32", "float16", "int8", "binary"
DTYPES = (FLOAT32, FLOAT16, INT8, BINARY)
FLOAT_DTYPES = (FLOAT32, FLOAT16)
NUMPY_DTYPES = {FLOAT32: np.float32, FLOAT16: np.float16, INT8: np.int8, BINARY: np.uint8}
INT8_STEPS = 255  # a range cut into 255 steps: 256 codes, -128 (its low end) .. 127 (its high end)


def check_dtype(dtype: str) -> None:
  if dtype not in DTYPES:
    raise ValueError(f"output dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")


def is_float(dtype: str) -> bool:
  return dtype in FLOAT_DTYPES


def kept_dims(dim: int, truncate_dim: Optional[int]) -> int:
  """The number of dimensions a vector keeps: `truncate_dim`, or all `dim`."""
  return dim if truncate_dim is None else min(int(truncate_dim), dim)


def stored_length(dims: int, dtype: str) -> int:
  """How many values a vector of `dims` dimensions has once stored in `dtype` (bytes for binary)."""
  return math.ceil(dims / 8) if dtype == BINARY else dims


def truncate(vectors: np.ndarray, truncate_dim: Optional[int], normalize: bool) -> np.ndarray:
  """float32 [..., H] -> float32 [..., truncate_dim] (the first dimensions), renormalised when `normalize`.

  Without truncation the vectors are returned as float32, untouched (they are normalised already if asked).
  """
  vectors = np.asarray(vectors, dtype=np.float32)
  if truncate_dim is None or truncate_dim >= vectors.shape[-1]:
    return vectors
  kept = vectors[..., :truncate_dim]
  if not normalize:
    return np.ascontiguousarray(kept)
  norms = np.linalg.norm(kept.astype(np.float64), axis=-1, keepdims=True)
  return (kept / np.where(norms > 0, norms, 1.0)).astype(np.float32)


class Int8Ranges(NamedTuple):
  """Per-dimension calibration of int8 codes: dimension d's [low[d], high[d]] is cut into 255 equal steps."""
  low: np.ndarray  # float32 [dims]
  high: np.ndarray  # float32 [dims]

  def to_json(self) -> dict:
    return {"low": [float(v) for v in self.low], "high": [float(v) for v in self.high]}

  @classmethod
  def from_json(cls, value: object, dims: int) -> "Int8Ranges":
    """The ranges a manifest records; raises ValueError unless they are `dims` finite low <= high pairs."""
    if not isinstance(value, dict):
      raise ValueError(f"int8 ranges must be an object with low and high, got {type(value).__name__}")
    try:
      low = np.asarray(value.get("low"), dtype=np.float32)
      high = np.asarray(value.get("high"), dtype=np.float32)
    except (TypeError, ValueError) as e:
      raise ValueError(f"int8 ranges are not numbers ({e})") from None
    if low.shape != (dims,) or high.shape != (dims,):
      raise ValueError(f"int8 ranges have {low.shape} low and {high.shape} high values, expected {dims} each")
    if not (np.isfinite(low).all() and np.isfinite(high).all() and (low <= high).all()):
      raise ValueError("int8 ranges must be finite with low <= high")
    return cls(low, high)


def calibrate(vectors: np.ndarray) -> Int8Ranges:
  """Each dimension's range over float32 [N, dims] vectors: its minimum and maximum (N >= 1)."""
  vectors = np.asarray(vectors, dtype=np.float32)
  return Int8Ranges(vectors.min(axis=0), vectors.max(axis=0))


def merge_ranges(a: Optional[Int8Ranges], b: Optional[Int8Ranges]) -> Optional[Int8Ranges]:
  """The ranges covering both (None: no vectors seen)."""
  if a is None or b is None:
    return a if b is None else b
  return Int8Ranges(np.minimum(a.low, b.low), np.maximum(a.high, b.high))


def quantize_int8(vectors: np.ndarray, ranges: Int8Ranges, toward_zero: bool = False) -> np.ndarray:
  """float32 [..., dims] -> int8 codes: floor((value - low) / step) - 128 with step = (high - low) / 255.

  A value outside its dimension's range (a query, or a vector quantized with another run's ranges) is clipped to
  the range's end. A dimension whose range is one value (step 0) maps to -128. `toward_zero`: round
  (value - low) / step - 128 toward zero instead, as sentence-transformers' int8 does (its code 0 then spans the two
  steps around the middle); the pipeline floors.
  """
  vectors = np.asarray(vectors, dtype=np.float32)
  steps = (ranges.high - ranges.low) / INT8_STEPS
  steps = np.where(steps > 0, steps, 1.0).astype(np.float32)
  with np.errstate(invalid="ignore"):
    index = np.clip((vectors - ranges.low) / steps, 0, INT8_STEPS)
  return (index - 128).astype(np.int8) if toward_zero else (np.floor(index) - 128).astype(np.int8)


def dequantize_int8(codes: np.ndarray, ranges: Int8Ranges) -> np.ndarray:
  """int8 codes -> the low end of each code's step, float32 (an approximation of the original values)."""
  steps = (ranges.high - ranges.low) / INT8_STEPS
  return (ranges.low + (np.asarray(codes, dtype=np.float32) + 128) * steps).astype(np.float32)


def pack_bits(vectors: np.ndarray) -> np.ndarray:
  """float [..., dims] -> uint8 [..., ceil(dims / 8)]: bit = value > 0, packed as np.packbits does (big-endian bit
  order, the last byte padded with 0 bits)."""
  return np.packbits(np.asarray(vectors) > 0, axis=-1)


def unpack_bits(packed: np.ndarray, dims: int) -> np.ndarray:
  """uint8 [..., ceil(dims / 8)] -> bool [..., dims] (the sign bits)."""
  return np.unpackbits(np.asarray(packed, dtype=np.uint8), axis=-1, count=dims).astype(bool)


def encode(vectors: np.ndarray, dtype: str, ranges: Optional[Int8Ranges] = None) -> np.ndarray:
  """float32 [..., dims] (already truncated) -> the stored form `dtype` (int8 needs `ranges`)."""
  check_dtype(dtype)
  if dtype == FLOAT32:
    return np.asarray(vectors, dtype=np.float32)
  if dtype == FLOAT16:
    return np.asarray(vectors, dtype=np.float32).astype(np.float16)
  if dtype == INT8:
    if ranges is None:
      raise ValueError("int8 needs calibrated ranges")
    return quantize_int8(vectors, ranges)
  return pack_bits(vectors)


def describe_form(dim: int, dtype: str, truncate_dim: Optional[int], normalize: bool) -> dict:
  """A manifest's `vectors`: how a run stores its embedding of `dim` dimensions (--output-dtype, --truncate-dim)."""
  dims = kept_dims(dim, truncate_dim)
  form = {"dtype": dtype, "dimensions": dims, "truncated": truncate_dim is not None,
          "renormalized": truncate_dim is not None and normalize, "stored_values": stored_length(dims, dtype)}
  if dtype == INT8:
    form["int8"] = ("code = floor(clip((value - low) / ((high - low) / 255), 0, 255)) - 128 per dimension, "
                    "low and high in int8_ranges")
  if dtype == BINARY:
    form["binary"] = ("bit = value > 0, packed 8 per byte as numpy.packbits (first dimension = high bit of byte 0), "
                      "zero bits padding the last byte")
  return form
