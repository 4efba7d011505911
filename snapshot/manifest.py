"""The run manifest: PREFIX-manifest.json, written by the pipeline's own last steps (snapshot/commit.py).

The manifest lists every output and error file with its size and SHA-256, the run's counts and whatever the
launcher passes as static fields (models, fingerprints, options, versions, start time). It is written only after
the run's checks passed and all its files are in place, and replaces any old manifest atomically, so its presence
means "this output is complete". The finalize step deletes the old manifest before it moves any file, so an
interrupted commit never leaves a manifest next to a mix of old and new files.
"""
from __future__ import annotations

import datetime
import importlib.metadata
import json
import re
import uuid
from typing import Mapping, NamedTuple, Optional, Sequence

from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from formats.output_files import is_error_file, path_basename
from formats.paths import matching_paths

SCHEMA_VERSION = 1
MANIFEST_SUFFIX = "-manifest.json"
_TMP_INFIX = ".tmp-"

PACKAGES = ("apache-beam", "tensorflow", "tensorflow-text", "tfx-bsl", "pyarrow", "numpy", "bert-embed")

# Keys the manifest step fills in; static fields must not use them.
RESERVED_KEYS = ("schema_version", "files", "output_files", "error_files", "shards", "counts", "end_time", "invariant",
                 "checks")
_INVARIANT_COUNTS = ("read", "written", "dead_lettered")


def manifest_path(output_prefix: str) -> str:
  """PREFIX-manifest.json."""
  return output_prefix + MANIFEST_SUFFIX


def package_versions(packages: Sequence[str] = PACKAGES) -> dict[str, Optional[str]]:
  """Installed versions of the packages that shape the output (None when one is not installed)."""
  versions = {}
  for name in packages:
    try:
      versions[name] = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
      versions[name] = None
  return versions


def utc_now_iso() -> str:
  """The current UTC time in ISO 8601, e.g. 2025-01-31T12:00:00.123456+00:00 (use it for start_time)."""
  return datetime.datetime.now(datetime.timezone.utc).isoformat()


def build_manifest(output_prefix: str, static_fields: Mapping[str, object], files: Sequence[str],
                   counts: Mapping[str, int], end_time: Optional[str] = None,
                   shards: Optional[Mapping[str, dict]] = None) -> dict:
  """The manifest dict (see snapshot/commit.py); `shards`: {file name: {size_bytes, sha256, rows}}."""
  files = sorted(files)
  manifest = {"schema_version": SCHEMA_VERSION}
  manifest.update(static_fields)
  manifest.update({
      "files": files,
      "output_files": [f for f in files if not is_error_file(f, output_prefix)],
      "error_files": [f for f in files if is_error_file(f, output_prefix)],
      "shards": dict(sorted((shards or {}).items())),
      "counts": {name: int(value) for name, value in counts.items()},
      "end_time": end_time or utc_now_iso(),
  })
  if all(name in counts for name in _INVARIANT_COUNTS):
    manifest["invariant"] = {
        "read_equals_written_plus_dead_lettered": counts["read"] == counts["written"] + counts["dead_lettered"],
    }
  return manifest


def write_atomically(path: str, data: bytes, mime_type: str = "application/json") -> None:
  """Writes `path` via a uniquely named temporary file and a rename (local files and gs://).

  A failure (a full disk, say) removes the temporary file and raises.
  """
  tmp = f"{path}{_TMP_INFIX}{uuid.uuid4().hex}"
  try:
    with FileSystems.create(tmp, mime_type=mime_type, compression_type=CompressionTypes.UNCOMPRESSED) as f:
      f.write(data)
    FileSystems.rename([tmp], [path])
  except BaseException:
    _delete_quietly(tmp)
    raise


def _delete_quietly(path: str) -> None:
  try:
    FileSystems.delete([path])
  except Exception:  # pylint: disable=broad-except
    pass


def read_manifest(output_prefix_or_path: str) -> dict:
  """Reads PREFIX-manifest.json, given the output prefix or the manifest's own path."""
  path = output_prefix_or_path
  if not path.endswith(MANIFEST_SUFFIX):
    path = manifest_path(path)
  with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
    manifest = json.loads(f.read().decode("utf-8"))
  version = manifest.get("schema_version")
  if not isinstance(version, int) or version > SCHEMA_VERSION:
    raise ValueError(f"{path}: unsupported manifest schema_version {version!r} (this code reads <= {SCHEMA_VERSION})")
  return manifest


def stale_manifest_tmp_files(output_prefix: str) -> list[str]:
  """Leftover PREFIX-manifest.json.tmp-<uuid> files of an interrupted manifest write."""
  manifest = manifest_path(output_prefix)
  name = re.escape(path_basename(manifest) + _TMP_INFIX) + r"[0-9a-f]{32}"
  candidates = matching_paths(manifest + _TMP_INFIX + "*")
  return sorted(p for p in candidates if re.fullmatch(name, path_basename(p)))


class ShardIdentity(NamedTuple):
  """What a previous manifest records of one of its files: size, SHA-256, and the embedding fingerprint its
  Parquet footer must carry (None: not checked, e.g. TFRecord, whose files have no footer)."""
  size_bytes: int
  sha256: str
  fingerprint: Optional[str] = None
