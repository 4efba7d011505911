"""Line formats: text (one record per non-blank line) and jsonl (one JSON object per non-blank line).

Input is UTF-8; a file opening with a UTF-16 byte-order mark (as Windows tools save "Unicode" text) is decoded as
UTF-16 (utf8_stream), and a UTF-8 byte-order mark is dropped.
"""
from __future__ import annotations

import codecs
import io
import json
from typing import Iterator

from formats.fields import (MAX_REASON_CHARS, FileStats, Item, ReadOptions, Rejected, decode_utf8, fields_to_item,
                            is_blank, make_record, snippet_of, type_name)
from formats.records import DeadLetter

_READ_CHUNK_BYTES = 1 << 16  # text lines are read this much at a time
_UTF16_BOMS = {codecs.BOM_UTF16_LE: "utf-16-le", codecs.BOM_UTF16_BE: "utf-16-be"}


class _Replayed(io.RawIOBase):
  """The bytes already read from a stream's start, then the rest of the stream."""

  def __init__(self, head: bytes, source: io.BufferedIOBase):
    super().__init__()
    self._head = memoryview(head)
    self._source = source

  def readable(self) -> bool:
    return True

  def readinto(self, buffer) -> int:
    if self._head:
      size = min(len(buffer), len(self._head))
      buffer[:size] = self._head[:size]
      self._head = self._head[size:]
      return size
    data = self._source.read1(len(buffer))
    buffer[:len(data)] = data
    return len(data)


class _Utf16AsUtf8(io.RawIOBase):
  """A UTF-16 byte stream (its byte-order mark already read) as UTF-8 bytes; invalid UTF-16 raises
  UnicodeDecodeError where it is met."""

  def __init__(self, source: io.BufferedIOBase, encoding: str):
    super().__init__()
    self._source = source
    self._decoder = codecs.getincrementaldecoder(encoding)(errors="strict")
    self._pending = memoryview(b"")

  def readable(self) -> bool:
    return True

  def readinto(self, buffer) -> int:
    while not self._pending:
      data = self._source.read1(_READ_CHUNK_BYTES)
      text = self._decoder.decode(data, final=not data)
      if not data and not text:
        return 0
      self._pending = memoryview(text.encode("utf-8"))
    size = min(len(buffer), len(self._pending))
    buffer[:size] = self._pending[:size]
    self._pending = self._pending[size:]
    return size


def utf8_stream(stream: io.BufferedIOBase) -> io.BufferedIOBase:
  """`stream`'s bytes, or, when it opens with a UTF-16 byte-order mark, its text as UTF-8 bytes (mark dropped).

  The first chunk is read as the line readers would read it (one read1), then put back in front of the rest.
  """
  head = stream.read1(_READ_CHUNK_BYTES)
  if len(head) == 1:
    head += stream.read(1)
  encoding = _UTF16_BOMS.get(head[:2])
  if encoding is None:
    return io.BufferedReader(_Replayed(head, stream), buffer_size=_READ_CHUNK_BYTES)
  rest = io.BufferedReader(_Replayed(head[2:], stream), buffer_size=_READ_CHUNK_BYTES)
  return io.BufferedReader(_Utf16AsUtf8(rest, encoding), buffer_size=_READ_CHUNK_BYTES)


def _strip_newline(line: bytes) -> bytes:
  """Removes one trailing \\n or \\r\\n, nothing else."""
  if line.endswith(b"\n"):
    line = line[:-2] if line.endswith(b"\r\n") else line[:-1]
  return line


def _without_line_end(line: bytes) -> bytes:
  """Removes one trailing \\r\\n, \\n or \\r."""
  if line.endswith(b"\n"):
    return line[:-2] if line.endswith(b"\r\n") else line[:-1]
  return line[:-1] if line.endswith(b"\r") else line


def _universal_lines(stream: io.BufferedIOBase) -> Iterator[bytes]:
  """Yields lines without their ends; \\n, \\r\\n and a lone \\r each end a line, as in Python's universal newlines.

  Read in chunks rather than by the stream's own iteration (which splits at \\n only), so that a file with \\r
  line ends is not held in memory whole. A chunk ending in \\r ends its line there; a \\n opening the next chunk
  is then the second half of that \\r\\n, not an empty line.
  """
  parts: list[bytes] = []  # the start of a line whose end is in a later chunk
  skip_lf = False
  while True:
    chunk = stream.read1(_READ_CHUNK_BYTES)  # what is at hand: the lines before damage further on come out first
    if not chunk:
      break
    if skip_lf:
      skip_lf = False
      if chunk.startswith(b"\n"):
        chunk = chunk[1:]
    pieces = chunk.splitlines(keepends=True)  # bytes split at \n, \r\n and \r only
    if not pieces:
      continue
    last = pieces.pop()
    for piece in pieces:
      if parts:
        parts.append(piece)
        piece = b"".join(parts)
        parts = []
      yield _without_line_end(piece)
    parts.append(last)
    if last.endswith(b"\r"):
      skip_lf = True
    if last.endswith((b"\n", b"\r")):
      line = b"".join(parts)
      parts = []
      yield _without_line_end(line)
  if parts:
    yield b"".join(parts)


def _numbered_lines(stream: io.BufferedIOBase, stats: FileStats,
                    universal: bool = False) -> Iterator[tuple[int, bytes]]:
  """Yields (1-based line number, line without its end); a UTF-8 byte-order mark opening the file is dropped.

  Lines end at \\n or \\r\\n, and with universal=True also at a lone \\r. UTF-16 input is read as UTF-8
  (utf8_stream).
  """
  stream = utf8_stream(stream)
  lines = _universal_lines(stream) if universal else map(_strip_newline, stream)
  for number, line in enumerate(lines, start=1):
    if number == 1 and line.startswith(codecs.BOM_UTF8):
      line = line[len(codecs.BOM_UTF8):]
    stats.resume_at = number + 1
    yield number, line


def _looks_utf16(raw: bytes) -> bool:
  """Every other byte NUL: ASCII text saved as UTF-16 without the byte-order mark that would have told."""
  return len(raw) >= 2 and (not raw[0::2].strip(b"\x00") or not raw[1::2].strip(b"\x00"))


def decode_line(raw: bytes) -> str:
  """A line's text; rejects invalid UTF-8 and NUL bytes (stage "decode")."""
  if b"\x00" in raw and _looks_utf16(raw):
    raise Rejected("decode", "NUL bytes: the file looks like UTF-16 without a byte-order mark (save it as UTF-8)")
  text = decode_utf8(raw, "")
  if "\x00" in text:
    raise Rejected("decode", "NUL byte")
  return text


def read_text(stream: io.BufferedIOBase, path: str, options: ReadOptions, stats: FileStats) -> Iterator[Item]:
  """One record per non-blank line, named `<path>:<line>`; a lone \\r ends a line too (classic Mac files)."""
  for number, raw in _numbered_lines(stream, stats, universal=True):
    record_id = f"{path}:{number}"
    try:
      text = decode_line(raw)
    except Rejected as rejected:
      yield DeadLetter.make(record_id, path, rejected.stage, rejected.reason, snippet_of(raw))
      continue
    if is_blank(text):
      stats.blank_lines += 1
      continue
    yield make_record(record_id, text, None, path, number, options.max_text_bytes)


def _parse_json_object(line: str) -> dict:
  try:
    value = json.loads(line)
  except (ValueError, RecursionError) as error:
    raise Rejected("parse", f"malformed JSON: {error}"[:MAX_REASON_CHARS]) from None
  if not isinstance(value, dict):
    raise Rejected("parse", f"expected a JSON object, got {type_name(value)}")
  return value


def read_jsonl(stream: io.BufferedIOBase, path: str, options: ReadOptions, stats: FileStats) -> Iterator[Item]:
  """One JSON object per non-blank line."""
  for number, raw in _numbered_lines(stream, stats):
    try:
      line = decode_line(raw)
      if is_blank(line):
        stats.blank_lines += 1
        continue
      fields = _parse_json_object(line)
    except Rejected as rejected:
      yield DeadLetter.make(f"{path}:{number}", path, rejected.stage, rejected.reason, snippet_of(raw))
      continue
    yield fields_to_item(fields, path, number, options, lambda line=line: line)
