"""`bert-embed clean ROOT_OR_PREFIX [--dry-run]`: lists and removes what killed or failed runs left.

That is their staging directories (with the checkpoints a rerun would resume from: snapshot/resume.py), the
temporary files of interrupted manifest writes and of interrupted LATEST writes (listed by snapshot/staging.py
leftovers). Given an output prefix: that prefix's; given a directory (a local directory, or a gs:// path ending in
"/"): everything below it. Not to be run while a run writes there: its staging directory would be removed under it.
"""
from __future__ import annotations

import argparse
from typing import NoReturn

from formats.usage import UsageError
from snapshot.staging import is_staging, leftovers, remove_leftovers


class _Parser(argparse.ArgumentParser):

  def error(self, message: str) -> NoReturn:
    raise UsageError(f"clean: {message}")


def _parser() -> argparse.ArgumentParser:
  parser = _Parser(prog="bert-embed clean", description=__doc__.split("\n\n")[0])
  parser.add_argument("target", metavar="ROOT_OR_PREFIX",
                      help="an output prefix, or a directory (gs://... ending in /) to clean below")
  parser.add_argument("--dry-run", action="store_true", help="list what would be removed, remove nothing")
  return parser


def main(argv: list[str]) -> int:
  args = _parser().parse_args(argv)
  found = leftovers(args.target)
  for path, size in found:
    print(f"{path}  {size} bytes")
  total = sum(size for _, size in found)
  if not args.dry_run:
    removed = set(remove_leftovers([p for p, _ in found if is_staging(p)], None, None))
    files = [p for p, _ in found if not is_staging(p)]
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
