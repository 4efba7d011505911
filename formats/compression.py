"""Opens input files as buffered binary streams, decompressing by file extension.

Beam's own CompressedFile stops silently at the end of a truncated compressed
file; the readers here raise EOFError instead, so that a damaged file is
reported (and counted as failed) rather than read as if it were whole.
"""
from __future__ import annotations

import bz2
import contextlib
import gzip
import io
import lzma
import zlib
from typing import BinaryIO, Callable, Iterator

from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

_RAW_CHUNK_BYTES = 1 << 16
_ZSTD_MAX_WINDOW_BYTES = 1 << 31  # the same ceiling Beam uses, so that files Beam reads read here too


class _RawReader(io.RawIOBase):
  """Adapts an object with a read(n) method to io.RawIOBase, so io.BufferedReader can wrap it."""

  def __init__(self, source: BinaryIO):
    super().__init__()
    self._source = source

  def readable(self) -> bool:
    return True

  def readinto(self, buffer) -> int:
    data = self._source.read(len(buffer))
    buffer[:len(data)] = data
    return len(data)


class _StreamDecompressor(io.RawIOBase):
  """Decompresses a stream with a zlib-style decompressor object (decompress(), eof, unused_data).

  Concatenated streams are read one after the other; input that ends inside a
  stream raises EOFError.
  """

  def __init__(self, source: BinaryIO, new_decompressor: Callable[[], object]):
    super().__init__()
    self._source = source
    self._new_decompressor = new_decompressor
    self._decompressor = new_decompressor()
    self._fed = False  # whether the current stream has received any input
    self._pending = memoryview(b"")

  def readable(self) -> bool:
    return True

  def readinto(self, buffer) -> int:
    while not self._pending:
      if not self._fill():
        return 0
    size = min(len(buffer), len(self._pending))
    buffer[:size] = self._pending[:size]
    self._pending = self._pending[size:]
    return size

  def _fill(self) -> bool:
    """Decompresses the next input chunk into self._pending; False at the clean end of the input."""
    leftover = self._decompressor.unused_data if self._decompressor.eof else b""
    if leftover:
      self._decompressor = self._new_decompressor()
      self._fed = False
    data = leftover or self._source.read(_RAW_CHUNK_BYTES)
    if not data:
      if self._fed and not self._decompressor.eof:
        raise EOFError("compressed stream ended before its end marker (the file is truncated)")
      return False
    if self._decompressor.eof:  # data after a finished stream: another stream follows
      self._decompressor = self._new_decompressor()
    self._fed = True
    self._pending = memoryview(self._decompressor.decompress(data))
    return True


def _new_zstd_decompressor():
  import zstandard  # pylint: disable=import-outside-toplevel
  return zstandard.ZstdDecompressor(max_window_size=_ZSTD_MAX_WINDOW_BYTES).decompressobj()


def _buffered(source: BinaryIO) -> io.BufferedIOBase:
  """Returns source itself when it is already a buffered binary stream, else a buffered wrapper over it."""
  if isinstance(source, io.BufferedIOBase):
    return source
  return io.BufferedReader(_RawReader(source))


def _decompressing(source: BinaryIO, compression: str) -> io.BufferedIOBase:
  """Wraps an open raw input stream in a reader for its compression type."""
  if compression == CompressionTypes.GZIP:
    return gzip.GzipFile(fileobj=source, mode="rb")
  if compression == CompressionTypes.BZIP2:
    return bz2.BZ2File(source, mode="rb")
  if compression == CompressionTypes.LZMA:
    return lzma.LZMAFile(source, mode="rb")
  if compression == CompressionTypes.DEFLATE:
    return io.BufferedReader(_StreamDecompressor(source, zlib.decompressobj))
  if compression == CompressionTypes.ZSTD:
    return io.BufferedReader(_StreamDecompressor(source, _new_zstd_decompressor))
  return _buffered(source)


@contextlib.contextmanager
def open_input(path: str) -> Iterator[io.BufferedIOBase]:
  """Opens path (local or any Beam filesystem) for streaming reads, decompressed by its extension."""
  compression = CompressionTypes.detect_compression_type(path)
  with contextlib.ExitStack() as stack:
    raw = stack.enter_context(contextlib.closing(
        FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED)))
    yield stack.enter_context(contextlib.closing(_decompressing(raw, compression)))
