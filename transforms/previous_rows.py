"""Reading the rows of a previous output (`--previous`) back as EmbeddingRecords, checksums verified.

Only the columns a run needs are read (an OutputColumns' `carried()` columns, never the text: carried rows take it
from the input), converted by the column table (formats/columns.py): Parquet row groups column-wise, TFRecord
files in batches decoded by tfx-bsl. Parquet pages are read with their CRC checksums verified, TFRecord records
with theirs. A file (or a row group of one) that is gone, fails a checksum or does not parse is damaged: it is
reported on `PreviousRows.unreadable` instead of failing the pipeline, and its records are encoded again. A failure
to read the bytes of a file that is there (an I/O error left over after the filesystem client's own retries: a GCS
5xx, a timeout, a connection reset part-way) is not damage: it is raised as InputReadError, as the input readers
do (formats/read_errors.py), so that the runner retries the bundle and reads the file again.

A file is also unreadable when it is not the file its manifest describes (another run may have rewritten the
prefix since the launcher read the manifest): given its identity (ShardIdentity: size and SHA-256 as the manifest
records them, and for Parquet the embedding fingerprint in the footer), the worker that reads a file first reads it
whole to check its size and hash, and each Parquet row group read checks the file's size and footer fingerprint
again.
"""
from __future__ import annotations

import contextlib
import hashlib
import logging
from typing import Iterable, Mapping, NamedTuple, Optional, Sequence

import apache_beam as beam
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems

from formats import columns as columns_lib
from formats.columns import KEY_COLUMNS, OutputColumns
from formats.compression import open_input
from formats.fields import describe_error
from snapshot.manifest import ShardIdentity
from formats.output_files import EMBEDDING_FINGERPRINT_KEY
from formats.read_errors import InputReadError, caused_by_read_failure
from formats.tfrecord_input import verified_payloads

UNREADABLE = "unreadable"
_HASH_CHUNK = 8 << 20
_LOG = logging.getLogger(__name__)


class ShardMismatch(ValueError):
  """A previous file that is not the one its manifest describes."""


@contextlib.contextmanager
def _open(path: str):
  """`path`'s bytes, whose read failures are InputReadErrors (formats/compression.py). A failure to open a file
  that is gone is raised as it is (damage); to open one that is there, as InputReadError."""
  with contextlib.ExitStack() as stack:
    try:
      stream = stack.enter_context(open_input(path))
    except Exception as error:  # pylint: disable=broad-except
      if isinstance(error, (FileNotFoundError, IsADirectoryError, NotADirectoryError)) or not _exists(path):
        raise
      raise InputReadError(f"opening {path} failed: {describe_error(error)}") from error
    yield stream


def _exists(path: str) -> bool:
  try:
    return FileSystems.exists(path)
  except Exception as error:  # pylint: disable=broad-except
    raise InputReadError(f"checking whether {path} exists failed: {describe_error(error)}") from error


def _damage(error: BaseException) -> bool:
  """Whether a failure reading a previous file is damage (unreadable), not a failure to read its bytes or running
  out of memory (raised: the runner retries the bundle)."""
  return not (caused_by_read_failure(error) or isinstance(error, MemoryError))


def verify_identity(path: str, identity: Optional[ShardIdentity]) -> None:
  """Reads `path` whole; raises ShardMismatch unless its size and SHA-256 are the identity's (None: no check)."""
  if identity is None:
    return
  digest, size = hashlib.sha256(), 0
  with _open(path) as f:
    while chunk := f.read(_HASH_CHUNK):
      digest.update(chunk)
      size += len(chunk)
  if size != identity.size_bytes or digest.hexdigest() != identity.sha256:
    raise ShardMismatch(f"not the file its manifest describes ({size} bytes, sha256 {digest.hexdigest()[:12]}…; "
                        f"the manifest records {identity.size_bytes} bytes, sha256 {identity.sha256[:12]}…): "
                        "changed since that run")


def _check_footer(parquet: pq.ParquetFile, size: int, identity: Optional[ShardIdentity],
                  key: str = EMBEDDING_FINGERPRINT_KEY) -> None:
  """Raises ShardMismatch unless an opened Parquet file has the identity's size and footer fingerprint (under `key`:
  a checkpoint's carries its resume key)."""
  if identity is None:
    return
  if size != identity.size_bytes:
    raise ShardMismatch(f"not the file its manifest describes ({size} bytes, the manifest records "
                        f"{identity.size_bytes}): changed since that run")
  if identity.fingerprint is not None:
    found = (parquet.schema_arrow.metadata or {}).get(key.encode())
    if found != identity.fingerprint.encode():
      shown = found.decode(errors="replace")[:12] + "…" if found else "none"
      raise ShardMismatch(f"its footer's embedding fingerprint ({shown}) is not its manifest's "
                          f"({identity.fingerprint[:12]}…): changed since that run")


def _size(f) -> int:
  f.seek(0, 2)
  size = f.tell()
  f.seek(0)
  return size


def _unreadable(path: str, error: Exception) -> beam.pvalue.TaggedOutput:
  reason = f"{type(error).__name__}: {error}"
  _LOG.warning("previous output %s cannot be read (%s): the records in it are encoded again", path, reason)
  return beam.pvalue.TaggedOutput(UNREADABLE, (path, reason[:500]))


def _row_groups(path: str, identities: Optional[Mapping[str, ShardIdentity]] = None,
                key: str = EMBEDDING_FINGERPRINT_KEY) -> Iterable[object]:
  """A Parquet file -> (path, row group index) pairs: the unit of parallel reading (or one UNREADABLE output)."""
  identity = (identities or {}).get(path)
  try:
    verify_identity(path, identity)
    with _open(path) as f:
      size = _size(f)
      parquet = pq.ParquetFile(f)
      _check_footer(parquet, size, identity, key)
      count = parquet.num_row_groups
  except Exception as e:  # pylint: disable=broad-except  (a missing, truncated or garbled file)
    if not _damage(e):
      raise
    yield _unreadable(path, e)
    return
  for i in range(count):
    yield path, i


def _read_row_group(part: tuple[str, int], dim: int, names: Sequence[str],
                    identities: Optional[Mapping[str, ShardIdentity]] = None,
                    columns: Optional[OutputColumns] = None, key: str = EMBEDDING_FINGERPRINT_KEY
                    ) -> Iterable[object]:
  """One row group, its page checksums verified, reading only the wanted columns the file has (e.g. no window
  columns: not windowed); on any failure (also a file that is no longer the verified one) one UNREADABLE output
  and no rows."""
  path, index = part
  try:
    with _open(path) as f:
      size = _size(f)
      parquet = pq.ParquetFile(f, page_checksum_verification=True)
      _check_footer(parquet, size, (identities or {}).get(path), key)
      present = [name for name in names if name in parquet.schema_arrow.names]
      table = parquet.read_row_group(index, columns=present)
    rows = columns_lib.arrow_to_records(table, present, dim, columns)
  except Exception as e:  # pylint: disable=broad-except  (checksum failures, undecodable pages, bad values)
    if not _damage(e):
      raise
    yield _unreadable(f"{path} (row group {index})", e)
    return
  yield from rows


def _read_tfrecords(path: str, dim: int, names: Sequence[str],
                    identities: Optional[Mapping[str, ShardIdentity]] = None,
                    columns: Optional[OutputColumns] = None) -> Iterable[object]:
  """One TFRecord file, its identity verified first, then each record's length and data CRC; on any failure one
  UNREADABLE output (the verified batches before it have been emitted and are used)."""
  decoder = columns_lib.example_decoder(names, columns)
  try:
    verify_identity(path, (identities or {}).get(path))
    with _open(path) as f:
      yield from columns_lib.payloads_to_records(verified_payloads(f), names, dim, decoder, columns)
  except Exception as e:  # pylint: disable=broad-except  (CRC mismatch, truncated record, unparsable Example)
    if not _damage(e):
      raise
    yield _unreadable(path, e)


class PreviousRows(NamedTuple):
  rows: beam.PCollection  # EmbeddingRecord
  unreadable: beam.PCollection  # (file, reason) for each file (or Parquet row group) that could not be read


class ReadPreviousEmbeddings(beam.PTransform):
  """The rows of a previous output's files (as listed by its manifest) as EmbeddingRecords, and what could not be
  read (see PreviousRows): checksums are verified, and a damaged file never fails the pipeline; an I/O error is
  raised (the runner retries the bundle).

  Args:
    files: the previous manifest's output_files.
    output_format: "parquet" or "tfrecord".
    dim: the embedding dimension.
    columns: the columns to read (their `carried()` ones); id and text_sha256 always.
    identities: {file: ShardIdentity} as the previous manifest records them; a file that does not match is
      unreadable (None: nothing is checked, e.g. for a manifest that records no identities).
    footer_key: the Parquet footer's key whose value must be the identity's fingerprint (a checkpoint's: RESUME_KEY).
  """

  def __init__(self, files: Sequence[str], output_format: str, dim: int, columns: OutputColumns = OutputColumns(),
               identities: Optional[Mapping[str, ShardIdentity]] = None,
               footer_key: str = EMBEDDING_FINGERPRINT_KEY):
    super().__init__()
    if output_format not in ("parquet", "tfrecord"):
      raise ValueError(f"previous output format must be parquet or tfrecord, got {output_format!r}")
    self._files = list(files)
    self._format = output_format
    self._dim = dim
    self._names = tuple(dict.fromkeys(KEY_COLUMNS + columns.carried()))
    self._columns = columns  # the embedding's form
    self._identities = None if identities is None else dict(identities)
    self._key = footer_key

  def expand(self, pbegin) -> PreviousRows:
    files = pbegin | "PreviousFiles" >> beam.Create(self._files)
    if self._format == "tfrecord":
      read = (files
              | "SpreadFiles" >> beam.Reshuffle()
              | "ReadTFRecords" >> beam.FlatMap(_read_tfrecords, self._dim, self._names, self._identities,
                                                   self._columns)
              .with_outputs(UNREADABLE, main="rows"))
      return PreviousRows(read.rows, read[UNREADABLE])
    parts = (files | "RowGroups" >> beam.FlatMap(_row_groups, self._identities, self._key)
             .with_outputs(UNREADABLE, main="parts"))
    read = (parts.parts
            | "SpreadRowGroups" >> beam.Reshuffle()
            | "ReadRowGroups" >> beam.FlatMap(_read_row_group, self._dim, self._names, self._identities,
                                                 self._columns, self._key)
            .with_outputs(UNREADABLE, main="rows"))
    unreadable = (parts[UNREADABLE], read[UNREADABLE]) | "Unreadable" >> beam.Flatten()
    return PreviousRows(read.rows, unreadable)
