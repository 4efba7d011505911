"""File formats of the pipeline's outputs as Beam `fileio.FileSink`s: Parquet, TFRecord and JSON lines.

Each sink writes one file into a handle it is given (`open`, `write` per element, `flush` at the end), the public
interface of Beam's file writing; transforms/write.py decides which files exist, names them and counts their rows.
`HashingWriter` wraps the handle so that a file's size and SHA-256 are known the moment it is written, without
reading it back. Parquet pages carry CRC checksums and its footer the key-value metadata it is given; TFRecord
frames carry their length and data CRCs. Parquet columns of float lists (vectors, per-token outputs and scores) are
written without dictionary encoding: their values hardly repeat, so a dictionary only fills up (to 1 MiB per row
group) before Parquet falls back to plain pages, and adds that much to every row group.
"""
from __future__ import annotations

import hashlib
import struct

import google_crc32c
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io import fileio

PARQUET_CODEC = "snappy"


class HashingWriter:
  """A binary file object that passes writes on to `raw` while counting the bytes and hashing them (SHA-256)."""

  def __init__(self, raw):
    self._raw = raw
    self._sha256 = hashlib.sha256()
    self.size_bytes = 0
    self.closed = False

  def write(self, data) -> int:
    view = memoryview(data).cast("B")
    self._sha256.update(view)
    self.size_bytes += len(view)
    self._raw.write(view)
    return len(view)

  def tell(self) -> int:
    return self.size_bytes

  def flush(self) -> None:
    self._raw.flush()

  def writable(self) -> bool:
    return True

  def readable(self) -> bool:
    return False

  def seekable(self) -> bool:
    return False

  def close(self) -> None:
    if not self.closed:
      self.closed = True
      self._raw.close()

  @property
  def sha256(self) -> str:
    return self._sha256.hexdigest()


class OutputSink(fileio.FileSink):
  """A FileSink that also says the extension and MIME type of its files and how many rows an element holds."""

  extension = ""
  mime_type = "application/octet-stream"

  def rows(self, element) -> int:  # pylint: disable=unused-argument
    return 1


def _holds_floats(data_type: pa.DataType) -> bool:
  while pa.types.is_list(data_type) or pa.types.is_large_list(data_type) or pa.types.is_fixed_size_list(data_type):
    data_type = data_type.value_type
  return pa.types.is_floating(data_type)


def dictionary_columns(schema: pa.Schema) -> list[str]:
  """The columns written with dictionary encoding: all but lists of floats (module docstring)."""
  return [f.name for f in schema if not (pa.types.is_list(f.type) and _holds_floats(f.type))]


class ParquetSink(OutputSink):
  """pyarrow.Tables -> one Parquet file, one row group per table, with page checksums and the schema's metadata."""

  extension = ".parquet"
  mime_type = "application/x-parquet"

  def __init__(self, schema: pa.Schema):
    self._schema = schema
    self._writer = None

  def open(self, fh):
    self._writer = pq.ParquetWriter(fh, self._schema, compression=PARQUET_CODEC, use_compliant_nested_type=True,
                                    write_page_checksum=True, use_dictionary=dictionary_columns(self._schema))

  def write(self, record):
    self._writer.write_table(record)

  def flush(self):
    self._writer.close()  # writes the footer; the handle stays open (its owner closes it)

  def rows(self, element) -> int:
    return element.num_rows


def _masked_crc32c(data: bytes) -> int:
  crc = google_crc32c.value(data)
  return (((crc >> 15) | (crc << 17)) + 0xa282ead8) & 0xffffffff


def tfrecord_frame(data: bytes) -> bytes:
  """One TFRecord: length (uint64 LE), the length's masked CRC32C, the data, the data's masked CRC32C."""
  length = struct.pack("<Q", len(data))
  return length + struct.pack("<I", _masked_crc32c(length)) + data + struct.pack("<I", _masked_crc32c(data))


class _FramedSink(OutputSink):
  """Bytes records -> one file, each record framed by `frame`."""

  def __init__(self):
    self._fh = None

  def open(self, fh):
    self._fh = fh

  def frame(self, record: bytes) -> bytes:
    raise NotImplementedError

  def write(self, record):
    self._fh.write(self.frame(record))

  def flush(self):
    self._fh.flush()


class TFRecordSink(_FramedSink):
  """Serialized tf.Examples -> one TFRecord file (each record with its CRCs)."""

  extension = ".tfrecord"

  def frame(self, record: bytes) -> bytes:
    return tfrecord_frame(record)


class JsonLinesSink(_FramedSink):
  """Dead-letter lines (UTF-8 bytes without the newline) -> one JSON-lines file."""

  extension = ".jsonl"
  mime_type = "application/jsonl"

  def frame(self, record: bytes) -> bytes:
    return record + b"\n"
