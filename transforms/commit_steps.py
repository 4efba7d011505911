"""The job's last steps and its first: the Beam steps that run the commit protocol (snapshot/commit.py).

RemoveStaleStaging, the job's first step, removes what failed or killed runs of the prefix left in their staging
directories (snapshot/staging.py stale_staging); the writes wait for it, so a retry after a full disk finds the space
of the staged shards free. Finalize gathers the run's facts (transforms/manifest_facts.py: one combine) and runs
steps 1-5 of the protocol once (check, finalizers, old manifest deleted, shards moved, manifest written);
UpdateLatest (6) and RemoveLeftovers (7) follow it.
"""
from __future__ import annotations

import json
from typing import Iterator, Mapping, Optional, Sequence

import apache_beam as beam

from formats import sinks
from formats.output_files import check_output_prefix
from snapshot import commit
from snapshot import manifest as manifest_lib
from snapshot import staging
from snapshot.checks import DEAD_LETTER_REASONS, RunChecks, reason_and_id
from snapshot.commit import CommitPlan, Finalizer
from snapshot.latest_pointer import normalize_prefix
from transforms import manifest_facts


class _FinalizeFn(beam.DoFn):
  """Runs once, on the gathered facts, after every file and count has arrived: snapshot/commit.py commit_run."""

  def __init__(self, plan: CommitPlan):
    super().__init__()
    self._plan = plan

  def process(self, facts: dict, *unused_after) -> Iterator[dict]:
    unknown = sorted(set(facts["counts"]) - set(self._plan.count_names))
    if unknown:  # a "measured" step's names (Finalize can only check those of "counts" at construction)
      raise ValueError(f"counts {unknown} are not among the count names {sorted(self._plan.count_names)}")
    yield commit.commit_run(self._plan, facts)


class Finalize(beam.PTransform):
  """Checks the run, commits its staged files, runs the finalizers and writes the manifest (module docstring).

  Input: {"files": PCollection[WrittenFile] (staged, from WriteEmbeddings/WriteDeadLetters with a staging_dir),
  "counts": {name: PCollection of ints, or a tuple of such PCollections (all summed into the name)}}; every name of
  count_names is in the manifest, 0 when it has no PCollection. Optional:
    "measured": (PCollection of count facts, ...): counts summed where they are made (transforms/progress_counts.py
      CountPerBundle: several counts of one PCollection in one step), their names among count_names;
    "dead_letters": PCollection[DeadLetter], whose reasons are tallied for the dead-letter check's message;
    "fields": {name: PCollection of at most one JSON-able value} (e.g. a drift check); none gives null; a name
      starting with "_" is private: given to the finalizers (CommittedRun.private), not written to the manifest;
    "tallies": {name: PCollection of str}: the field is {element: occurrences} ({} for none);
    "partials": {name: PCollection of parts of one value} (e.g. one per bundle, fused with the step that makes
      them): the field is their merge by the value's `merged` method (None for none); private as fields are;
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
    measured = tuple(inputs.get("measured") or ())
    unknown = sorted(set(counts) - set(self._count_names))
    if unknown:
      raise ValueError(f"counts {unknown} are not among the count names {sorted(self._count_names)}")
    fields, tallies = dict(inputs.get("fields") or {}), dict(inputs.get("tallies") or {})
    partials = dict(inputs.get("partials") or {})
    computed = list(fields) + list(tallies) + list(partials)
    clashes = sorted(set(computed) & (set(manifest_lib.RESERVED_KEYS) | set(self._static_fields)))
    if clashes or len(set(computed)) != len(computed):
      raise ValueError(f"fields and tallies must not set the manifest's own keys, static fields or each other's "
                       f"names: {clashes or sorted(computed)}")
    facts = [inputs["files"] | "FileFacts" >> beam.Map(manifest_facts.file_fact), *measured]
    for name, sources in sorted(counts.items()):
      sources = sources if isinstance(sources, tuple) else (sources,)
      for i, pcoll in enumerate(sources):
        facts.append(pcoll | f"Sum[{name}]{f'[{i}]' if i else ''}" >> beam.ParDo(manifest_facts.SumPerBundle(name)))
    for name, pcoll in sorted(tallies.items()):
      facts.append(pcoll | f"Tally[{name}]" >> beam.ParDo(manifest_facts.SumPerBundle(name, tally=True)))
    for name, pcoll in sorted(fields.items()):
      facts.append(pcoll | f"Field[{name}]" >> beam.Map(manifest_facts.field_fact, name))
    for name, pcoll in sorted(partials.items()):
      facts.append(pcoll | f"Partial[{name}]" >> beam.Map(manifest_facts.partial_fact, name))
    if inputs.get("dead_letters") is not None:
      facts.append(inputs["dead_letters"]
                   | "TallyReasons" >> beam.ParDo(manifest_facts.TallyWithExample(DEAD_LETTER_REASONS, reason_and_id)))
    after = [beam.pvalue.AsList(inputs["after"])] if inputs.get("after") is not None else []
    finalize = _FinalizeFn(CommitPlan(self._prefix, self._staging_dir, self._static_fields, self._count_names,
                                      self._kinds, self._checks, self._finalizers, tuple(sorted([*fields, *partials])),
                                      tuple(sorted(tallies))))
    return (facts
            | "FlattenFacts" >> beam.Flatten()
            | "Gather" >> beam.CombineGlobally(manifest_facts.GatherFacts())
            | "Commit" >> beam.ParDo(finalize, *after))


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
            | "Remove" >> beam.Map(lambda _, prefix, token, keep: staging.remove_stale_staging(prefix, token, keep),
                                   self._prefix, self._token, self._keep))


class UpdateLatest(beam.PTransform):
  """Writes the LATEST pointer once the manifest exists: the pipeline's last step, so it also happens on Dataflow.

  Input: the PCollection of the manifest (one element). Output: the pointer path.
  """

  def __init__(self, pointer: str, output_prefix: str):
    super().__init__()
    self._pointer = pointer
    self._prefix = normalize_prefix(output_prefix)  # here, on the launcher: a relative local path means its cwd

  def expand(self, manifest):
    return manifest | "WritePointer" >> beam.Map(lambda _, path, prefix: commit.point_latest(path, prefix),
                                                 self._pointer, self._prefix)


class RemoveLeftovers(beam.PTransform):
  """After `done` (e.g. the LATEST update: one element), removes the leftovers (remove_leftovers). Output: the
  removed paths, one list."""

  def __init__(self, folders: Sequence[str], pointer: Optional[str], before: Optional[float]):
    super().__init__()
    self._args = (tuple(folders), pointer, before)

  def expand(self, done):
    return done | "Remove" >> beam.Map(lambda _, args: commit.remove_leftovers(*args), self._args)
