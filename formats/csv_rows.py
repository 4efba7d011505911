"""CSV input: strict rows under a header row; a malformed row costs that row, not the rest of the file."""
from __future__ import annotations

import collections
import csv
import io
import re
from typing import Iterator, NamedTuple, Optional, Union

from formats.fields import FileStats, Item, ReadOptions, fields_to_item, is_blank, snippet_of, wanted_fields
from formats.lines import utf8_stream
from formats.read_errors import DamagedInput
from formats.records import DeadLetter

# The csv module refuses a field longer than its limit (csv.field_size_limit(), 131072 characters unless the
# program changed it), and that limit is one setting for the whole process. This reader leaves it alone: a row
# the module refuses for its size is parsed again, from its lines, by _parse_long_row (the same strict dialect).
_FIELD_LIMIT_ERROR = "field larger than field limit"
_UNQUOTED_END = re.compile(r"[,\r\n]")


def _csv_value(value: str) -> Union[str, bytes]:
  """A field as read with surrogateescape: back to its raw bytes when it was not valid UTF-8."""
  if value.isascii():
    return value
  try:
    value.encode("utf-8")
    return value
  except UnicodeEncodeError:
    return value.encode("utf-8", errors="surrogateescape")


class _RunawayQuote(DamagedInput):
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


def _parse_long_row(lines: _CsvLines) -> list[str]:
  """The current row, parsed from its lines read so far and the further lines it needs, in the csv module's strict
  default dialect (comma-separated, '"' quotes, '""' inside quotes for a quote, nothing but a comma or the line's
  end after a closing quote). Raises csv.Error as the module would, or _RunawayQuote (from `lines`)."""
  text, pos, fields = "".join(line for _, line in lines.row), 0, []
  while True:  # at the start of a field
    if text.startswith('"', pos):
      parts, pos = [], pos + 1
      while True:
        close = text.find('"', pos)
        if close < 0:  # the quoted field goes on in the next line
          parts.append(text[pos:])
          try:
            text, pos = next(lines), 0
          except StopIteration:
            raise csv.Error("unexpected end of data") from None
          continue
        parts.append(text[pos:close])
        if text.startswith('"', close + 1):
          parts.append('"')
          pos = close + 2
          continue
        pos = close + 1
        break
      fields.append("".join(parts))
      if pos >= len(text) or text[pos] in "\r\n":
        return fields
      if text[pos] != ",":
        raise csv.Error("',' expected after '\"'")
      pos += 1
    else:
      end = _UNQUOTED_END.search(text, pos)
      if end is None:
        fields.append(text[pos:])
        return fields
      fields.append(text[pos:end.start()])
      if end.group() != ",":
        return fields
      pos = end.end()


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
      try:
        row = next(reader)
      except csv.Error as error:
        if not lines.row or not str(error).startswith(_FIELD_LIMIT_ERROR):
          raise
        row = _parse_long_row(lines)
    except StopIteration:
      return
    except (csv.Error, _RunawayQuote) as error:
      if not lines.row:  # the reader failed without reading a line: give up on the file
        raise
      row = _malformed(lines, error, limit)
    stats.resume_at = lines.next_line
    yield lines.row[0][0], row


def _is_blank_row(row: list[str]) -> bool:
  return not row or (len(row) == 1 and is_blank(row[0]))


def read_csv(stream: io.BufferedIOBase, path: str, options: ReadOptions, stats: FileStats) -> Iterator[Item]:
  """One record per row after the header row; a row's position is its first line.

  Lines end at \\n, \\r\\n or a lone \\r outside quotes. A malformed row is dead-lettered under its first line and
  the lines after that are read again as rows, so a stray quote costs one row, not the rest of the file.
  """
  text = io.TextIOWrapper(utf8_stream(stream), encoding="utf-8-sig", errors="surrogateescape", newline="")
  header: Optional[list[str]] = None
  columns: list[tuple[str, int]] = []
  for start, row in _csv_rows(text, options.max_text_bytes, stats):
    where = f"{path}:{start}"
    if isinstance(row, _MalformedRow):
      yield DeadLetter.make(where, path, "parse", row.reason, snippet_of(row.snippet))
      continue
    if _is_blank_row(row):
      stats.blank_lines += 1
      continue
    if header is None:
      header = row
      positions = {}
      for index, name in enumerate(header):
        positions.setdefault(name, index)
      columns = [(name, positions[name]) for name in wanted_fields(options) if name in positions]
      continue
    if len(row) != len(header):
      yield DeadLetter.make(where, path, "parse", f"expected {len(header)} fields, got {len(row)}",
                            snippet_of(",".join(row)))
      continue
    fields = {name: _csv_value(row[index]) for name, index in columns}
    yield fields_to_item(fields, path, start, options, lambda row=row: ",".join(row))
