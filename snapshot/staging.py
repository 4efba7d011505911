"""The run's files on their way in: staged under temporary names, moved to their final names, and what failed,
killed or superseded runs leave behind. Pure file operations (FileSystems), no Beam steps: the commit protocol
(snapshot/commit.py) and the steps that run it (transforms/commit_steps.py, transforms/write.py) call them.

Every file is first written into the run's staging directory (WriteStaged, transforms/write.py), each with its size
and SHA-256 known as it is written (WrittenFile), and moved to its final name by commit_files, only once the run's
checks passed. A run's first step removes what failed or killed runs of the same prefix left in their staging
directories (stale_staging), never another prefix's, but their checkpoints (a resume reads them: snapshot/resume.py);
once a run has committed, remove_leftovers removes the staging directories it superseded and the temporary files of
interrupted LATEST writes (`LATEST.tmp-<hex>`) older than its launch: a newer one may be another run's write.
"""
from __future__ import annotations

import copy
import logging
import os
import re
import uuid
from typing import Mapping, NamedTuple, Optional, Sequence

from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from formats import sinks
from formats.checkpoint_files import is_resume_file
from formats.output_files import FILE_KINDS, is_own_file, is_scratch_dir, path_basename, shard_name, staging_token
from formats.paths import matching, matching_paths
from snapshot import manifest as manifest_lib
from snapshot.latest_pointer import LATEST_NAME, join_path, normalize_prefix, parent_dir
from snapshot.checks import RunCheckError
from snapshot.resume import staging_folders

_LOG = logging.getLogger(__name__)


class WrittenFile(NamedTuple):
  """A file a run wrote: its kind (formats.output_files.FILE_KINDS), path (staged, or final once committed), size,
  SHA-256 of its bytes and rows."""
  kind: str
  path: str
  size_bytes: int
  sha256: str
  rows: int


def open_staged(staging_dir: str, kind: str, sink: sinks.OutputSink) -> tuple[str, sinks.HashingWriter]:
  path = FileSystems.join(staging_dir, f"{kind}-{uuid.uuid4().hex}{sink.extension}")
  handle = sinks.HashingWriter(FileSystems.create(path, mime_type=sink.mime_type,
                                                  compression_type=CompressionTypes.UNCOMPRESSED))
  sink.open(handle)
  return path, handle


def close_staged(kind: str, path: str, handle: sinks.HashingWriter, sink: sinks.OutputSink, rows: int) -> WrittenFile:
  sink.flush()
  handle.close()
  return WrittenFile(kind, path, handle.size_bytes, handle.sha256, rows)


def write_empty_file(staging_dir: str, kind: str, sink: sinks.OutputSink) -> WrittenFile:
  """A file without rows (for Parquet: the schema and footer), so that even an empty output has a shard."""
  sink = copy.copy(sink)
  path, handle = open_staged(staging_dir, kind, sink)
  return close_staged(kind, path, handle, sink, 0)


def own_files(output_prefix: str, kinds: Sequence[str] = FILE_KINDS) -> list[str]:
  """The files of `output_prefix` of these kinds that exist: never another prefix's, nor look-alikes."""
  return sorted(m.path for m in matching(output_prefix + "-*")
                if any(is_own_file(m.path, output_prefix, kind) for kind in kinds))


def delete_staging_dir(staging_dir: str) -> None:
  """Deletes a staging directory and what is in it (on filesystems without directories: its files)."""
  if "://" in staging_dir:
    files = [m.path for m in matching(FileSystems.join(staging_dir, "*"))]
    if files:
      FileSystems.delete(files)
  elif FileSystems.exists(staging_dir):
    FileSystems.delete([staging_dir])


def _final_names(output_prefix: str, written: Sequence[WrittenFile],
                 kinds: Mapping[str, sinks.OutputSink]) -> list[tuple[WrittenFile, str]]:
  """Each written file of `kinds` and its final name, PREFIX[-errors]-SSSSS-of-NNNNN.EXT (N: the kind's files)."""
  plan = []
  for kind, sink in kinds.items():
    files = sorted((w for w in written if w.kind == kind), key=lambda w: w.path)
    plan += [(w, shard_name(output_prefix, kind, i, len(files), sink.extension)) for i, w in enumerate(files)]
  return plan


def _where(output_prefix: str, staging_dir: str, plan: list) -> tuple[list, list]:
  """(the plan's files still in `staging_dir`, those neither there nor under their final name with their size).
  A file under its final name was moved by an earlier, interrupted attempt of the same commit."""
  staged = {path_basename(m.path) for m in matching(FileSystems.join(staging_dir, "*"))}
  there = [(w, final) for w, final in plan if path_basename(w.path) in staged]
  lost = []
  if len(there) < len(plan):
    sizes = {path_basename(m.path): m.size_in_bytes for m in matching(output_prefix + "-*")}
    lost = [(w, final) for w, final in plan
            if path_basename(w.path) not in staged and sizes.get(path_basename(final)) != w.size_bytes]
  return there, lost


def check_staged(output_prefix: str, staging_dir: str, written: Sequence[WrittenFile],
                 kinds: Mapping[str, sinks.OutputSink]) -> None:
  """Raises RunCheckError (one line) unless every staged file is still in `staging_dir`, or already under its final
  name with its size. Run before the commit touches anything: a run of the same prefix that committed meanwhile may
  have removed this run's staging as a failed run's (two reruns racing), and this run must then fail without
  replacing that run's output."""
  _, lost = _where(output_prefix, staging_dir, _final_names(output_prefix, written, kinds))
  if lost:
    raise RunCheckError(f"{len(lost)} of this run's staged files are gone from {staging_dir} (e.g. "
                        f"{path_basename(lost[0][0].path)}): another run of {output_prefix} may have committed and "
                        f"removed them; nothing was replaced, run again to resume")


def commit_files(output_prefix: str, staging_dir: str, written: Sequence[WrittenFile],
                 kinds: Mapping[str, sinks.OutputSink]) -> list[WrittenFile]:
  """Moves staged files to their final names, replacing the prefix's earlier files of the same kinds.

  For each kind in `kinds` (kind -> its sink, which writes an empty shard when the kind has no file): the staged
  files become PREFIX[-errors]-SSSSS-of-NNNNN.EXT, N their number; the prefix's earlier files of that kind that do
  not get a new file's name are deleted first (only this prefix's own: formats.output_files.is_own_file); the rest
  are replaced by the rename. Safe to run again after an interruption: a staged file already moved is found under
  its final name (same size). Returns the files under their final names, sorted by path.
  """
  written = list(written) + [write_empty_file(staging_dir, kind, sink) for kind, sink in kinds.items()
                             if not any(w.kind == kind for w in written)]
  plan = _final_names(output_prefix, written, kinds)
  targets = {path_basename(final) for _, final in plan}
  stale = [path for path in own_files(output_prefix, tuple(kinds)) if path_basename(path) not in targets]
  if stale:
    FileSystems.delete(stale)
  moves, lost = _where(output_prefix, staging_dir, plan)
  if lost:
    w, final = lost[0]
    raise IOError(f"staged file {w.path} is gone and {final} is not the file it was ({w.size_bytes} bytes)")
  if moves:
    FileSystems.rename([w.path for w, _ in moves], [final for _, final in moves])
  return sorted((w._replace(path=final) for w, final in plan), key=lambda w: w.path)


def stale_staging(output_prefix: str, own_token: Optional[str] = None, keep_resume_files: bool = False) -> list[str]:
  """The staging directories of earlier runs of this prefix (not `own_token`'s), an earlier version's sink scratch
  directories and interrupted manifest writes: never another prefix's. Local: directories; elsewhere: their files.
  `keep_resume_files`: the files of those directories, but their checkpoints and run.json (a resume reads them)."""
  base, stem = FileSystems.split(output_prefix)
  stale = manifest_lib.stale_manifest_tmp_files(output_prefix)

  def ours(name: str) -> bool:
    token = staging_token(name, output_prefix)
    return (token is not None and token != own_token) or is_scratch_dir(name, output_prefix)

  if "://" not in base:
    directory = base or "."
    if os.path.isdir(directory):
      folders = sorted(os.path.join(base, d) for d in os.listdir(directory)
                       if ours(d) and os.path.isdir(os.path.join(directory, d)))
      if keep_resume_files:
        folders = sorted(os.path.join(f, name) for f in folders for name in os.listdir(f or ".")
                         if not is_resume_file(name))
      stale += folders
    return stale
  files = (matching_paths(FileSystems.join(base, f"bert-embed-tmp-*-{stem}", "*"))
           + matching_paths(FileSystems.join(base, f"beam-temp-*-{stem}", "*")))
  return stale + sorted(p for p in files
                        if ours(p.rsplit("/", 1)[0]) and not (keep_resume_files and is_resume_file(p)))


def remove_stale_staging(output_prefix: str, own_token: Optional[str] = None, keep_resume_files: bool = False
                         ) -> list[str]:
  """Deletes stale_staging(); returns the deleted paths."""
  stale = stale_staging(output_prefix, own_token, keep_resume_files)
  if stale:
    FileSystems.delete(stale)
  return stale


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


def _is_directory(target: str) -> bool:
  return target.endswith("/") if "://" in target else os.path.isdir(target)


def leftovers(target: str) -> list[tuple[str, int]]:
  """(path, bytes) of what `bert-embed clean` removes for `target`: given an output prefix, that prefix's staging
  directories, interrupted manifest writes and LATEST writes; given a directory (a local one, or a gs:// path ending
  in "/"), everything below it. Staging directories first."""
  found = []
  if _is_directory(target):
    root = normalize_prefix(target)
    for folder in staging_folders(root, recursive=True):
      found.append((folder, folder_bytes(folder)))
    pointers = [join_path(root, LATEST_NAME)]
    if "://" not in root:
      pointers += [os.path.join(top, LATEST_NAME) for top, _, names in os.walk(root) if top != root
                   and any(n.startswith(LATEST_NAME + ".tmp-") for n in names)]
      tmps = [os.path.join(top, n) for top, _, names in os.walk(root) for n in names
              if manifest_lib.MANIFEST_SUFFIX + ".tmp-" in n]
    else:
      tmps = [m.path for m in matching(join_path(root, "**")) if manifest_lib.MANIFEST_SUFFIX + ".tmp-" in m.path]
    found += [(path, matching(path)[0].size_in_bytes) for path in tmps]
  else:
    prefix = normalize_prefix(target)
    for folder in staging_folders(parent_dir(prefix)):
      if staging_token(folder, prefix) is not None:
        found.append((folder, folder_bytes(folder)))
    found += [(path, matching(path)[0].size_in_bytes) for path in manifest_lib.stale_manifest_tmp_files(prefix)]
    pointers = [join_path(parent_dir(prefix), LATEST_NAME)]
  for pointer in pointers:
    found += [(m.path, m.size_in_bytes) for m in stray_pointer_files(pointer)]
  return found


def is_staging(path: str) -> bool:
  return os.path.basename(path.rstrip("/")).startswith("bert-embed-tmp-")
