"""The names of a run's files: its embedding shards, dead-letter shards and sink scratch directories.

A run touches only its own files. Beam's sinks delete everything matching `PREFIX-*-of-NNNNN.ext` before
renaming, which also takes the shards of another run whose prefix starts with this one (`emb` would delete
`emb-large-00000-of-00001.parquet`); the names here belong to exactly one prefix, so the sinks
(formats/sinks.py) and the manifest's clean-up (pipeline/manifest.py) can tell their own files from others'.
"""
from __future__ import annotations

import re

OUTPUT_FORMATS = ("parquet", "tfrecord")

# Dead letters go to PREFIX-errors-SSSSS-of-NNNNN.jsonl.
ERRORS_INFIX = "-errors"
ERRORS_SUFFIX = ".jsonl"

# Beam's default shard template '-SSSSS-of-NNNNN': shard number and count, 5 digits each.
_SHARD_PATTERN = r"-\d{5}-of-\d{5}"
_OUTPUT_EXTENSIONS = r"\.(?:parquet|tfrecord)"
# The kinds of sink scratch directory (see scratch_dir_name).
SCRATCH_KINDS = ("embeddings", "errors")


def check_output_prefix(output_prefix: str) -> None:
  """Raises ValueError unless `output_prefix` is a usable file name prefix (no directory, no globs)."""
  if not isinstance(output_prefix, str) or not output_prefix:
    raise ValueError(f"output prefix must be a non-empty string, got {output_prefix!r}")
  if output_prefix.endswith(("/", "\\")):
    raise ValueError(f"output prefix must end in a file name stem, not a directory: {output_prefix!r}")
  if any(c in output_prefix for c in "*?[]"):
    # Beam's sinks glob for their own shards, and local FileSystems.delete expands globs: a prefix
    # like 'out/e*b' could make them delete other files.
    raise ValueError(f"output prefix must not contain glob characters *?[]: {output_prefix!r}")


def errors_prefix(output_prefix: str) -> str:
  """The file prefix of the dead-letter shards for `output_prefix`."""
  return output_prefix + ERRORS_INFIX


def path_basename(path: str) -> str:
  """The last component of a local path or URL."""
  return re.split(r"[/\\]", path)[-1]


def is_output_file(path: str, output_prefix: str) -> bool:
  """True when `path` is named exactly like one of `output_prefix`'s embedding shards.

  That is PREFIX-SSSSS-of-NNNNN.parquet or .tfrecord: not `PREFIX-large-00000-of-00001.parquet` (the
  prefix `PREFIX-large`), nor `PREFIX-00000-of-00001.parquet.bak`. Only the file names are compared.
  """
  stem = re.escape(path_basename(output_prefix))
  return re.fullmatch(stem + _SHARD_PATTERN + _OUTPUT_EXTENSIONS, path_basename(path)) is not None


def is_error_file(path: str, output_prefix: str) -> bool:
  """True when `path` is named exactly like one of `output_prefix`'s dead-letter shards.

  `emb-errors-00000-of-00001.jsonl` is the prefix `emb`'s; the prefix `emb-errors` writes
  `emb-errors-00000-of-00001.parquet` and `emb-errors-errors-00000-of-00001.jsonl`.
  """
  stem = re.escape(path_basename(errors_prefix(output_prefix)))
  return re.fullmatch(stem + _SHARD_PATTERN + re.escape(ERRORS_SUFFIX), path_basename(path)) is not None


def scratch_dir_name(output_prefix: str, kind: str, token: str) -> str:
  """The name of a sink's scratch directory: beam-temp-KIND-TOKEN-STEM (TOKEN: 32 hex digits).

  Beam's own `beam-temp-STEM-UUID` cannot tell the dead-letter sink of `emb` (stem `emb-errors`) from
  the embedding sink of `emb-errors`; with the run's stem last, after fixed-length fields, a name
  belongs to exactly one prefix.
  """
  if kind not in SCRATCH_KINDS:
    raise ValueError(f"scratch kind must be one of {SCRATCH_KINDS}, got {kind!r}")
  return f"beam-temp-{kind}-{token}-{path_basename(output_prefix)}"


def is_scratch_dir(path: str, output_prefix: str) -> bool:
  """True when `path` is named like a sink scratch directory of `output_prefix` (see scratch_dir_name)."""
  kinds = "|".join(SCRATCH_KINDS)
  pattern = rf"beam-temp-(?:{kinds})-[0-9a-f]{{32}}-" + re.escape(path_basename(output_prefix))
  return re.fullmatch(pattern, path_basename(path.rstrip("/\\"))) is not None
