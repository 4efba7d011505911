"""The commit protocol: what makes a run's output current, top to bottom, files and store together.

Every file of a run is first written into the run's staging directory (snapshot/staging.py). When every file is
written and every count gathered (transforms/manifest_facts.py: one combine), the job's last steps
(transforms/commit_steps.py: Finalize, UpdateLatest, RemoveLeftovers) run, once, in this order:

1. checks the run (snapshot/checks.py): read == written + dead_lettered, and dead-lettered / read <=
   --max-dead-letter-fraction. A failed check raises RunCheckError (one line), so the job fails and nothing below
   happens: the earlier output of the prefix, its manifest and LATEST stay as they were, and no manifest vouches
   for the failed run. So does a run whose staged files are gone (another run of the prefix committed meanwhile and
   removed them as a failed run's: snapshot/staging.py check_staged), before anything is touched;
2. runs the finalizers: things that must also commit only after the checks, such as applying a vector store's
   staged changes (snapshot/store_commit.py), in order, before the prefix's files are touched: a finalizer that
   raises fails the job and leaves the earlier output whole;
3. deletes the prefix's earlier manifest: first, so that a mix of old and new files is never vouched for;
4. moves the new shards to their final names, deleting the prefix's earlier shards that are not replaced (only this
   prefix's own files: formats/output_files.py);
5. writes the manifest, with each shard's size and SHA-256, and removes the staging directory;
6. points LATEST at the output (its own step, UpdateLatest, so that a failure there names it);
7. removes the leftovers the run superseded: its prefix's earlier staging directories, the failed runs' it resumed
   from, and interrupted LATEST writes (RemoveLeftovers, the job's very last step).

Steps 1-5 are commit_run, 6 point_latest, 7 remove_leftovers, below in that order.
"""
from __future__ import annotations

import dataclasses
import json
import logging
from typing import Any, Mapping, NamedTuple, Optional, Sequence

from apache_beam.io.filesystems import FileSystems

from formats import sinks
from formats.output_files import path_basename
from snapshot import latest_pointer
from snapshot import manifest as manifest_lib
from snapshot import staging
from snapshot.checks import DEAD_LETTER_REASONS, RunChecks, check_run
from snapshot.staging import WrittenFile

_LOG = logging.getLogger(__name__)


class CommittedRun(NamedTuple):
  """What a finalizer is given: the run's counts, its files (still under their staged names) and the private fields
  (names starting with "_": given to the finalizers, never written to the manifest)."""
  output_prefix: str
  counts: Mapping[str, int]
  files: Sequence[WrittenFile]
  private: Mapping[str, Any] = {}


class Finalizer:
  """Something that commits with the run: after its checks passed, before its files replace the earlier output.

  `commit` returns fields to add to the manifest ({} for none; "counts": {count name: value} sets counts); it
  raises to fail the run (then the earlier output and its manifest stay as they were, and LATEST does not move).
  It runs on a worker: keep heavy state out of `__init__`.
  """

  name = "finalizer"

  def commit(self, run: CommittedRun) -> dict:
    raise NotImplementedError

  def kept_note(self) -> str:
    """What a failed check leaves of this finalizer's things, for the failure's message ("" for nothing to say)."""
    return ""


def shard_identities(files: Sequence[WrittenFile]) -> dict:
  """{file name: {"size_bytes", "sha256", "rows"}} for the manifest (names without directory: a root may move)."""
  return {path_basename(f.path): {"size_bytes": f.size_bytes, "sha256": f.sha256, "rows": f.rows} for f in files}


@dataclasses.dataclass(frozen=True)
class CommitPlan:
  """What the commit knows from the launch: the prefix, its staging directory, the manifest's static fields, the
  names of its counts, fields and tallies, the kinds of file to commit ({kind: its sink}), the checks (None: none)
  and the finalizers."""
  output_prefix: str
  staging_dir: str
  static_fields: dict
  count_names: tuple[str, ...]
  kinds: Mapping[str, sinks.OutputSink]
  checks: Optional[RunChecks]
  finalizers: tuple[Finalizer, ...]
  field_names: tuple[str, ...] = ()
  tally_names: tuple[str, ...] = ()


def commit_run(plan: CommitPlan, facts: dict) -> dict:
  """Steps 1-5 of the protocol (module docstring), on the run's gathered facts ({"counts", "fields", "tallies",
  "examples", "files"}: transforms/manifest_facts.py); returns the manifest written."""
  counts = {name: int(facts["counts"].get(name, 0)) for name in plan.count_names}
  checks = check(plan, facts, counts)                                           # 1. the run's checks
  computed, private = computed_fields(plan, facts, checks)
  run = CommittedRun(plan.output_prefix, dict(counts), tuple(facts["files"]), private)
  staging.check_staged(plan.output_prefix, plan.staging_dir, facts["files"], plan.kinds)  # (all still there)
  apply_finalizers(plan.finalizers, run, counts, computed)                      # 2. the store's staged changes
  delete_manifest(plan.output_prefix)                                           # 3. the earlier manifest
  files = staging.commit_files(plan.output_prefix, plan.staging_dir, facts["files"], plan.kinds)  # 4. the shards
  manifest = write_manifest(plan, computed, files, counts)                      # 5. the manifest
  remove_staging(plan.staging_dir)
  return manifest


def check(plan: CommitPlan, facts: dict, counts: Mapping[str, int]) -> dict:
  """1. Raises RunCheckError when the run fails its checks; returns the manifest's `checks` ({} without checks)."""
  if plan.checks is None:
    return {}
  reasons = facts.get("examples", {}).get(DEAD_LETTER_REASONS, {})
  where = (f"nothing was replaced at {plan.output_prefix} (this run's files, dead letters included, stay in "
           f"{plan.staging_dir} until the next run of the prefix)")
  where += "".join(f"; {note}" for note in (f.kept_note() for f in plan.finalizers) if note)
  check_run(counts, reasons, plan.checks, where)
  return {"max_dead_letter_fraction": plan.checks.max_dead_letter_fraction,
          "dead_letter_fraction": counts["dead_lettered"] / counts["read"] if counts["read"] else 0.0}


def computed_fields(plan: CommitPlan, facts: dict, checks: dict) -> tuple[dict, dict]:
  """The manifest's fields computed by the job, and the private ones (names starting with "_": finalizers only)."""
  computed = {name: facts["fields"].get(name) for name in plan.field_names if not name.startswith("_")}
  private = {name: facts["fields"].get(name) for name in plan.field_names if name.startswith("_")}
  computed.update({name: facts["tallies"].get(name, {}) for name in plan.tally_names})
  if checks:
    computed["checks"] = checks
  return computed, private


def apply_finalizers(finalizers: Sequence[Finalizer], run: CommittedRun, counts: dict, computed: dict) -> None:
  """2. Runs the finalizers in order (a vector store's apply: remote calls that can fail), before anything of the
  prefix is touched, so one that raises leaves the earlier output and its manifest whole. Updates `counts` and
  `computed` with what they return."""
  for finalizer in finalizers:
    added = dict(finalizer.commit(run._replace(counts=dict(counts))) or {})
    counts.update({name: int(n) for name, n in added.pop("counts", {}).items() if name in counts})
    computed.update(added)


def delete_manifest(output_prefix: str) -> None:
  """3. Deletes the prefix's manifest, before any of its files changes: a mix of old and new is never vouched for."""
  path = manifest_lib.manifest_path(output_prefix)
  if FileSystems.exists(path):
    FileSystems.delete([path])


def write_manifest(plan: CommitPlan, computed: dict, files: Sequence[WrittenFile], counts: Mapping[str, int]) -> dict:
  """5. Writes the manifest (atomically) for the committed `files`; returns it."""
  manifest = manifest_lib.build_manifest(plan.output_prefix, {**plan.static_fields, **computed},
                                         [f.path for f in files], counts, shards=shard_identities(files))
  data = json.dumps(manifest, indent=2, ensure_ascii=False).encode("utf-8") + b"\n"
  manifest_lib.write_atomically(manifest_lib.manifest_path(plan.output_prefix), data)
  return manifest


def remove_staging(staging_dir: str) -> None:
  """5. (end) Removes the run's staging directory; a failure is a warning: the next run removes what is left."""
  try:
    staging.delete_staging_dir(staging_dir)
  except Exception as e:  # pylint: disable=broad-except
    _LOG.warning("could not remove the staging directory %s: %s", staging_dir, e)


def point_latest(pointer: str, output_prefix: str) -> str:
  """6. Points LATEST (`pointer`) at the committed output, once its manifest exists; returns the pointer path."""
  return latest_pointer.write_pointer(pointer, output_prefix)


def remove_leftovers(folders: Sequence[str], pointer: Optional[str], before: Optional[float]) -> list[str]:
  """7. Removes what the committed run superseded (snapshot/staging.py remove_leftovers); returns what it removed."""
  return staging.remove_leftovers(folders, pointer, before)
