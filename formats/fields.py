"""What every input format shares: reading options, per-file stats, and the rules that make a row's fields a
TextRecord or a dead letter (ids, texts, UTF-8, truncation)."""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, NamedTuple, Optional, Union

from formats.records import SNIPPET_CHARS, DeadLetter, TextRecord

INPUT_FORMATS = ("text", "jsonl", "csv", "parquet", "tfrecord")
MAX_REASON_CHARS = 500
_SNIPPET_BYTES = SNIPPET_CHARS * 4  # enough bytes for SNIPPET_CHARS characters of UTF-8

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


class Rejected(Exception):
  """A value that cannot become part of a TextRecord; becomes a dead letter."""

  def __init__(self, stage: str, reason: str):
    super().__init__(reason)
    self.stage = stage
    self.reason = reason


class Invalid(NamedTuple):
  """A field that is present but unusable whatever the rules (e.g. a tf.Example feature with 2 values)."""
  reason: str


MISSING = object()


# --- Field rules, shared by every format -------------------------------------------------------

def decode_utf8(data: bytes, what: str) -> str:
  try:
    return data.decode("utf-8")
  except UnicodeDecodeError as error:
    raise Rejected("decode", f"invalid UTF-8 at byte offset {error.start}{what}: {error.reason}") from None


def _check_unicode(value: str, field: str) -> None:
  """Rejects strings that cannot be encoded as UTF-8 (lone surrogates, e.g. from JSON escapes)."""
  if value.isascii():
    return
  try:
    value.encode("utf-8")
  except UnicodeEncodeError as error:
    raise Rejected("decode", f"lone surrogate at character offset {error.start} of field {field!r}") from None


def _present(value: Any, field: str, kind: str) -> Any:
  """Returns value, decoded when bytes; rejects missing, null and invalid values."""
  if value is MISSING or value is None:
    raise Rejected("parse", f"missing {kind} field {field!r}")
  if isinstance(value, Invalid):
    raise Rejected("parse", f"{kind} field {field!r} {value.reason}")
  if isinstance(value, bytes):
    return decode_utf8(value, f" of field {field!r}")
  return value


def is_blank(text: str) -> bool:
  """Empty or whitespace only (without copying the text, unlike strip())."""
  return not text or text.isspace()


def type_name(value: Any) -> str:
  return type(value).__name__


def id_value(value: Any, field: str) -> str:
  """An id: a non-empty string, or an integer (not a bool), as a string."""
  value = _present(value, field, "id")
  if isinstance(value, bool) or not isinstance(value, (str, int)):
    raise Rejected("parse", f"id field {field!r} must be a string or an integer, not {type_name(value)}")
  value = str(value)
  if not value:
    raise Rejected("parse", f"empty id field {field!r}")
  _check_unicode(value, field)
  return value


def text_value(value: Any, field: str, is_pair: bool = False) -> str:
  """A text: a string with something other than whitespace in it, and no NUL."""
  kind = "text pair" if is_pair else "text"
  value = _present(value, field, kind)
  if not isinstance(value, str):
    raise Rejected("parse", f"{kind} field {field!r} must be a string, not {type_name(value)}")
  if "\x00" in value:
    raise Rejected("decode", f"NUL byte in field {field!r}")
  if is_blank(value):
    raise Rejected("parse", f"empty text pair in field {field!r}" if is_pair else "empty text")
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


def make_record(record_id: str, text: str, text_pair: Optional[str], path: str, position: int,
                 max_text_bytes: Optional[int]) -> TextRecord:
  text, cut = cut_utf8(text, max_text_bytes)
  pair_cut = False
  if text_pair is not None:
    text_pair, pair_cut = cut_utf8(text_pair, max_text_bytes)
  return TextRecord(id=record_id, text=text, text_pair=text_pair, source=path,
                    truncated=cut or pair_cut, position=position)


def snippet_of(value: Any) -> Any:
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
    record_id = id_value(fields.get(options.id_field, MISSING), options.id_field)
  except Rejected as rejected:
    return DeadLetter.make(fallback_id, path, rejected.stage, rejected.reason, snippet_of(snippet()))
  try:
    text = text_value(fields.get(options.text_field, MISSING), options.text_field)
    pair = None
    if options.text_pair_field is not None:
      pair = text_value(fields.get(options.text_pair_field, MISSING), options.text_pair_field, is_pair=True)
  except Rejected as rejected:
    return DeadLetter.make(record_id, path, rejected.stage, rejected.reason, snippet_of(snippet()))
  return make_record(record_id, text, pair, path, position, options.max_text_bytes)


def wanted_fields(options: ReadOptions) -> list[str]:
  names = [options.id_field, options.text_field, options.text_pair_field]
  return list(dict.fromkeys(name for name in names if name is not None))


def describe_error(error: BaseException) -> str:
  """A one-line, bounded description of an exception."""
  message = str(error).strip() or "(no message)"
  return f"{type(error).__name__}: {message}"[:MAX_REASON_CHARS]
