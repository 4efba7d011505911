"""The LATEST pointer and finding the previous output (`--previous PREFIX` or `--previous latest:ROOT`).

`--previous latest:ROOT` follows ROOT/LATEST, a pointer file that successful runs write as their very last step.
Either way the previous output is read through its manifest, whose presence means that output is complete.

Where the pointer goes (`pointer_path`): ROOT/LATEST when the run was given `--previous latest:ROOT` and its output
lies under ROOT; otherwise LATEST in the directory of the output prefix. The pointer holds the absolute output
prefix on one line.
"""
from __future__ import annotations

import codecs
import os
from typing import NamedTuple, Optional

from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from snapshot import manifest as manifest_lib
from formats.usage import UsageError

LATEST_SCHEME = "latest:"
LATEST_NAME = "LATEST"


class PreviousOutput(NamedTuple):
  """The output a run compares against."""
  requested: str  # the --previous value as given
  prefix: Optional[str]  # None when latest:ROOT has no pointer yet (the first run under ROOT)
  manifest: Optional[dict]
  latest_root: Optional[str]  # ROOT of latest:ROOT


def _is_remote(path: str) -> bool:
  return "://" in path


def normalize_prefix(prefix: str) -> str:
  """A comparable spelling of an output prefix (absolute for local paths, no duplicate slashes)."""
  prefix = prefix.strip()
  if prefix.startswith("file://"):
    prefix = prefix[len("file://"):]
  if _is_remote(prefix):
    scheme, rest = prefix.split("://", 1)
    while "//" in rest:
      rest = rest.replace("//", "/")
    return f"{scheme}://{rest}"
  return os.path.abspath(os.path.expanduser(prefix))


def join_path(directory: str, name: str) -> str:
  """`name` in `directory`, spelled by the directory's Beam filesystem."""
  return FileSystems.join(directory.rstrip("/") if _is_remote(directory) else directory, name)


def parent_dir(prefix: str) -> str:
  return FileSystems.split(normalize_prefix(prefix))[0]


def same_prefix(a: str, b: str) -> bool:
  """True when two output prefixes name the same files: local ones compared by real path (so a symlinked alias of a
  directory is the directory), remote ones by scheme, bucket and object name."""
  a, b = normalize_prefix(a), normalize_prefix(b)
  if _is_remote(a) or _is_remote(b):
    return a == b
  return os.path.realpath(a) == os.path.realpath(b)


def is_under(prefix: str, root: str) -> bool:
  """True when the output prefix lies in directory `root` or below it."""
  prefix, root = normalize_prefix(prefix), normalize_prefix(root)
  separator = "/" if _is_remote(root) else os.sep
  return prefix.startswith(root.rstrip(separator) + separator)


def pointer_path(output: str, latest_root: Optional[str]) -> str:
  """The LATEST file a run writing `output` updates (see the module docstring)."""
  if latest_root and is_under(output, latest_root):
    return join_path(normalize_prefix(latest_root), LATEST_NAME)
  return join_path(parent_dir(output), LATEST_NAME)


def _decode_pointer(path: str, data: bytes) -> str:
  """A LATEST file's text: UTF-8, or UTF-16 or UTF-8 with a byte-order mark (as Windows editors save); raises
  UsageError for anything else."""
  for bom, encoding in ((codecs.BOM_UTF8, "utf-8-sig"), (codecs.BOM_UTF16_LE, "utf-16"),
                        (codecs.BOM_UTF16_BE, "utf-16")):
    if data.startswith(bom):
      break
  else:
    encoding = "utf-8"
  try:
    return data.decode(encoding)
  except UnicodeDecodeError as e:
    raise UsageError(f"{path} is not {encoding.upper().removesuffix('-SIG')} text ({e.reason} at byte {e.start}): "
                     "it should hold the output prefix of the last successful run on one line") from None


def _is_local_directory(path: str) -> bool:
  return not _is_remote(path) and os.path.isdir(normalize_prefix(path))


def check_pointer_path(path: str) -> None:
  """Raises UsageError when the LATEST file a run would read or write is in the way (a directory of that name)."""
  if _is_local_directory(path):
    raise UsageError(f"{path} is a directory, but the run keeps its LATEST pointer file there: rename or remove "
                     "that directory")


def read_pointer(path: str) -> Optional[str]:
  """The prefix a LATEST file points at, or None when the file does not exist; raises UsageError when it cannot be
  read as a pointer.

  A relative prefix in the file (written by hand) is taken relative to the directory holding the file (ROOT), not
  to the working directory.
  """
  check_pointer_path(path)
  if not FileSystems.exists(path):
    return None
  try:
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
      data = f.read()
  except OSError as e:
    raise UsageError(f"cannot read {path}: {e.strerror or e}") from None
  lines = [line.strip() for line in _decode_pointer(path, data).splitlines() if line.strip()]
  if not lines:
    raise UsageError(f"{path} is empty: it should hold the output prefix of the last successful run")
  prefix = lines[0]
  if "\x00" in prefix:
    raise UsageError(f"{path} holds a NUL byte: it should hold the output prefix of the last successful run")
  if _is_remote(prefix) or prefix.startswith("file://") or os.path.isabs(os.path.expanduser(prefix)):
    return prefix
  return join_path(FileSystems.split(path)[0], prefix)


def write_pointer(path: str, prefix: str) -> str:
  """Points `path` (a LATEST file) at `prefix`, atomically; returns `path`."""
  manifest_lib.write_atomically(path, (normalize_prefix(prefix) + "\n").encode("utf-8"), mime_type="text/plain")
  return path


def _read_previous_manifest(prefix: str, requested: str) -> dict:
  path = manifest_lib.manifest_path(prefix)
  if not FileSystems.exists(path):
    raise UsageError(f"--previous {requested}: {path} does not exist, so {prefix} is not the output of a completed "
                     "run (a run writes its manifest only after all its files)")
  try:
    manifest = manifest_lib.read_manifest(prefix)
  except (ValueError, OSError) as e:
    raise UsageError(f"--previous {requested}: cannot read {path}: {e}") from None
  if previous_format(manifest) is None or not isinstance(manifest.get("output_files"), list):
    raise UsageError(f"--previous {requested}: {path} does not list Parquet or TFRecord output files")
  return manifest


def resolve_previous(requested: Optional[str], output: str) -> Optional[PreviousOutput]:
  """Finds the previous output named by --previous; raises UsageError before anything is written.

  Refuses a previous output equal to --output: the run deletes its output prefix's old files first, which would
  destroy the data it is meant to read.
  """
  if requested is None or not requested.strip():
    return None
  requested = requested.strip()
  latest_root = None
  if requested.startswith(LATEST_SCHEME):
    latest_root = requested[len(LATEST_SCHEME):].strip()
    if not latest_root:
      raise UsageError("--previous latest:ROOT needs a ROOT directory, e.g. latest:gs://bucket/embeddings")
    prefix = read_pointer(join_path(normalize_prefix(latest_root), LATEST_NAME))
    if prefix is None:
      return PreviousOutput(requested, None, None, latest_root)
  else:
    prefix = requested
  if same_prefix(prefix, output):
    raise UsageError(f"--output {output} is the previous output ({requested}): a run replaces its output prefix, "
                     "so write each run to a new prefix (e.g. ROOT/run-DATE/emb) and point --previous at the last one")
  return PreviousOutput(requested, prefix, _read_previous_manifest(prefix, requested), latest_root)


def previous_format(manifest: dict) -> Optional[str]:
  """The previous output's format, from its options or else its file names."""
  fmt = (manifest.get("options") or {}).get("format")
  if fmt in ("parquet", "tfrecord"):
    return fmt
  files = manifest.get("output_files") or []
  for fmt in ("parquet", "tfrecord"):
    if files and all(f.endswith("." + fmt) for f in files):
      return fmt
  return None

