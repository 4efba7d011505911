"""Paths on Beam's filesystems: which of them are files of this machine, and what a glob matches."""
from __future__ import annotations


def is_local_path(path: str) -> bool:
  """True for a path without a scheme or with `file://`; False for gs://, s3://, hdfs://, ..."""
  return "://" not in path or path.startswith("file://")


def matching(pattern: str) -> list:
  """The FileMetadata (path, size_in_bytes) of every file `pattern` matches, on any Beam filesystem."""
  from apache_beam.io.filesystems import FileSystems  # pylint: disable=import-outside-toplevel  (kept off --help)
  return [m for result in FileSystems.match([pattern]) for m in result.metadata_list]


def matching_paths(pattern: str) -> list[str]:
  """The paths of every file `pattern` matches, on any Beam filesystem."""
  return [m.path for m in matching(pattern)]
