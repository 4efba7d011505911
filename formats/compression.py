"""Opens input files as buffered binary streams, decompressing by file extension.

Beam's own CompressedFile stops silently at the end of a truncated compressed
file; the readers here raise EOFError instead, so that a damaged file is
reported (and counted as failed) rather than read as if it were whole.

Every read of the file's own bytes goes through one guard that turns its failure
into InputReadError, so that an I/O error is never mistaken for damage: errors
from decompressing or parsing are damage, errors from reading are not
(formats/read_errors.py).
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

from formats.fields import describe_error
from formats.read_errors import DamagedInput, InputReadError

_RAW_CHUNK_BYTES = 1 << 16
_ZSTD_MAX_WINDOW_BYTES = 1 << 31  # the same ceiling Beam uses, so that files Beam reads read here too


class _GuardedSource(io.RawIOBase):
  """The raw bytes of an input file: any failure to read them is raised as InputReadError naming the file."""

  def __init__(self, source: BinaryIO, path: str):
    super().__init__()
    self._source = source
    self._path = path
    self._readinto = getattr(source, "readinto", None)

  def _failed(self, error: Exception) -> InputReadError:
    return InputReadError(f"reading {self._path} failed: {describe_error(error)}")

  def readable(self) -> bool:
    return True

  def readinto(self, buffer) -> int:
    try:
      if self._readinto is not None:
        return self._readinto(buffer) or 0
      data = self._source.read(len(buffer))
    except Exception as error:  # pylint: disable=broad-except
      raise self._failed(error) from error
    buffer[:len(data)] = data
    return len(data)

  def seekable(self) -> bool:
    try:
      return self._source.seekable()
    except Exception:  # pylint: disable=broad-except
      return False

  def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
    try:
      return self._source.seek(offset, whence)
    except Exception as error:  # pylint: disable=broad-except
      raise self._failed(error) from error

  def tell(self) -> int:
    try:
      return self._source.tell()
    except Exception as error:  # pylint: disable=broad-except
      raise self._failed(error) from error


class _StreamDecompressor(io.RawIOBase):
  """Decompresses a stream with a zlib-style decompressor object (decompress(), eof, unused_data).

  Concatenated streams are read one after the other; input that ends inside a
  stream raises EOFError, and data the decompressor rejects raises DamagedInput.
  """

  def __init__(self, source: BinaryIO, new_decompressor: Callable[[], object], kind: str):
    super().__init__()
    self._source = source
    self._kind = kind
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
    try:
      self._pending = memoryview(self._decompressor.decompress(data))
    except MemoryError:
      raise
    except Exception as error:  # pylint: disable=broad-except  (in-memory bytes: whatever fails is their content)
      raise DamagedInput(f"corrupt {self._kind} data ({describe_error(error)})") from error
    return True


def _new_zstd_decompressor():
  import zstandard  # pylint: disable=import-outside-toplevel
  return zstandard.ZstdDecompressor(max_window_size=_ZSTD_MAX_WINDOW_BYTES).decompressobj()


def _guarded(source: BinaryIO, path: str) -> io.BufferedIOBase:
  """A buffered stream over source whose read failures are InputReadErrors."""
  return io.BufferedReader(_GuardedSource(source, path), buffer_size=_RAW_CHUNK_BYTES)


def _decompressing(source: BinaryIO, compression: str) -> io.BufferedIOBase:
  """Wraps an open raw input stream in a reader for its compression type."""
  if compression == CompressionTypes.GZIP:
    return gzip.GzipFile(fileobj=source, mode="rb")
  if compression == CompressionTypes.BZIP2:  # not BZ2File: it reports corrupt data as a bare OSError
    return io.BufferedReader(_StreamDecompressor(source, bz2.BZ2Decompressor, "bz2"))
  if compression == CompressionTypes.LZMA:
    return lzma.LZMAFile(source, mode="rb")
  if compression == CompressionTypes.DEFLATE:
    return io.BufferedReader(_StreamDecompressor(source, zlib.decompressobj, "deflate"))
  if compression == CompressionTypes.ZSTD:
    return io.BufferedReader(_StreamDecompressor(source, _new_zstd_decompressor, "zstd"))
  return source


@contextlib.contextmanager
def open_input(path: str) -> Iterator[io.BufferedIOBase]:
  """Opens path (local or any Beam filesystem) for streaming reads, decompressed by its extension.

  A failure to open the file is raised as it is; a failure to read its bytes later is raised as InputReadError.
  """
  compression = CompressionTypes.detect_compression_type(path)
  with contextlib.ExitStack() as stack:
    raw = stack.enter_context(contextlib.closing(
        FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED)))
    yield stack.enter_context(contextlib.closing(_decompressing(_guarded(raw, path), compression)))
