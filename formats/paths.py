"""Paths on Beam's filesystems: which of them are files of this machine."""
from __future__ import annotations


def is_local_path(path: str) -> bool:
  """True for a path without a scheme or with `file://`; False for gs://, s3://, hdfs://, ..."""
  return "://" not in path or path.startswith("file://")
