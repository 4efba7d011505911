"""The names of a run's files: its embedding shards, dead-letter shards and staging directory.

A run touches only its own files. A glob such as `PREFIX-*-of-NNNNN.ext` also matches the shards of another run
whose prefix starts with this one (`emb` would take `emb-large-00000-of-00001.parquet`); the names here belong to
exactly one prefix, so the writes (transforms/write.py) and the clean-up (snapshot/staging.py) can tell their own
files from others'. A run writes its shards into its own staging directory `bert-embed-tmp-TOKEN-STEM` next to the
output and moves them to their final names only when it finalizes.
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
# The kinds of sink scratch directory earlier versions' Beam sinks left (see scratch_dir_name).
SCRATCH_KINDS = ("embeddings", "errors")
# The kinds of file a run writes: embedding shards and dead-letter shards.
EMBEDDINGS, ERRORS = "embeddings", "errors"
FILE_KINDS = (EMBEDDINGS, ERRORS)
_STAGING_STEM = "bert-embed-tmp-"
# The key of the embedding fingerprint (snapshot/fingerprint.py) in a Parquet shard's footer metadata.
EMBEDDING_FINGERPRINT_KEY = "embedding_fingerprint"
# The key of the run's resume key (formats/checkpoint_files.py) in a checkpoint's footer metadata (and so in the
# footer of every embedding shard of a run whose staged shards are its checkpoints).
RESUME_KEY = "resume_key"


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


def shard_name(output_prefix: str, kind: str, index: int, count: int, extension: str) -> str:
  """The final name of shard `index` of `count`: PREFIX-SSSSS-of-NNNNN.EXT, or PREFIX-errors-SSSSS-of-NNNNN.EXT."""
  if kind not in FILE_KINDS:
    raise ValueError(f"file kind must be one of {FILE_KINDS}, got {kind!r}")
  if not 0 <= index < count <= 99999:
    raise ValueError(f"shard {index} of {count} does not fit the 5-digit shard names")
  stem = errors_prefix(output_prefix) if kind == ERRORS else output_prefix
  return f"{stem}-{index:05d}-of-{count:05d}{extension}"


def is_own_file(path: str, output_prefix: str, kind: str) -> bool:
  """is_output_file for EMBEDDINGS, is_error_file for ERRORS."""
  return is_error_file(path, output_prefix) if kind == ERRORS else is_output_file(path, output_prefix)


def staging_dir_name(output_prefix: str, token: str) -> str:
  """The name of a run's staging directory: bert-embed-tmp-TOKEN-STEM (TOKEN: 32 hex digits).

  The run's stem comes last, after fixed-length fields, so a name belongs to exactly one prefix (`emb` and
  `emb-large` cannot take each other's).
  """
  if re.fullmatch(r"[0-9a-f]{32}", token) is None:
    raise ValueError(f"staging token must be 32 hex digits, got {token!r}")
  return f"{_STAGING_STEM}{token}-{path_basename(output_prefix)}"


def staging_dir(output_prefix: str, token: str) -> str:
  """The run's staging directory next to its output (the prefix's directory), as a path or URL."""
  directory = output_prefix[:len(output_prefix) - len(path_basename(output_prefix))]
  return directory + staging_dir_name(output_prefix, token)


def staging_token(path: str, output_prefix: str):
  """The token of `path` when it names a staging directory of `output_prefix`, else None."""
  pattern = re.escape(_STAGING_STEM) + r"([0-9a-f]{32})-" + re.escape(path_basename(output_prefix))
  match = re.fullmatch(pattern, path_basename(path.rstrip("/\\")))
  return match.group(1) if match else None


def scratch_dir_name(output_prefix: str, kind: str, token: str) -> str:
  """The name of an earlier version's sink scratch directory: beam-temp-KIND-TOKEN-STEM (TOKEN: 32 hex digits).

  Beam's own `beam-temp-STEM-UUID` cannot tell the dead-letter sink of `emb` (stem `emb-errors`) from
  the embedding sink of `emb-errors`; with the run's stem last, after fixed-length fields, a name
  belongs to exactly one prefix.
  """
  if kind not in SCRATCH_KINDS:
    raise ValueError(f"scratch kind must be one of {SCRATCH_KINDS}, got {kind!r}")
  return f"beam-temp-{kind}-{token}-{path_basename(output_prefix)}"


def is_scratch_dir(path: str, output_prefix: str) -> bool:
  """True when `path` is named like a sink scratch directory of `output_prefix` (see scratch_dir_name); a run
  removes those that an earlier version left."""
  kinds = "|".join(SCRATCH_KINDS)
  pattern = rf"beam-temp-(?:{kinds})-[0-9a-f]{{32}}-" + re.escape(path_basename(output_prefix))
  return re.fullmatch(pattern, path_basename(path.rstrip("/\\"))) is not None
