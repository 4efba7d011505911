"""A run's checkpoints: the rows it has encoded so far, kept in its staging directory so that a rerun can resume.

Each checkpoint is a small Parquet file in the staging directory (formats/output_files.py staging_dir), written
under a temporary name `checkpoint-tmp-<hex>.parquet` and renamed to `checkpoint-<rows>-<size>-<sha256>.parquet`:
the name is its sidecar, saying how many rows it holds and the size and SHA-256 its bytes must have, so one rename
publishes it with its identity. A kill during the write leaves a temporary file, which no run reads; a file whose
bytes do not match its name (torn, or changed since) is not read either.

A run's checkpoints take one of two forms (snapshot/resume.py checkpoint_form). Where its output is written as it
is encoded, its staged embedding shards are its checkpoints: each shard is closed every MAX_ROWS rows or MAX_SECONDS
(transforms/checkpoint.py WriteParts), published under a checkpoint's name, and at the commit moved to its final
name like any staged shard; it holds the output's columns in the output's form (text included with --keep-text).
Elsewhere (a barrier before the write: int8 calibration, --num-shards, --dedupe-texts, --long-text chunk; or
TFRecord output), checkpoints are separate files next to the staged shards: the output's columns before compaction
(float32 vectors of the model's whole dimension), without the text (a rerun takes it from its input). Either holds
id and text_sha256. Its footer carries, under RESUME_KEY, the run's resume key: a hash of the embedding
fingerprint, the output prefix and the checkpoint columns (with their form), so that a checkpoint is only read by a
run of the same prefix (or, with --previous latest:ROOT, one that named that prefix as a source) with the same
fingerprint and columns. A copied or foreign file fails that check.

The staging directory also holds `run.json`, written when the run is launched: its output prefix, embedding
fingerprint (and its inputs, to say what changed), checkpoint columns and start time.
"""
from __future__ import annotations

import hashlib
import json
import re
import uuid
from typing import NamedTuple, Optional, Sequence

from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from formats.output_files import path_basename

RUN_FILE = "run.json"
CHECKPOINT_STEM = "checkpoint-"
_TMP_STEM = "checkpoint-tmp-"
_NAME = re.compile(r"checkpoint-(\d+)-(\d+)-([0-9a-f]{64})\.parquet")
_TMP_NAME = re.compile(r"checkpoint-tmp-[0-9a-f]{32}\.parquet")


class CheckpointName(NamedTuple):
  """What a checkpoint's name says of it."""
  rows: int
  size_bytes: int
  sha256: str


def checkpoint_name(rows: int, size_bytes: int, sha256: str) -> str:
  return f"{CHECKPOINT_STEM}{rows}-{size_bytes}-{sha256}.parquet"


def parse_checkpoint_name(path: str) -> Optional[CheckpointName]:
  """The identity in a published checkpoint's name, or None for any other name."""
  match = _NAME.fullmatch(path_basename(path))
  return None if match is None else CheckpointName(int(match.group(1)), int(match.group(2)), match.group(3))


def is_torn_checkpoint(path: str) -> bool:
  """A checkpoint's temporary name: its write never finished (killed, or failed)."""
  return _TMP_NAME.fullmatch(path_basename(path)) is not None


def is_resume_file(path: str) -> bool:
  """A published checkpoint or the run description: what a failed run's staging keeps for a rerun."""
  return parse_checkpoint_name(path) is not None or path_basename(path) == RUN_FILE


def resume_key(fingerprint: str, output_prefix: str, columns: Sequence[str]) -> str:
  """What a checkpoint's footer carries (module docstring): the run's fingerprint, normalized prefix and columns."""
  data = json.dumps([fingerprint, output_prefix, list(columns)]).encode("utf-8")
  return "resume-" + hashlib.sha256(data).hexdigest()


def write_checkpoint(staging_dir: str, write, rows: int) -> str:
  """Writes one checkpoint into `staging_dir`: `write(handle)` writes its bytes into a hashing handle; returns the
  published path. The file appears under its final name only whole (temporary name, then rename)."""
  from formats import sinks  # pylint: disable=import-outside-toplevel  (pyarrow, only on workers that write)
  tmp = FileSystems.join(staging_dir, f"{_TMP_STEM}{uuid.uuid4().hex}.parquet")
  handle = sinks.HashingWriter(FileSystems.create(tmp, mime_type="application/x-parquet",
                                                  compression_type=CompressionTypes.UNCOMPRESSED))
  try:
    write(handle)
  finally:
    handle.close()
  path = FileSystems.join(staging_dir, checkpoint_name(rows, handle.size_bytes, handle.sha256))
  if FileSystems.exists(path):  # the same rows written again (a retried bundle): one copy is enough
    FileSystems.delete([tmp])
  else:
    FileSystems.rename([tmp], [path])
  return path


class RunDescription(NamedTuple):
  """A run's run.json."""
  output_prefix: str
  fingerprint: str
  fingerprint_inputs: dict
  columns: tuple
  started_at: float  # time.time() at launch

  def to_json(self) -> bytes:
    return json.dumps({"output_prefix": self.output_prefix, "fingerprint": self.fingerprint,
                       "fingerprint_inputs": self.fingerprint_inputs, "columns": list(self.columns),
                       "started_at": self.started_at}, indent=1).encode("utf-8")


def write_run_description(staging_dir: str, description: RunDescription) -> None:
  with FileSystems.create(FileSystems.join(staging_dir, RUN_FILE), mime_type="application/json",
                          compression_type=CompressionTypes.UNCOMPRESSED) as f:
    f.write(description.to_json())


def read_run_description(staging_dir: str) -> RunDescription:
  """Raises OSError or ValueError when run.json is missing or malformed."""
  with FileSystems.open(FileSystems.join(staging_dir, RUN_FILE),
                        compression_type=CompressionTypes.UNCOMPRESSED) as f:
    data = json.loads(f.read().decode("utf-8"))
  if not isinstance(data, dict):
    raise ValueError("not a JSON object")
  try:
    return RunDescription(str(data["output_prefix"]), str(data["fingerprint"]), dict(data["fingerprint_inputs"]),
                          tuple(data["columns"]), float(data["started_at"]))
  except (KeyError, TypeError) as e:
    raise ValueError(f"missing or malformed field {e}") from None

