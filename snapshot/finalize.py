"""The job's last steps: check the run, then commit its files, then the manifest (then LATEST, pipeline/run.py).

Every file is first written into the run's staging directory (transforms/write.py). One Finalize step, a single
element run once every file is written and every count gathered (transforms/manifest_facts.py: one combine), then:

1. checks the run: read == written + dead_lettered, and dead-lettered / read <= --max-dead-letter-fraction. A failed
   check raises RunCheckError (one line), so the job fails and nothing below happens: the earlier output of the
   prefix, its manifest and LATEST stay as they were, and no manifest vouches for the failed run.
2. runs the finalizers (things that must also commit only after the checks, such as applying a vector store's
   staged changes: snapshot/store_commit.py), in order, before the prefix's files are touched: a finalizer that
   raises fails the job and leaves the earlier output whole;
3. deletes the prefix's earlier manifest, then moves the new shards to their final names, deleting the prefix's
   earlier shards that are not replaced (only this prefix's own files: formats/output_files.py);
4. writes the manifest, with each shard's size and SHA-256, and removes the staging directory.

A run's first step (RemoveStaleStaging) removes what failed or killed runs of the same prefix left in their staging
directories, never another prefix's, but their checkpoints (a resume reads them: snapshot/resume.py; removed once
the run commits, transforms/leftovers.py); the writes wait for it, so a retry after a full disk finds the space of
the staged shards free.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
from typing import Any, Iterator, Mapping, NamedTuple, Optional, Sequence

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems

from formats import sinks
from formats.checkpoint_files import is_resume_file
from formats.output_files import check_output_prefix, is_scratch_dir, path_basename, staging_token
from formats.paths import matching_paths
from formats.records import DeadLetter
from snapshot import manifest as manifest_lib
from transforms import manifest_facts
from runtime.defaults import DEFAULT_MAX_DEAD_LETTER_FRACTION
from transforms.write import WrittenFile, commit_files, delete_staging_dir

_LOG = logging.getLogger(__name__)
DEAD_LETTER_REASONS = "dead_letter_reasons"
_REASON_CHARS = 120


class RunCheckError(RuntimeError):
  """A finished run that must not replace the earlier output: too many dead letters, or the counts do not balance."""


@dataclasses.dataclass(frozen=True)
class RunChecks:
  """What a run must satisfy before it is committed. max_dead_letter_fraction 1 turns that check off."""
  max_dead_letter_fraction: float = DEFAULT_MAX_DEAD_LETTER_FRACTION

  def __post_init__(self):
    if not 0.0 <= self.max_dead_letter_fraction <= 1.0:
      raise ValueError(f"max_dead_letter_fraction must be in [0, 1], got {self.max_dead_letter_fraction}")


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


def dead_letter_reason(dead_letter: DeadLetter) -> str:
  """The class of a dead letter's reason: its stage and reason, numbers masked (`line 7` and `line 9` are alike)."""
  reason = re.sub(r"\d+", "N", " ".join(dead_letter.reason.split()))
  return f"{dead_letter.stage}: {reason[:_REASON_CHARS]}"


def _reason_and_id(dead_letter: DeadLetter) -> tuple[str, str]:
  return dead_letter_reason(dead_letter), dead_letter.id


def check_run(counts: Mapping[str, int], reasons: Mapping[str, Sequence], checks: RunChecks, where: str) -> None:
  """Raises RunCheckError, in one line, when the counts do not balance or too many records were dead-lettered.

  `reasons`: {reason class: [occurrences, example id]}; `where` ends the message (what was kept).
  """
  read, written, dead = (int(counts.get(name, 0)) for name in ("read", "written", "dead_lettered"))
  if read != written + dead:
    raise RunCheckError(f"the counts do not balance: {read} records read, but {written} written + {dead} "
                        f"dead-lettered = {written + dead}; {where}")
  fraction = dead / read if read else 0.0
  if fraction > checks.max_dead_letter_fraction:
    reason, (n, example) = max(reasons.items(), key=lambda kv: (kv[1][0], kv[0])) if reasons else ("?", (0, "?"))
    raise RunCheckError(f"{dead} of {read} records dead-lettered ({fraction:.1%}), above "
                        f"--max-dead-letter-fraction {checks.max_dead_letter_fraction:g}; most common reason "
                        f"({n} record{'' if n == 1 else 's'}): {reason}; e.g. id {example!r}; {where}")


def shard_identities(files: Sequence[WrittenFile]) -> dict:
  """{file name: {"size_bytes", "sha256", "rows"}} for the manifest (names without directory: a root may move)."""
  return {path_basename(f.path): {"size_bytes": f.size_bytes, "sha256": f.sha256, "rows": f.rows} for f in files}


class _FinalizeFn(beam.DoFn):
  """Runs once, on the gathered facts, after every file and count has arrived (see the module docstring)."""

  def __init__(self, output_prefix: str, staging_dir: str, static_fields: dict, count_names: tuple[str, ...],
               kinds: Mapping[str, sinks.OutputSink], checks: Optional[RunChecks],
               finalizers: Sequence[Finalizer], field_names: tuple[str, ...], tally_names: tuple[str, ...]):
    super().__init__()
    self._prefix = output_prefix
    self._staging_dir = staging_dir
    self._static_fields = static_fields
    self._count_names = count_names
    self._kinds = dict(kinds)
    self._checks = checks
    self._finalizers = tuple(finalizers)
    self._field_names = field_names
    self._tally_names = tally_names

  def process(self, facts: dict, *unused_after) -> Iterator[dict]:
    counts = {name: int(facts["counts"].get(name, 0)) for name in self._count_names}
    checks = {}
    if self._checks is not None:
      reasons = facts.get("examples", {}).get(DEAD_LETTER_REASONS, {})
      where = (f"nothing was replaced at {self._prefix} (this run's files, dead letters included, stay in "
               f"{self._staging_dir} until the next run of the prefix)")
      where += "".join(f"; {note}" for note in (f.kept_note() for f in self._finalizers) if note)
      check_run(counts, reasons, self._checks, where)
      checks = {"max_dead_letter_fraction": self._checks.max_dead_letter_fraction,
                "dead_letter_fraction": counts["dead_lettered"] / counts["read"] if counts["read"] else 0.0}
    computed = {name: facts["fields"].get(name) for name in self._field_names if not name.startswith("_")}
    private = {name: facts["fields"].get(name) for name in self._field_names if name.startswith("_")}
    computed.update({name: facts["tallies"].get(name, {}) for name in self._tally_names})
    if checks:
      computed["checks"] = checks
    # The finalizers (a vector store's apply: remote calls that can fail) go before anything of the prefix is
    # touched, so one that raises leaves the earlier output and its manifest whole.
    for finalizer in self._finalizers:
      added = dict(finalizer.commit(CommittedRun(self._prefix, dict(counts), tuple(facts["files"]), private)) or {})
      counts.update({name: int(n) for name, n in added.pop("counts", {}).items() if name in counts})
      computed.update(added)
    manifest_path = manifest_lib.manifest_path(self._prefix)
    if FileSystems.exists(manifest_path):  # first: a mix of old and new files is never vouched for
      FileSystems.delete([manifest_path])
    files = commit_files(self._prefix, self._staging_dir, facts["files"], self._kinds)
    manifest = manifest_lib.build_manifest(self._prefix, {**self._static_fields, **computed},
                                           [f.path for f in files], counts, shards=shard_identities(files))
    data = json.dumps(manifest, indent=2, ensure_ascii=False).encode("utf-8") + b"\n"
    manifest_lib.write_atomically(manifest_path, data)
    try:
      delete_staging_dir(self._staging_dir)
    except Exception as e:  # pylint: disable=broad-except  (what is left is removed by the next run)
      _LOG.warning("could not remove the staging directory %s: %s", self._staging_dir, e)
    yield manifest


class Finalize(beam.PTransform):
  """Checks the run, commits its staged files, runs the finalizers and writes the manifest (module docstring).

  Input: {"files": PCollection[WrittenFile] (staged, from WriteEmbeddings/WriteDeadLetters with a staging_dir),
  "counts": {name: PCollection of ints, or a tuple of such PCollections (all summed into the name)}}; every name of
  count_names is in the manifest, 0 when it has no PCollection. Optional:
    "dead_letters": PCollection[DeadLetter], whose reasons are tallied for the dead-letter check's message;
    "fields": {name: PCollection of at most one JSON-able value} (e.g. a drift check); none gives null; a name
      starting with "_" is private: given to the finalizers (CommittedRun.private), not written to the manifest;
    "tallies": {name: PCollection of str}: the field is {element: occurrences} ({} for none);
    "after": a PCollection that must be complete first (e.g. RemoveStaleStaging's).
  `kinds`: {file kind: its sink} of the files to commit (an empty shard is written for a kind without files).
  `checks` None skips the checks. Returns a PCollection with the manifest dict.
  """

  def __init__(self, output_prefix: str, staging_dir: str, static_fields: dict, count_names: tuple[str, ...],
               kinds: Mapping[str, sinks.OutputSink], checks: Optional[RunChecks] = RunChecks(),
               finalizers: Sequence[Finalizer] = ()):
    super().__init__()
    check_output_prefix(output_prefix)
    reserved = sorted(set(static_fields) & set(manifest_lib.RESERVED_KEYS))
    if reserved:
      raise ValueError(f"static_fields must not set the manifest's own keys {reserved}")
    json.dumps(static_fields)  # fail at construction, not after the whole run, on unserializable values
    if len(set(count_names)) != len(count_names):
      raise ValueError(f"count_names has duplicates: {count_names}")
    if checks is not None and not {"read", "written", "dead_lettered"} <= set(count_names):
      raise ValueError("the run's checks need the counts read, written and dead_lettered")
    self._prefix = output_prefix
    self._staging_dir = staging_dir
    self._static_fields = dict(static_fields)
    self._count_names = tuple(count_names)
    self._kinds = dict(kinds)
    self._checks = checks
    self._finalizers = tuple(finalizers)

  def expand(self, inputs: dict):
    counts = dict(inputs.get("counts") or {})
    unknown = sorted(set(counts) - set(self._count_names))
    if unknown:
      raise ValueError(f"counts {unknown} are not among the count names {sorted(self._count_names)}")
    fields, tallies = dict(inputs.get("fields") or {}), dict(inputs.get("tallies") or {})
    computed = list(fields) + list(tallies)
    clashes = sorted(set(computed) & (set(manifest_lib.RESERVED_KEYS) | set(self._static_fields)))
    if clashes or len(set(computed)) != len(computed):
      raise ValueError(f"fields and tallies must not set the manifest's own keys, static fields or each other's "
                       f"names: {clashes or sorted(computed)}")
    facts = [inputs["files"] | "FileFacts" >> beam.Map(manifest_facts.file_fact)]
    for name, sources in sorted(counts.items()):
      sources = sources if isinstance(sources, tuple) else (sources,)
      for i, pcoll in enumerate(sources):
        facts.append(pcoll | f"Sum[{name}]{f'[{i}]' if i else ''}" >> beam.ParDo(manifest_facts.SumPerBundle(name)))
    for name, pcoll in sorted(tallies.items()):
      facts.append(pcoll | f"Tally[{name}]" >> beam.ParDo(manifest_facts.SumPerBundle(name, tally=True)))
    for name, pcoll in sorted(fields.items()):
      facts.append(pcoll | f"Field[{name}]" >> beam.Map(manifest_facts.field_fact, name))
    if inputs.get("dead_letters") is not None:
      facts.append(inputs["dead_letters"]
                   | "DeadLetterReasons" >> beam.Map(_reason_and_id)
                   | "TallyReasons" >> beam.ParDo(manifest_facts.TallyWithExample(DEAD_LETTER_REASONS)))
    after = [beam.pvalue.AsList(inputs["after"])] if inputs.get("after") is not None else []
    finalize = _FinalizeFn(self._prefix, self._staging_dir, self._static_fields, self._count_names, self._kinds,
                           self._checks, self._finalizers, tuple(sorted(fields)), tuple(sorted(tallies)))
    return (facts
            | "FlattenFacts" >> beam.Flatten()
            | "Gather" >> beam.CombineGlobally(manifest_facts.GatherFacts())
            | "Commit" >> beam.ParDo(finalize, *after))


# --------------------------------------------------------------------------------------------
# What failed or killed runs of the prefix left.


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


class RemoveStaleStaging(beam.PTransform):
  """The job's first step: removes what failed or killed runs of the prefix left (stale_staging). The run's writes
  wait for it (transforms/sequencing.py After), so their space is free first. Output: one list of the deleted paths."""

  def __init__(self, output_prefix: str, own_token: str, keep_resume_files: bool = False):
    super().__init__()
    check_output_prefix(output_prefix)
    self._prefix = output_prefix
    self._token = own_token
    self._keep = keep_resume_files

  def expand(self, pbegin):
    return (pbegin
            | "Once" >> beam.Create([None])
            | "Remove" >> beam.Map(lambda _, prefix, token, keep: remove_stale_staging(prefix, token, keep),
                                   self._prefix, self._token, self._keep))
