"""Stage 1: input files -> TextRecords, with dead letters for what cannot be read, decoded or parsed.

Patterns are matched when the pipeline is built, so that a pattern matching
nothing stops the run before the job starts. The matched files are spread over
the workers (Create + Reshuffle) and each file is streamed whole by one DoFn,
with the pure-Python readers of the formats package.
"""
from __future__ import annotations

import os
import re
from typing import Iterable, NamedTuple, Optional, Sequence, Union

import apache_beam as beam
from apache_beam.io.filesystem import BeamIOError
from apache_beam.io.filesystems import FileSystems

from formats.fields import FileStats, ReadOptions, describe_error
from formats.inputs import INPUT_FORMATS, read_file
from transforms.names import DEAD_LETTER, NAMESPACE
from formats.records import DeadLetter

__all__ = ["INPUT_FORMATS", "InputError", "MatchedPath", "ReadResult", "ReadTexts", "match_inputs"]

BLANK_LINES = "blank_lines"
FILES_FAILED = "files_failed"


class InputError(ValueError):
  """The input patterns or reading options are unusable; the message is meant for the user."""


class ReadResult(NamedTuple):
  records: beam.PCollection  # TextRecord
  dead_letters: beam.PCollection  # DeadLetter
  blank_lines: beam.PCollection  # int, one per file: its blank or whitespace-only lines
  files_failed: beam.PCollection  # str, one path per file that could not be read fully


class MatchedPath(str):
  """A path match_inputs found. Matching it again would treat it as a pattern (a file named `br[1].txt` would
  match `br1.txt`, or nothing), so match_inputs and ReadTexts take it as it is."""
  __slots__ = ()


def _is_local_directory(path: str) -> bool:
  return "://" not in path and os.path.isdir(path)


def _exists(path: str) -> bool:
  try:
    return FileSystems.exists(path)
  except (BeamIOError, ValueError):
    return False


def _match_one(pattern: str) -> list[str]:
  """The files one pattern matches; raises InputError when it matches none or matching fails.

  A pattern matching no file that names one literally (its name holds glob characters) is that file. A directory
  is an error unless written with a trailing separator (`dir/`, which Beam reads as `dir/*`).
  """
  if not pattern.endswith(("/", os.sep)) and _is_local_directory(pattern):
    raise InputError(f"input {pattern!r} is a directory, not a file or a glob; "
                     f"use e.g. {os.path.join(pattern, '*')!r}")
  try:
    (result,) = FileSystems.match([pattern])
  except BeamIOError as error:
    causes = "; ".join(describe_error(e) for e in (error.exception_details or {}).values())
    raise InputError(f"cannot match input pattern {pattern!r}: {causes or error}") from error
  except ValueError as error:  # e.g. a scheme no filesystem handles
    raise InputError(f"cannot match input pattern {pattern!r}: {error}") from error
  paths = [m.path for m in result.metadata_list if not _is_local_directory(m.path)]
  if not paths and _exists(pattern):
    paths = [pattern]
  if not paths:
    raise InputError(f"input pattern {pattern!r} matches no files")
  return paths


def file_identity(path: str) -> object:
  """What tells two spellings of one file apart from two files: a local file's device and inode (so `a.txt`,
  `./a.txt`, `/abs/a.txt`, a symlink or a hard link to it are one file), else its real path; a remote object's URL
  without repeated slashes."""
  if "://" in path and not path.startswith("file://"):
    scheme, rest = path.split("://", 1)
    return f"{scheme}://{re.sub('/+', '/', rest)}"
  local = path.removeprefix("file://")
  try:
    status = os.stat(local)
  except OSError:
    return os.path.realpath(local)
  return (status.st_dev, status.st_ino)


def match_inputs(patterns: Union[str, Sequence[str]]) -> list[MatchedPath]:
  """Expands file patterns (local or any Beam filesystem, e.g. gs://) into sorted, distinct files.

  A file that several patterns, or several spellings, reach is listed once (see file_identity), spelled as the first
  pattern in order that matches it spells it (within one pattern: the first spelling in sorted order); with text
  input, that spelling is its records' `<file>:<line>` ids. A MatchedPath (what this returns) is kept as it is, not
  matched again.

  Raises:
    InputError: naming the first pattern that matches no file, or when there is no pattern.
  """
  if isinstance(patterns, str):
    patterns = [patterns]
  if not patterns:
    raise InputError("no input pattern given")
  spellings = {}  # file identity -> the path read
  for pattern in patterns:
    if isinstance(pattern, MatchedPath):
      matched = [str(pattern)]
    elif not pattern or not pattern.strip():
      raise InputError("an input pattern is empty")
    else:
      matched = sorted(set(_match_one(pattern)))
    for path in matched:
      spellings.setdefault(file_identity(path), path)
  return [MatchedPath(path) for path in sorted(set(spellings.values()))]


def _check_field(name: str, value: Optional[str], optional: bool = False) -> None:
  if value is None and optional:
    return
  if not isinstance(value, str) or not value:
    raise InputError(f"{name} must be a non-empty string, got {value!r}")


def _options(input_format: str, id_field: str, text_field: str, text_pair_field: Optional[str],
             max_text_bytes: Optional[int]) -> ReadOptions:
  """Validated ReadOptions; raises InputError."""
  if input_format not in INPUT_FORMATS:
    raise InputError(f"unknown input format {input_format!r}; expected one of {', '.join(INPUT_FORMATS)}")
  _check_field("id field", id_field)
  _check_field("text field", text_field)
  _check_field("text pair field", text_pair_field, optional=True)
  if max_text_bytes is not None and (isinstance(max_text_bytes, bool) or not isinstance(max_text_bytes, int)
                                     or max_text_bytes < 1):
    raise InputError(f"max text bytes must be a positive integer, got {max_text_bytes!r}")
  return ReadOptions(input_format, id_field, text_field, text_pair_field, max_text_bytes)


class _ReadFileFn(beam.DoFn):
  """Reads one whole file: records on the main output; dead letters, blank lines and failures tagged."""

  def __init__(self, options: ReadOptions):
    self._options = options
    self._records = beam.metrics.Metrics.counter(NAMESPACE, "records_read")
    self._blank = beam.metrics.Metrics.counter(NAMESPACE, "blank_lines")
    self._failed = beam.metrics.Metrics.counter(NAMESPACE, "files_failed")
    self._dead_lettered = beam.metrics.Metrics.counter(NAMESPACE, "records_dead_lettered_read")

  def process(self, path: str) -> Iterable:
    stats = FileStats()
    for item in read_file(path, self._options, stats):
      if isinstance(item, DeadLetter):
        self._dead_lettered.inc()
        yield beam.pvalue.TaggedOutput(DEAD_LETTER, item)
      else:
        self._records.inc()
        yield item
    self._blank.inc(stats.blank_lines)
    yield beam.pvalue.TaggedOutput(BLANK_LINES, stats.blank_lines)
    if stats.failed:
      self._failed.inc()
      yield beam.pvalue.TaggedOutput(FILES_FAILED, path)


class ReadTexts(beam.PTransform):
  """Reads text records from files in one of INPUT_FORMATS (see the formats package for the rules).

  Args:
    patterns: file patterns (globs; local or gs://), or paths match_inputs returned (read as they are);
      .gz/.bz2/.xz/.zst/.deflate files are decompressed.
    input_format: one of INPUT_FORMATS.
    id_field, text_field, text_pair_field: field, column or feature names (not used for "text").
    max_text_bytes: when set, texts longer than this many UTF-8 bytes are cut and marked truncated.

  Raises:
    InputError: at construction for bad options, at expansion when a pattern matches no file.
  """

  def __init__(self, patterns: Union[str, Sequence[str]], input_format: str = "text", id_field: str = "id",
               text_field: str = "text", text_pair_field: Optional[str] = None,
               max_text_bytes: Optional[int] = None):
    super().__init__()
    self._patterns = [patterns] if isinstance(patterns, str) else list(patterns)
    self._options = _options(input_format, id_field, text_field, text_pair_field, max_text_bytes)

  def expand(self, pbegin) -> ReadResult:
    files = [str(path) for path in match_inputs(self._patterns)]
    paths = pbegin | "Files" >> beam.Create(files)
    if len(files) > 1:  # one file has nothing to spread (its records are spread later: transforms/spread.py)
      paths = paths | "SpreadFiles" >> beam.Reshuffle()
    read = paths | "ReadFiles" >> beam.ParDo(_ReadFileFn(self._options)).with_outputs(
        DEAD_LETTER, BLANK_LINES, FILES_FAILED, main="records")
    return ReadResult(records=read.records, dead_letters=read[DEAD_LETTER],
                      blank_lines=read[BLANK_LINES], files_failed=read[FILES_FAILED])
