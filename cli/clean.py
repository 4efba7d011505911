"""`bert-embed clean ROOT_OR_PREFIX [--dry-run]`: lists and removes what killed or failed runs left.

That is their staging directories (with the checkpoints a rerun would resume from: snapshot/resume.py), the
temporary files of interrupted manifest writes and of interrupted LATEST writes. Given an output prefix: that
prefix's; given a directory (a local directory, or a gs:// path ending in "/"): everything below it. Not to be run
while a run writes there: its staging directory would be removed under it.
"""
from __future__ import annotations

import argparse
import os
from typing import NoReturn

from formats.output_files import staging_token
from formats.paths import matching
from snapshot import manifest as manifest_lib
from snapshot.latest_pointer import LATEST_NAME, join_path, normalize_prefix, parent_dir
from formats.usage import UsageError
from snapshot.resume import staging_folders
from snapshot.staging import folder_bytes, remove_leftovers, stray_pointer_files


class _Parser(argparse.ArgumentParser):

  def error(self, message: str) -> NoReturn:
    raise UsageError(f"clean: {message}")


def _parser() -> argparse.ArgumentParser:
  parser = _Parser(prog="bert-embed clean", description=__doc__.split("\n\n")[0])
  parser.add_argument("target", metavar="ROOT_OR_PREFIX",
                      help="an output prefix, or a directory (gs://... ending in /) to clean below")
  parser.add_argument("--dry-run", action="store_true", help="list what would be removed, remove nothing")
  return parser


def _is_directory(target: str) -> bool:
  return target.endswith("/") if "://" in target else os.path.isdir(target)


def leftovers(target: str) -> list[tuple[str, int]]:
  """(path, bytes) of what `clean` removes for `target` (module docstring): staging directories first."""
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


def main(argv: list[str]) -> int:
  args = _parser().parse_args(argv)
  found = leftovers(args.target)
  for path, size in found:
    print(f"{path}  {size} bytes")
  total = sum(size for _, size in found)
  if not args.dry_run:
    removed = set(remove_leftovers([p for p, _ in found if _is_staging(p)], None, None))
    files = [p for p, _ in found if not _is_staging(p)]
    if files:
      from apache_beam.io.filesystems import FileSystems  # pylint: disable=import-outside-toplevel
      FileSystems.delete(files)
      removed.update(files)
    left = [p for p, _ in found if p not in removed]
    if left:
      print(f"bert-embed clean: could not remove {len(left)} of {len(found)} leftovers (e.g. {left[0]})")
      return 1
  verb = "would remove" if args.dry_run else "removed"
  print(f"bert-embed clean: {verb} {len(found)} leftover{'' if len(found) == 1 else 's'}, {total} bytes")
  return 0


def _is_staging(path: str) -> bool:
  return os.path.basename(path.rstrip("/")).startswith("bert-embed-tmp-")
