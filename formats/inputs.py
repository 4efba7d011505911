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

import io
from typing import Iterator, Optional

from formats.compression import open_input
from formats.csv_rows import read_csv
from formats.fields import (INPUT_FORMATS, FileStats, Item, ReadOptions, describe_error, fields_to_item,
                            wanted_fields)
from formats.lines import read_jsonl, read_text
from formats.read_errors import DamagedInput, caused_by_read_failure, is_damage
from formats.tfrecord_input import read_tfrecord
from formats.records import DeadLetter

PARQUET_BATCH_ROWS = 1024


def read_parquet(stream: io.BufferedIOBase, path: str, options: ReadOptions, stats: FileStats) -> Iterator[Item]:
  """One record per row, read a batch at a time, only the needed columns.

  Arrow reports some damage (e.g. a corrupt compressed page) as a bare OSError; as the file's bytes reach Arrow
  through `stream`, whose read failures are InputReadErrors, any other OSError is damage (DamagedInput).
  """
  import pyarrow.parquet as pq  # pylint: disable=import-outside-toplevel
  try:
    parquet = pq.ParquetFile(stream)
    present = set(parquet.schema_arrow.names)
    columns = [name for name in wanted_fields(options) if name in present]
    index = 0
    for batch in parquet.iter_batches(batch_size=PARQUET_BATCH_ROWS, columns=columns):
      values = [batch.column(i).to_pylist() for i in range(len(columns))]
      for row in range(batch.num_rows):
        fields = {name: values[c][row] for c, name in enumerate(columns)}
        yield fields_to_item(fields, path, index, options, lambda f=fields: f.get(options.text_field))
        index += 1
        stats.resume_at = index
  except OSError as error:
    if caused_by_read_failure(error) or isinstance(error, MemoryError):
      raise
    raise DamagedInput(f"unreadable Parquet data ({describe_error(error)})") from error


# --- Any format ---------------------------------------------------------------------------------

_READERS = {
    "text": read_text,
    "jsonl": read_jsonl,
    "csv": read_csv,
    "parquet": read_parquet,
    "tfrecord": read_tfrecord,
}
assert tuple(_READERS) == INPUT_FORMATS


def read_file(path: str, options: ReadOptions, stats: Optional[FileStats] = None) -> Iterator[Item]:
  """Streams one file's TextRecords and DeadLetters; never raises for bad input, always for a failure to read.

  A file that is gone when opened, or whose data is damaged (formats/read_errors.py) before its first line or
  record, yields one "read" dead letter named `path`; one damaged later keeps what came before and yields one
  "read" dead letter named `<path>:<next position>`. Either way stats.failed is set. Any other error, above all
  an I/O error reading the file (InputReadError), is raised: the caller's runner retries the file from its start.
  """
  stats = FileStats() if stats is None else stats
  reader = _READERS[options.input_format]
  try:
    with open_input(path) as stream:
      yield from reader(stream, path, options, stats)
  except Exception as error:  # pylint: disable=broad-except
    if not is_damage(error):
      raise
    stats.failed = True
    where = path if stats.resume_at is None else f"{path}:{stats.resume_at}"
    yield DeadLetter.make(where, path, "read", describe_error(error))
