"""What killed or failed runs leave, and its removal once a run has committed.

A failed run's staging directory is kept (its checkpoints let a rerun resume, transforms/resume_rows.py) until a
run that supersedes it commits: then RemoveLeftovers, the job's very last step, removes the staging directories the
run was given (its prefix's earlier ones, and the failed runs' under ROOT it resumed from), and the temporary files
of interrupted LATEST writes (`LATEST.tmp-<hex>`) older than the run's launch: a newer one may be another run's
write in progress.
"""
from __future__ import annotations

import logging
import re
from typing import Optional, Sequence

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems

from formats.output_files import path_basename
from formats.paths import matching
from transforms.write import delete_staging_dir

_LOG = logging.getLogger(__name__)


def folder_bytes(folder: str) -> int:
  """The bytes of the files in a staging directory."""
  return sum(m.size_in_bytes for m in matching(FileSystems.join(folder, "*")))


def stray_pointer_files(pointer: str, before: Optional[float] = None) -> list:
  """FileMetadata of the temporary files of interrupted writes of `pointer` (a LATEST file), last changed before
  `before` (time.time(); None: any)."""
  name = re.escape(path_basename(pointer)) + r"\.tmp-[0-9a-f]{32}"
  return [m for m in matching(pointer + ".tmp-*")
          if re.fullmatch(name, path_basename(m.path))
          and (before is None or (m.last_updated_in_seconds or 0.0) < before)]


def remove_leftovers(folders: Sequence[str], pointer: Optional[str], before: Optional[float]) -> list[str]:
  """Removes `folders` (staging directories) and the stray temporary files of `pointer`; returns what it removed.
  A failure to remove one is logged: what is left is listed and removed by `bert-embed clean`."""
  removed = []
  for folder in folders:
    try:
      delete_staging_dir(folder)
      removed.append(folder)
    except Exception as e:  # pylint: disable=broad-except
      _LOG.warning("could not remove %s: %s", folder, e)
  if pointer is not None:
    stray = [m.path for m in stray_pointer_files(pointer, before)]
    if stray:
      try:
        FileSystems.delete(stray)
        removed += stray
      except Exception as e:  # pylint: disable=broad-except
        _LOG.warning("could not remove %s: %s", ", ".join(stray), e)
  return removed


class RemoveLeftovers(beam.PTransform):
  """After `done` (e.g. the LATEST update: one element), removes the leftovers (remove_leftovers). Output: the
  removed paths, one list."""

  def __init__(self, folders: Sequence[str], pointer: Optional[str], before: Optional[float]):
    super().__init__()
    self._args = (tuple(folders), pointer, before)

  def expand(self, done):
    return done | "Remove" >> beam.Map(lambda _, args: remove_leftovers(*args), self._args)
