"""How one output column's values are stored: the Arrow type in Parquet, the list in a tf.Example, and back.

Each kind converts a column's values (one per row, from the EmbeddingRecord field) to an Arrow array for Parquet
and to a list<binary|int64|float32> array for tfx-bsl's tf.Example encoder, and decodes either form (a Parquet
column, or a column tfx-bsl decoded from tf.Examples) back to the field's Python type. A None value is a Parquet
null; in a tf.Example it is an empty list or a null list (an omitted feature), as the column says.

Conversion raises ValueError on values that would be written wrongly (a vector of the wrong length, non-finite
floats where they must be finite): rows are validated before they are written (transforms/validate.py), so this
only fires for a pipeline that skipped the validation.
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence

import numpy as np
import pyarrow as pa

from formats import compact

# tf.Example feature kinds and the Arrow item types tfx-bsl encodes them from.
BYTES, INT64, FLOAT = "bytes_list", "int64_list", "float_list"
EXAMPLE_ITEM_TYPES = {BYTES: pa.binary(), INT64: pa.int64(), FLOAT: pa.float32()}

# How a None is written to a tf.Example: never None, an empty value list, or no feature at all.
NOT_NULL, EMPTY, OMIT = "", "empty", "omit"


def _list_array(lengths: Sequence[int], values: object, value_type: pa.DataType) -> pa.ListArray:
  """A list<value_type> array whose i-th list holds the next lengths[i] values."""
  offsets = np.zeros(len(lengths) + 1, dtype=np.int32)
  np.cumsum(lengths, out=offsets[1:])
  if not isinstance(values, pa.Array):
    values = pa.array(values, type=value_type)
  return pa.ListArray.from_arrays(pa.array(offsets), values)


def _flat(arrays: Sequence[object], dtype: type) -> tuple[list[int], np.ndarray]:
  """The lengths of the (flattened) arrays and their concatenated values."""
  flat = [np.asarray(a, dtype=dtype).reshape(-1) for a in arrays]
  return [f.size for f in flat], (np.concatenate(flat) if flat else np.zeros(0, dtype=dtype))


def _require_finite(name: str, values: np.ndarray) -> None:
  with np.errstate(all="ignore"):
    if not np.isfinite(values).all():
      raise ValueError(f"{name} has non-finite values")


def _is_list(array: pa.Array) -> bool:
  return pa.types.is_list(array.type) or pa.types.is_large_list(array.type)


def _combined(column) -> pa.Array:
  return column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column


class Kind:
  """One way of storing a column (see the module docstring)."""

  feature: str  # the tf.Example feature kind

  def parquet_type(self) -> pa.DataType:
    raise NotImplementedError

  def to_parquet(self, name: str, values: list, dim: int) -> pa.Array:
    raise NotImplementedError

  def to_example(self, name: str, values: list, dim: int, null: str) -> pa.Array:
    raise NotImplementedError

  def decode(self, column, dim: int) -> list:
    """A Parquet column or a decoded tf.Example column -> one field value per row (None for a null)."""
    raise NotImplementedError


class Scalar(Kind):
  """One value per row: a Parquet scalar, a one-item list in a tf.Example."""

  def __init__(self, parquet: pa.DataType, feature: str, python: Callable, finite: bool = False):
    self._parquet = parquet
    self.feature = feature
    self._python = python  # the field's type, from a stored value
    self._finite = finite

  def parquet_type(self) -> pa.DataType:
    return self._parquet

  def _stored(self, value: object) -> object:
    if self.feature == BYTES:
      return value.encode("utf-8") if isinstance(value, str) else value
    return self._python(value) if self._parquet != pa.bool_() else int(bool(value))

  def _check(self, name: str, values: list) -> None:
    if self._finite:
      _require_finite(name, np.array([v for v in values if v is not None], dtype=np.float64))

  def to_parquet(self, name: str, values: list, dim: int) -> pa.Array:
    self._check(name, values)
    if self._parquet == pa.string():
      return pa.array(values, type=pa.string())
    return pa.array([None if v is None else self._python(v) for v in values], type=self._parquet)

  def to_example(self, name: str, values: list, dim: int, null: str) -> pa.Array:
    self._check(name, values)
    item = EXAMPLE_ITEM_TYPES[self.feature]
    if all(v is not None for v in values):
      return _list_array([1] * len(values), [self._stored(v) for v in values], item)
    empty = [] if null == EMPTY else None
    return pa.array([empty if v is None else [self._stored(v)] for v in values], type=pa.list_(item))

  def decode(self, column, dim: int) -> list:
    array = _combined(column)
    values = array.to_pylist()
    if _is_list(array):
      values = [v[0] if v else None for v in values]
    if self.feature == BYTES:
      return [v.decode("utf-8") if isinstance(v, bytes) else v for v in values]
    return [None if v is None else self._python(v) for v in values]


class Vector(Kind):
  """The embedding, one vector per row, in one of the forms of formats/compact.py (float32 by default) and of
  kept_dims(dim, truncate_dim) dimensions.

  Parquet: list<float32>, list<halffloat>, list<int8> or list<uint8> (binary: the packed bytes). tf.Example: a
  float_list for float32; for the others one bytes_list value holding the vector's bytes (float16 little-endian,
  int8, packed uint8), which `tf.io.decode_raw(value, tf.float16 | tf.int8 | tf.uint8)` reads back.
  """

  def __init__(self, dtype: str = compact.FLOAT32, truncate_dim: Optional[int] = None):
    compact.check_dtype(dtype)
    self.dtype = dtype
    self.truncate_dim = truncate_dim
    self._numpy = compact.NUMPY_DTYPES[dtype]
    self.feature = FLOAT if dtype == compact.FLOAT32 else BYTES

  def length(self, dim: int) -> int:
    """The number of stored values per row for a model of `dim` dimensions."""
    return compact.stored_length(compact.kept_dims(dim, self.truncate_dim), self.dtype)

  def parquet_type(self) -> pa.DataType:
    return pa.list_(pa.from_numpy_dtype(self._numpy))

  def _matrix(self, name: str, values: list, dim: int) -> np.ndarray:
    length = self.length(dim)
    if not values:
      return np.zeros((0, length), self._numpy)
    arrays = [np.asarray(v) for v in values]
    if not compact.is_float(self.dtype) and any(a.dtype != self._numpy for a in arrays):
      raise ValueError(f"{name} rows must be {self._numpy.__name__} arrays ({self.dtype} form)")
    matrix = np.stack([a.astype(self._numpy, copy=False) for a in arrays])
    if matrix.shape != (len(values), length):
      raise ValueError(f"{name} rows have shape {matrix.shape[1:]}, expected ({length},)")
    if compact.is_float(self.dtype):
      _require_finite(name, matrix)
    return matrix

  def to_parquet(self, name: str, values: list, dim: int) -> pa.Array:
    matrix = self._matrix(name, values, dim)
    item = pa.from_numpy_dtype(self._numpy)
    return _list_array([matrix.shape[1]] * len(values), pa.array(matrix.reshape(-1), type=item), item)

  def to_example(self, name: str, values: list, dim: int, null: str) -> pa.Array:
    matrix = self._matrix(name, values, dim)
    if self.feature == FLOAT:
      return _list_array([matrix.shape[1]] * len(values), matrix.reshape(-1), pa.float32())
    little = matrix.astype(matrix.dtype.newbyteorder("<"), copy=False)
    return _list_array([1] * len(values), [row.tobytes() for row in little], pa.binary())

  def decode(self, column, dim: int) -> list:
    """[rows, length] arrays of the form's element type without a Python value per element when every row has
    `length` values; else one array (or None for a null) per row, for the row check to reject the odd ones."""
    array = _combined(column)
    length = self.length(dim)
    if pa.types.is_binary(array.type.value_type) or pa.types.is_large_binary(array.type.value_type):
      little = np.dtype(self._numpy).newbyteorder("<")
      return [None if v is None else np.frombuffer(v[0] if v else b"", dtype=little).astype(self._numpy)
              for v in array.to_pylist()]
    values = array.flatten().to_numpy(zero_copy_only=False).astype(self._numpy, copy=False)
    if values.size == len(array) * length and not array.null_count:
      return list(values.reshape(len(array), length))
    return [None if v is None else np.asarray(v, dtype=self._numpy) for v in array.to_pylist()]


class Ragged(Kind):
  """A numpy array of any length per row: token ids (int32) or NaN-marked token scores (float32).

  `nan_as_null`: in Parquet a NaN item is a null item (tf.Example has no null items: NaN stays a value there, where
  tfx-bsl would write a null item as 0.0).
  """

  def __init__(self, parquet_item: pa.DataType, feature: str, dtype: type, nan_as_null: bool = False):
    self._item = parquet_item
    self.feature = feature
    self._dtype = dtype
    self._nan_as_null = nan_as_null

  def parquet_type(self) -> pa.DataType:
    return pa.list_(self._item)

  def to_parquet(self, name: str, values: list, dim: int) -> pa.Array:
    lengths, flat = _flat(values, self._dtype)
    mask = np.isnan(flat) if self._nan_as_null else None
    return _list_array(lengths, pa.array(flat, type=self._item, mask=mask), self._item)

  def to_example(self, name: str, values: list, dim: int, null: str) -> pa.Array:
    item = EXAMPLE_ITEM_TYPES[self.feature]
    lengths, flat = _flat(values, self._dtype)
    return _list_array(lengths, pa.array(flat, type=item), item)

  def decode(self, column, dim: int) -> list:
    # A null item (a Parquet null at [CLS]/[SEP]) becomes NaN.
    return [None if v is None else np.asarray(v, dtype=self._dtype) for v in _combined(column).to_pylist()]


class Matrix(Kind):
  """float32 [num_tokens, dim] per row (sequence_output): list<list<float32>> in Parquet, flattened in a tf.Example."""

  feature = FLOAT

  def parquet_type(self) -> pa.DataType:
    return pa.list_(pa.list_(pa.float32()))

  def _rows(self, name: str, values: list, dim: int) -> list[np.ndarray]:
    rows = [np.asarray(v, dtype=np.float32).reshape(-1, dim) for v in values]
    for row in rows:
      _require_finite(name, row)
    return rows

  def to_parquet(self, name: str, values: list, dim: int) -> pa.Array:
    rows = self._rows(name, values, dim)
    tokens = np.concatenate(rows) if rows else np.zeros((0, dim), np.float32)
    inner = _list_array([dim] * len(tokens), tokens.reshape(-1), pa.float32())
    return _list_array([r.shape[0] for r in rows], inner, inner.type)

  def to_example(self, name: str, values: list, dim: int, null: str) -> pa.Array:
    lengths, flat = _flat(self._rows(name, values, dim), np.float32)
    return _list_array(lengths, flat, pa.float32())

  def decode(self, column, dim: int) -> list:
    return [None if v is None else np.asarray(v, dtype=np.float32).reshape(-1, dim)
            for v in _combined(column).to_pylist()]


STRING = Scalar(pa.string(), BYTES, str)
INT32 = Scalar(pa.int32(), INT64, int)
BOOL = Scalar(pa.bool_(), INT64, bool)
FLOAT64 = Scalar(pa.float64(), FLOAT, float, finite=True)  # float32 in a tf.Example: ~7 significant digits
VECTOR = Vector()
TOKEN_IDS = Ragged(pa.int32(), INT64, np.int32)
TOKEN_SCORES = Ragged(pa.float32(), FLOAT, np.float32, nan_as_null=True)
MATRIX = Matrix()

