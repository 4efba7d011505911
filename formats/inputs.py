"""Per-file readers for the input formats: pure Python, streaming, one whole file at a time.

read_file() turns one file into TextRecords and DeadLetters, in file order, and
notes blank lines and failures in a FileStats. Nothing here needs a pipeline,
so the parsing rules can be tested directly.

Positions: 1-based line numbers for text, jsonl and csv (a CSV row's first
line); 0-based record indexes for parquet and tfrecord. Text and CSV lines end
at \\n, \\r\\n or a lone \\r (universal newlines); jsonl lines at \\n or \\r\\n, as
a lone \\r is JSON whitespace. A dead letter whose id could not be read is
named `<path>:<position>`.
"""
from __future__ import annotations

import codecs
import collections
import csv
import dataclasses
import io
import json
import struct
from typing import Any, Callable, Iterator, Mapping, NamedTuple, Optional, Union

from formats.compression import open_input
from transforms.records import SNIPPET_CHARS, DeadLetter, TextRecord

INPUT_FORMATS = ("text", "jsonl", "csv", "parquet", "tfrecord")

PARQUET_BATCH_ROWS = 1024
_READ_CHUNK_BYTES = 1 << 16  # text lines and skipped TFRecord bytes are read this much at a time
_CSV_FIELD_LIMIT = (1 << 31) - 1  # the largest limit every platform's C long accepts
_MAX_REASON_CHARS = 500
_SNIPPET_BYTES = SNIPPET_CHARS * 4  # enough bytes for SNIPPET_CHARS characters of UTF-8
_TFRECORD_HEADER = struct.Struct("<QI")  # payload length, masked CRC-32C of the length
_TFRECORD_FOOTER = struct.Struct("<I")  # masked CRC-32C of the payload

Item = Union[TextRecord, DeadLetter]


class ReadOptions(NamedTuple):
  """How a file's lines, rows or records become TextRecords."""
  input_format: str = "text"
  id_field: str = "id"
  text_field: str = "text"
  text_pair_field: Optional[str] = None
  max_text_bytes: Optional[int] = None


@dataclasses.dataclass
class FileStats:
  """What reading one file saw besides its records and dead letters."""
  blank_lines: int = 0
  failed: bool = False  # the file could not be read, fully or partly
  resume_at: Optional[int] = None  # position of the next line or record; None until one was read


class _Rejected(Exception):
  """A value that cannot become part of a TextRecord; becomes a dead letter."""

  def __init__(self, stage: str, reason: str):
    super().__init__(reason)
    self.stage = stage
    self.reason = reason


class _Invalid(NamedTuple):
  """A field that is present but unusable whatever the rules (e.g. a tf.Example feature with 2 values)."""
  reason: str


_MISSING = object()


# --- Field rules, shared by every format -------------------------------------------------------

def _decode_utf8(data: bytes, what: str) -> str:
  try:
    return data.decode("utf-8")
  except UnicodeDecodeError as error:
    raise _Rejected("decode", f"invalid UTF-8 at byte offset {error.start}{what}: {error.reason}") from None


def _check_unicode(value: str, field: str) -> None:
  """Rejects strings that cannot be encoded as UTF-8 (lone surrogates, e.g. from JSON escapes)."""
  if value.isascii():
    return
  try:
    value.encode("utf-8")
  except UnicodeEncodeError as error:
    raise _Rejected("decode", f"lone surrogate at character offset {error.start} of field {field!r}") from None


def _present(value: Any, field: str, kind: str) -> Any:
  """Returns value, decoded when bytes; rejects missing, null and invalid values."""
  if value is _MISSING or value is None:
    raise _Rejected("parse", f"missing {kind} field {field!r}")
  if isinstance(value, _Invalid):
    raise _Rejected("parse", f"{kind} field {field!r} {value.reason}")
  if isinstance(value, bytes):
    return _decode_utf8(value, f" of field {field!r}")
  return value


def _is_blank(text: str) -> bool:
  """Empty or whitespace only (without copying the text, unlike strip())."""
  return not text or text.isspace()


def _type_name(value: Any) -> str:
  return type(value).__name__


def id_value(value: Any, field: str) -> str:
  """An id: a non-empty string, or an integer (not a bool), as a string."""
  value = _present(value, field, "id")
  if isinstance(value, bool) or not isinstance(value, (str, int)):
    raise _Rejected("parse", f"id field {field!r} must be a string or an integer, not {_type_name(value)}")
  value = str(value)
  if not value:
    raise _Rejected("parse", f"empty id field {field!r}")
  _check_unicode(value, field)
  return value


def text_value(value: Any, field: str, is_pair: bool = False) -> str:
  """A text: a string with something other than whitespace in it, and no NUL."""
  kind = "text pair" if is_pair else "text"
  value = _present(value, field, kind)
  if not isinstance(value, str):
    raise _Rejected("parse", f"{kind} field {field!r} must be a string, not {_type_name(value)}")
  if "\x00" in value:
    raise _Rejected("decode", f"NUL byte in field {field!r}")
  if _is_blank(value):
    raise _Rejected("parse", f"empty text pair in field {field!r}" if is_pair else "empty text")
  _check_unicode(value, field)
  return value


def cut_utf8(text: str, max_bytes: Optional[int]) -> tuple[str, bool]:
  """Cuts text to at most max_bytes of UTF-8 on a character boundary; returns (text, whether it was cut)."""
  if max_bytes is None or len(text) * 4 <= max_bytes:
    return text, False
  head = text[:max_bytes + 1].encode("utf-8")  # enough characters to tell whether the text fits
  if len(head) <= max_bytes:
    return text, False
  return head[:max_bytes].decode("utf-8", errors="ignore"), True


def _make_record(record_id: str, text: str, text_pair: Optional[str], path: str, position: int,
                 max_text_bytes: Optional[int]) -> TextRecord:
  text, cut = cut_utf8(text, max_text_bytes)
  pair_cut = False
  if text_pair is not None:
    text_pair, pair_cut = cut_utf8(text_pair, max_text_bytes)
  return TextRecord(id=record_id, text=text, text_pair=text_pair, source=path,
                    truncated=cut or pair_cut, position=position)


def _snippet(value: Any) -> Any:
  """A short prefix of a str or bytes value (DeadLetter.make cuts it to size); '' for anything else."""
  if isinstance(value, str):
    return value[:SNIPPET_CHARS]
  if isinstance(value, (bytes, bytearray, memoryview)):
    return bytes(value[:_SNIPPET_BYTES])
  return ""


def fields_to_item(fields: Mapping[str, Any], path: str, position: int, options: ReadOptions,
                   snippet: Callable[[], Any]) -> Item:
  """Applies the id and text rules to one row's fields; snippet() is called only for a dead letter."""
  fallback_id = f"{path}:{position}"
  try:
    record_id = id_value(fields.get(options.id_field, _MISSING), options.id_field)
  except _Rejected as rejected:
    return DeadLetter.make(fallback_id, path, rejected.stage, rejected.reason, _snippet(snippet()))
  try:
    text = text_value(fields.get(options.text_field, _MISSING), options.text_field)
    pair = None
    if options.text_pair_field is not None:
      pair = text_value(fields.get(options.text_pair_field, _MISSING), options.text_pair_field, is_pair=True)
  except _Rejected as rejected:
    return DeadLetter.make(record_id, path, rejected.stage, rejected.reason, _snippet(snippet()))
  return _make_record(record_id, text, pair, path, position, options.max_text_bytes)


def _wanted_fields(options: ReadOptions) -> list[str]:
  names = [options.id_field, options.text_field, options.text_pair_field]
  return list(dict.fromkeys(name for name in names if name is not None))


# --- Line formats: text and jsonl ---------------------------------------------------------------

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

  Lines end at \\n or \\r\\n, and with universal=True also at a lone \\r.
  """
  lines = _universal_lines(stream) if universal else map(_strip_newline, stream)
  for number, line in enumerate(lines, start=1):
    if number == 1 and line.startswith(codecs.BOM_UTF8):
      line = line[len(codecs.BOM_UTF8):]
    stats.resume_at = number + 1
    yield number, line


def decode_line(raw: bytes) -> str:
  """A line's text; rejects invalid UTF-8 and NUL bytes (stage "decode")."""
  text = _decode_utf8(raw, "")
  if "\x00" in text:
    raise _Rejected("decode", "NUL byte")
  return text


def _read_text(stream: io.BufferedIOBase, path: str, options: ReadOptions, stats: FileStats) -> Iterator[Item]:
  """One record per non-blank line, named `<path>:<line>`; a lone \\r ends a line too (classic Mac files)."""
  for number, raw in _numbered_lines(stream, stats, universal=True):
    record_id = f"{path}:{number}"
    try:
      text = decode_line(raw)
    except _Rejected as rejected:
      yield DeadLetter.make(record_id, path, rejected.stage, rejected.reason, _snippet(raw))
      continue
    if _is_blank(text):
      stats.blank_lines += 1
      continue
    yield _make_record(record_id, text, None, path, number, options.max_text_bytes)


def _parse_json_object(line: str) -> dict:
  try:
    value = json.loads(line)
  except (ValueError, RecursionError) as error:
    raise _Rejected("parse", f"malformed JSON: {error}"[:_MAX_REASON_CHARS]) from None
  if not isinstance(value, dict):
    raise _Rejected("parse", f"expected a JSON object, got {_type_name(value)}")
  return value


def _read_jsonl(stream: io.BufferedIOBase, path: str, options: ReadOptions, stats: FileStats) -> Iterator[Item]:
  """One JSON object per non-blank line."""
  for number, raw in _numbered_lines(stream, stats):
    try:
      line = decode_line(raw)
      if _is_blank(line):
        stats.blank_lines += 1
        continue
      fields = _parse_json_object(line)
    except _Rejected as rejected:
      yield DeadLetter.make(f"{path}:{number}", path, rejected.stage, rejected.reason, _snippet(raw))
      continue
    yield fields_to_item(fields, path, number, options, lambda line=line: line)


# --- CSV ----------------------------------------------------------------------------------------

def _csv_value(value: str) -> Union[str, bytes]:
  """A field as read with surrogateescape: back to its raw bytes when it was not valid UTF-8."""
  if value.isascii():
    return value
  try:
    value.encode("utf-8")
    return value
  except UnicodeEncodeError:
    return value.encode("utf-8", errors="surrogateescape")


class _RunawayQuote(Exception):
  """A CSV row still inside a quoted field past the byte limit."""


class _CsvLines:
  """The csv reader's source of lines: numbers them, keeps the current row's lines, and can read them again.

  The csv module asks for a further line only while a row is still open inside a quoted field. So a row that asks
  for one after `limit` bytes is a runaway quote (most likely an unterminated one swallowing the rows after it):
  __next__ raises _RunawayQuote instead of letting it grow. After a malformed row, replay_after_first() puts the
  row's lines after its first back in front, so the rows a stray quote swallowed are read as rows after all.
  """

  def __init__(self, lines: Iterator[str], limit: Optional[int]):
    self._lines = lines
    self._limit = limit
    self._replay: collections.deque[tuple[int, str]] = collections.deque()
    self._fresh = 1  # the number of the next line not read yet
    self.row: list[tuple[int, str]] = []  # (line number, line) of the row being read
    self.row_bytes = 0  # UTF-8 bytes of the row's lines, measured only once it spans lines
    self._measured = 0
    self.hit_end = False  # the row asked for a line after the last one

  def start_row(self) -> None:
    self.row = []
    self.row_bytes = self._measured = 0
    self.hit_end = False

  @property
  def next_line(self) -> int:
    """The number of the first line that has not been read yet, or is to be read again."""
    return self._replay[0][0] if self._replay else self._fresh

  def replay_after_first(self) -> None:
    self._replay.extendleft(reversed(self.row[1:]))

  def __iter__(self) -> "_CsvLines":
    return self

  def __next__(self) -> str:
    if self.row and self._limit is not None:  # the row is open: it has grown by a line, measure it
      for _, line in self.row[self._measured:]:
        self.row_bytes += len(line) if line.isascii() else len(line.encode("utf-8", errors="surrogateescape"))
      self._measured = len(self.row)
      if self.row_bytes > self._limit:
        raise _RunawayQuote()
    if self._replay:
      number, line = self._replay.popleft()
    else:
      try:
        line = next(self._lines)
      except StopIteration:
        self.hit_end = True
        raise
      number = self._fresh
      self._fresh += 1
    self.row.append((number, line))
    return line


class _MalformedRow(NamedTuple):
  reason: str
  snippet: str


def _malformed(lines: _CsvLines, error: Exception, limit: Optional[int]) -> _MalformedRow:
  """Describes the row that failed, and queues its lines after the first to be read again."""
  first, last = lines.row[0][0], lines.row[-1][0]
  if isinstance(error, _RunawayQuote):
    count = len(lines.row)
    detail = (f"the row is still inside a quoted field after {count} line{'s' * (count != 1)} and "
              f"{lines.row_bytes} bytes, more than the {limit}-byte text limit (an unterminated quote?)")
  elif lines.hit_end:
    detail = f"a quoted field is never closed ({error})"
  else:
    detail = str(error) if first == last else f"{error} on line {last}"
  if last > first:
    detail += f"; lines {first + 1}-{last} are read again as rows"
  lines.replay_after_first()
  return _MalformedRow(f"malformed CSV: {detail}", lines.row[0][1])


def _csv_rows(text: Iterator[str], limit: Optional[int],
              stats: FileStats) -> Iterator[tuple[int, Union[list[str], _MalformedRow]]]:
  """Yields (first line of the row, row or _MalformedRow), in strict CSV (a stray character after a closing quote,
  or a quoted field open at the end of the file, is an error rather than silently glued on)."""
  lines = _CsvLines(text, limit)
  reader = csv.reader(lines, strict=True)
  while True:
    lines.start_row()
    try:
      row = next(reader)
    except StopIteration:
      return
    except (csv.Error, _RunawayQuote) as error:
      if not lines.row:  # the reader failed without reading a line: give up on the file
        raise
      row = _malformed(lines, error, limit)
    stats.resume_at = lines.next_line
    yield lines.row[0][0], row


def _is_blank_row(row: list[str]) -> bool:
  return not row or (len(row) == 1 and _is_blank(row[0]))


def _read_csv(stream: io.BufferedIOBase, path: str, options: ReadOptions, stats: FileStats) -> Iterator[Item]:
  """One record per row after the header row; a row's position is its first line.

  Lines end at \\n, \\r\\n or a lone \\r outside quotes. A malformed row is dead-lettered under its first line and
  the lines after that are read again as rows, so a stray quote costs one row, not the rest of the file.
  """
  csv.field_size_limit(_CSV_FIELD_LIMIT)
  text = io.TextIOWrapper(stream, encoding="utf-8-sig", errors="surrogateescape", newline="")
  header: Optional[list[str]] = None
  columns: list[tuple[str, int]] = []
  for start, row in _csv_rows(text, options.max_text_bytes, stats):
    where = f"{path}:{start}"
    if isinstance(row, _MalformedRow):
      yield DeadLetter.make(where, path, "parse", row.reason, _snippet(row.snippet))
      continue
    if _is_blank_row(row):
      stats.blank_lines += 1
      continue
    if header is None:
      header = row
      positions = {}
      for index, name in enumerate(header):
        positions.setdefault(name, index)
      columns = [(name, positions[name]) for name in _wanted_fields(options) if name in positions]
      continue
    if len(row) != len(header):
      yield DeadLetter.make(where, path, "parse", f"expected {len(header)} fields, got {len(row)}",
                            _snippet(",".join(row)))
      continue
    fields = {name: _csv_value(row[index]) for name, index in columns}
    yield fields_to_item(fields, path, start, options, lambda row=row: ",".join(row))


# --- Parquet ------------------------------------------------------------------------------------

def _read_parquet(stream: io.BufferedIOBase, path: str, options: ReadOptions, stats: FileStats) -> Iterator[Item]:
  """One record per row, read a batch at a time, only the needed columns."""
  import pyarrow.parquet as pq  # pylint: disable=import-outside-toplevel
  parquet = pq.ParquetFile(stream)
  present = set(parquet.schema_arrow.names)
  columns = [name for name in _wanted_fields(options) if name in present]
  index = 0
  for batch in parquet.iter_batches(batch_size=PARQUET_BATCH_ROWS, columns=columns):
    values = [batch.column(i).to_pylist() for i in range(len(columns))]
    for row in range(batch.num_rows):
      fields = {name: values[c][row] for c, name in enumerate(columns)}
      yield fields_to_item(fields, path, index, options, lambda f=fields: f.get(options.text_field))
      index += 1
      stats.resume_at = index


# --- TFRecord of tf.Example ---------------------------------------------------------------------

def _masked_crc32c(data: bytes) -> int:
  from apache_beam.io.tfrecordio import _TFRecordUtil  # pylint: disable=import-outside-toplevel
  return _TFRecordUtil._masked_crc32c(data)  # pylint: disable=protected-access


class _DamagedPayload(NamedTuple):
  """A TFRecord whose framing is intact but whose payload fails its checksum."""
  offset: int  # of the record's header in the (decompressed) file
  payload: bytes


def _skip_rest(stream: io.BufferedIOBase) -> str:
  """Reads the stream to its end; describes how many bytes that was (and why it stopped early, if it did)."""
  skipped = 0
  try:
    while True:
      chunk = stream.read(_READ_CHUNK_BYTES)
      if not chunk:
        return f"{skipped} bytes"
      skipped += len(chunk)
  except Exception as error:  # pylint: disable=broad-except
    return f"at least {skipped} bytes (then {describe_error(error)})"


class TFRecordFrameError(ValueError):
  """A TFRecord frame (length, its checksum, or the bytes it promises) is broken: the rest of the file is lost."""


def tfrecord_payloads(stream: io.BufferedIOBase) -> Iterator[Union[bytes, _DamagedPayload]]:
  """Yields each record's payload, or a _DamagedPayload when only the payload's checksum fails.

  A record's frame is a length with its own checksum, so a damaged payload can be stepped over; a broken frame
  (length checksum mismatch, or a file ending inside a record) cannot, and raises TFRecordFrameError saying at
  which byte and how many bytes are lost.
  """
  offset = 0
  while True:
    header = stream.read(_TFRECORD_HEADER.size)
    if not header:
      return
    if len(header) != _TFRECORD_HEADER.size:
      raise TFRecordFrameError(f"the file ends inside a record's header at byte {offset}; "
                               f"skipped its last {len(header)} bytes")
    length, length_crc = _TFRECORD_HEADER.unpack(header)
    if _masked_crc32c(header[:8]) != length_crc:
      raise TFRecordFrameError(f"length checksum mismatch at byte {offset} (not a TFRecord file, or a corrupt one); "
                               f"skipped the rest of the file: {len(header)} + {_skip_rest(stream)}")
    payload = stream.read(length)
    footer = stream.read(_TFRECORD_FOOTER.size) if len(payload) == length else b""
    if len(footer) != _TFRECORD_FOOTER.size:
      raise TFRecordFrameError(f"the file ends inside the record at byte {offset} ({length}-byte payload); "
                               f"skipped its last {len(header) + len(payload) + len(footer)} bytes")
    (payload_crc,) = _TFRECORD_FOOTER.unpack(footer)
    yield payload if _masked_crc32c(payload) == payload_crc else _DamagedPayload(offset, payload)
    offset += len(header) + length + len(footer)


def _feature_value(feature) -> Any:
  """The single value of a tf.train.Feature (bytes, int or float), or _Invalid."""
  kind = feature.WhichOneof("kind")
  values = getattr(feature, kind).value if kind else ()
  if len(values) != 1:
    return _Invalid(f"has {len(values)} values, expected 1")
  return values[0]


def _read_tfrecord(stream: io.BufferedIOBase, path: str, options: ReadOptions, stats: FileStats) -> Iterator[Item]:
  """One record per tf.Example; bytes features are decoded as UTF-8, int64 ids become strings.

  A record failing its payload checksum is a dead letter and reading goes on; a broken frame ends the file (a
  "read" dead letter from read_file saying how many bytes were skipped).
  """
  from google.protobuf.message import DecodeError  # pylint: disable=import-outside-toplevel
  from tensorflow.core.example import example_pb2  # pylint: disable=import-outside-toplevel
  wanted = _wanted_fields(options)
  for index, payload in enumerate(tfrecord_payloads(stream)):
    stats.resume_at = index + 1
    if isinstance(payload, _DamagedPayload):
      yield DeadLetter.make(f"{path}:{index}", path, "read",
                            f"TFRecord payload checksum mismatch in the record at byte {payload.offset} "
                            f"({len(payload.payload)} bytes): the record is corrupt; the records after it are read",
                            _snippet(payload.payload))
      continue
    example = example_pb2.Example()
    try:
      example.ParseFromString(payload)
    except DecodeError as error:
      yield DeadLetter.make(f"{path}:{index}", path, "parse", f"malformed tf.Example: {error}",
                            _snippet(payload))
      continue
    features = example.features.feature
    fields = {name: _feature_value(features[name]) for name in wanted if name in features}
    yield fields_to_item(fields, path, index, options, lambda f=fields: f.get(options.text_field))


# --- Any format ---------------------------------------------------------------------------------

_READERS = {
    "text": _read_text,
    "jsonl": _read_jsonl,
    "csv": _read_csv,
    "parquet": _read_parquet,
    "tfrecord": _read_tfrecord,
}
assert tuple(_READERS) == INPUT_FORMATS


def describe_error(error: BaseException) -> str:
  """A one-line, bounded description of an exception."""
  message = str(error).strip() or "(no message)"
  return f"{type(error).__name__}: {message}"[:_MAX_REASON_CHARS]


def read_file(path: str, options: ReadOptions, stats: Optional[FileStats] = None) -> Iterator[Item]:
  """Streams one file's TextRecords and DeadLetters; never raises for bad input.

  A file that cannot be opened, or breaks before its first line or record,
  yields one "read" dead letter named `path`; one that breaks later keeps what
  came before and yields one "read" dead letter named `<path>:<next position>`.
  Either way stats.failed is set.
  """
  stats = FileStats() if stats is None else stats
  reader = _READERS[options.input_format]
  try:
    with open_input(path) as stream:
      yield from reader(stream, path, options, stats)
  except Exception as error:  # pylint: disable=broad-except
    stats.failed = True
    where = path if stats.resume_at is None else f"{path}:{stats.resume_at}"
    yield DeadLetter.make(where, path, "read", describe_error(error))
