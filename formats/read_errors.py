"""How reading an input file fails: damage to its data, or a failure to read its bytes at all.

Damage (a decoding error, a corrupt or truncated compressed stream, a CSV the parser gives up on, a broken
TFRecord frame, a Parquet file Arrow cannot read) is a fact about the file: reading it again gives the same
result, so it becomes a dead letter and the records before it are kept. A failure to read the bytes (an I/O error
left over after the filesystem client's own retries) may pass: it is raised as InputReadError, and so is any
other exception (a bug, running out of memory), so that the runner retries the bundle and the whole file is read
again; a bundle that keeps failing fails the job instead of silently losing the rest of a file.
"""
from __future__ import annotations

import csv
import gzip
import lzma
import sys
import zlib


class InputReadError(OSError):
  """Reading the bytes of an input file failed (an I/O error, not damage to its data); never a dead letter."""


class DamagedInput(ValueError):
  """An input file's data cannot be decoded; the reason is the message."""


# A file that is not there (or is a directory) when it is opened cannot become readable by retrying either.
_GONE = (FileNotFoundError, IsADirectoryError, NotADirectoryError)

# gzip.BadGzipFile is an OSError; it only reaches here from the gzip reader (the file's own reads raise
# InputReadError), as EOFError does from a compressed stream that ends early. bz2 and zstd errors, whose types
# say nothing, are turned into DamagedInput where they are decompressed (formats/compression.py).
_DAMAGE = (DamagedInput, UnicodeError, EOFError, zlib.error, gzip.BadGzipFile, lzma.LZMAError, csv.Error) + _GONE


def caused_by_read_failure(error: BaseException) -> bool:
  """Whether `error` is an InputReadError or was raised while handling one (e.g. re-raised by a library)."""
  seen = set()
  while error is not None and id(error) not in seen:
    if isinstance(error, InputReadError):
      return True
    seen.add(id(error))
    error = error.__cause__ or error.__context__
  return False


def is_damage(error: BaseException) -> bool:
  """Whether an exception raised while reading an input file is damage to the file (or its absence): a dead
  letter. Anything else, and anything caused by an InputReadError, is to be raised."""
  if caused_by_read_failure(error) or isinstance(error, MemoryError):
    return False
  if isinstance(error, _DAMAGE):
    return True
  arrow = sys.modules.get("pyarrow")  # imported by the Parquet reader, the only one that raises its errors
  return arrow is not None and isinstance(error, arrow.ArrowException)
