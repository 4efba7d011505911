"""The run manifest: PREFIX-manifest.json, written by the pipeline's own last step.

The manifest lists every finalized output and error file, the run's counts and whatever the
launcher passes as static fields (models, fingerprints, options, versions, start time). It is
written only after all files exist and replaces any old manifest atomically, so its presence means
"this output is complete". `delete_previous_outputs` removes the manifest first and the shards
after it, so an interrupted rerun never leaves a manifest next to stale or partial files; a job does it as its
own first step (DeletePreviousOutputs), so a submission that fails never destroys the earlier output.
"""
from __future__ import annotations

import datetime
import importlib.metadata
import json
import os
import re
import uuid
from typing import Iterator, Mapping, Optional, Sequence

import apache_beam as beam
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from formats.output_files import check_output_prefix, is_error_file, is_output_file, is_scratch_dir, path_basename
from pipeline import manifest_facts

SCHEMA_VERSION = 1
MANIFEST_SUFFIX = "-manifest.json"
_TMP_INFIX = ".tmp-"

PACKAGES = ("apache-beam", "tensorflow", "tensorflow-text", "tfx-bsl", "pyarrow", "numpy", "bert-embed")

# Keys the manifest step fills in; static fields must not use them.
RESERVED_KEYS = ("schema_version", "files", "output_files", "error_files", "counts", "end_time", "invariant")
_INVARIANT_COUNTS = ("read", "written", "dead_lettered")


def manifest_path(output_prefix: str) -> str:
  """PREFIX-manifest.json."""
  return output_prefix + MANIFEST_SUFFIX


def package_versions(packages: Sequence[str] = PACKAGES) -> dict[str, Optional[str]]:
  """Installed versions of the packages that shape the output (None when one is not installed)."""
  versions = {}
  for name in packages:
    try:
      versions[name] = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
      versions[name] = None
  return versions


def utc_now_iso() -> str:
  """The current UTC time in ISO 8601, e.g. 2025-01-31T12:00:00.123456+00:00 (use it for start_time)."""
  return datetime.datetime.now(datetime.timezone.utc).isoformat()


def build_manifest(output_prefix: str, static_fields: Mapping[str, object], files: Sequence[str],
                   counts: Mapping[str, int], end_time: Optional[str] = None) -> dict:
  """The manifest dict (see WriteManifest)."""
  files = sorted(files)
  manifest = {"schema_version": SCHEMA_VERSION}
  manifest.update(static_fields)
  manifest.update({
      "files": files,
      "output_files": [f for f in files if not is_error_file(f, output_prefix)],
      "error_files": [f for f in files if is_error_file(f, output_prefix)],
      "counts": {name: int(value) for name, value in counts.items()},
      "end_time": end_time or utc_now_iso(),
  })
  if all(name in counts for name in _INVARIANT_COUNTS):
    manifest["invariant"] = {
        "read_equals_written_plus_dead_lettered": counts["read"] == counts["written"] + counts["dead_lettered"],
    }
  return manifest


def write_atomically(path: str, data: bytes, mime_type: str = "application/json") -> None:
  """Writes `path` via a uniquely named temporary file and a rename (local files and gs://).

  A failure (a full disk, say) removes the temporary file and raises.
  """
  tmp = f"{path}{_TMP_INFIX}{uuid.uuid4().hex}"
  try:
    with FileSystems.create(tmp, mime_type=mime_type, compression_type=CompressionTypes.UNCOMPRESSED) as f:
      f.write(data)
    FileSystems.rename([tmp], [path])
  except BaseException:
    _delete_quietly(tmp)
    raise


def _delete_quietly(path: str) -> None:
  try:
    FileSystems.delete([path])
  except Exception:  # pylint: disable=broad-except
    pass


class _WriteManifestFn(beam.DoFn):
  """Runs once, on the gathered facts (manifest_facts.GatherFacts), after every file and count has arrived."""

  def __init__(self, output_prefix: str, static_fields: dict, count_names: tuple[str, ...],
               field_names: tuple[str, ...] = (), tally_names: tuple[str, ...] = ()):
    super().__init__()
    self._prefix = output_prefix
    self._static_fields = static_fields
    self._count_names = count_names
    self._field_names = field_names
    self._tally_names = tally_names

  def process(self, facts: dict) -> Iterator[dict]:
    all_counts = {name: int(facts["counts"].get(name, 0)) for name in self._count_names}
    computed = {name: facts["fields"].get(name) for name in self._field_names}
    computed.update({name: facts["tallies"].get(name, {}) for name in self._tally_names})
    manifest = build_manifest(self._prefix, {**self._static_fields, **computed}, facts["files"], all_counts)
    data = json.dumps(manifest, indent=2, ensure_ascii=False).encode("utf-8") + b"\n"
    write_atomically(manifest_path(self._prefix), data)
    yield manifest


class WriteManifest(beam.PTransform):
  """The pipeline's own final step, so the manifest also exists on Dataflow where the launcher does not wait.

  Input: {"files": PCollection[str] of all output and error files, "counts": {name: ...}}, where each count is a
  PCollection of ints that are summed or a tuple of such PCollections (all summed into the name); every name of
  count_names is in the manifest, 0 when it has no PCollection. The manifest is written once every file name has
  arrived, i.e. after all sinks have finalized. Returns a PCollection with the manifest dict.

  Optional inputs, for top-level fields computed by the pipeline:
    "fields": {name: PCollection of at most one JSON-able value} (e.g. a drift check); none gives null;
    "tallies": {name: PCollection of str}: the field is {element: occurrences} ({} for none).
  """

  def __init__(self, output_prefix: str, static_fields: dict, count_names: tuple[str, ...]):
    super().__init__()
    check_output_prefix(output_prefix)
    reserved = sorted(set(static_fields) & set(RESERVED_KEYS))
    if reserved:
      raise ValueError(f"static_fields must not set the manifest's own keys {reserved}")
    json.dumps(static_fields)  # fail at construction, not after the whole run, on unserializable values
    if len(set(count_names)) != len(count_names):
      raise ValueError(f"count_names has duplicates: {count_names}")
    self._prefix = output_prefix
    self._static_fields = dict(static_fields)
    self._count_names = tuple(count_names)

  def expand(self, inputs: dict):
    counts = dict(inputs.get("counts") or {})
    unknown = sorted(set(counts) - set(self._count_names))
    if unknown:
      raise ValueError(f"counts {unknown} are not among the count names {sorted(self._count_names)}")
    fields, tallies = dict(inputs.get("fields") or {}), dict(inputs.get("tallies") or {})
    computed = list(fields) + list(tallies)
    clashes = sorted(set(computed) & (set(RESERVED_KEYS) | set(self._static_fields)))
    if clashes or len(set(computed)) != len(computed):
      raise ValueError(f"fields and tallies must not set the manifest's own keys, static fields or each other's "
                       f"names: {clashes or sorted(computed)}")
    facts = [inputs["files"] | "FileNames" >> beam.Map(manifest_facts.file_fact)]
    for name, sources in sorted(counts.items()):
      sources = sources if isinstance(sources, tuple) else (sources,)
      for i, pcoll in enumerate(sources):
        facts.append(pcoll | f"Sum[{name}]{f'[{i}]' if i else ''}" >> beam.ParDo(manifest_facts.SumPerBundle(name)))
    for name, pcoll in sorted(tallies.items()):
      facts.append(pcoll | f"Tally[{name}]" >> beam.ParDo(manifest_facts.SumPerBundle(name, tally=True)))
    for name, pcoll in sorted(fields.items()):
      facts.append(pcoll | f"Field[{name}]" >> beam.Map(manifest_facts.field_fact, name))
    write_fn = _WriteManifestFn(self._prefix, self._static_fields, self._count_names, tuple(sorted(fields)),
                                tuple(sorted(tallies)))
    return (facts
            | "FlattenFacts" >> beam.Flatten()
            | "Gather" >> beam.CombineGlobally(manifest_facts.GatherFacts())
            | "Write" >> beam.ParDo(write_fn))


def read_manifest(output_prefix_or_path: str) -> dict:
  """Reads PREFIX-manifest.json, given the output prefix or the manifest's own path."""
  path = output_prefix_or_path
  if not path.endswith(MANIFEST_SUFFIX):
    path = manifest_path(path)
  with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
    manifest = json.loads(f.read().decode("utf-8"))
  version = manifest.get("schema_version")
  if not isinstance(version, int) or version > SCHEMA_VERSION:
    raise ValueError(f"{path}: unsupported manifest schema_version {version!r} (this code reads <= {SCHEMA_VERSION})")
  return manifest


def _matching_files(pattern: str) -> list[str]:
  return [m.path for result in FileSystems.match([pattern]) for m in result.metadata_list]


def _previous_shards(output_prefix: str) -> list[str]:
  """This prefix's own embedding and error shards (never another prefix's, e.g. PREFIX2-... or PREFIX-x-...)."""
  candidates = _matching_files(output_prefix + "-*")
  return sorted(p for p in candidates if is_output_file(p, output_prefix) or is_error_file(p, output_prefix))


def _stale_manifest_tmp_files(output_prefix: str) -> list[str]:
  """Leftover PREFIX-manifest.json.tmp-<uuid> files of an interrupted manifest write."""
  manifest = manifest_path(output_prefix)
  name = re.escape(path_basename(manifest) + _TMP_INFIX) + r"[0-9a-f]{32}"
  candidates = _matching_files(manifest + _TMP_INFIX + "*")
  return sorted(p for p in candidates if re.fullmatch(name, path_basename(p)))


def _stale_sink_scratch(output_prefix: str) -> list[str]:
  """What the sinks of a killed run left: their beam-temp-KIND-UUID-STEM directories by the outputs.

  Local: the directories (deleted whole, even when empty). Other filesystems have no directories: their files.
  Only this prefix's (formats.output_files.scratch_dir_name): never the scratch of a run with another prefix.
  """
  base, stem = FileSystems.split(output_prefix)
  if "://" not in base:
    directory = base or "."
    if not os.path.isdir(directory):
      return []
    return sorted(os.path.join(base, d) for d in os.listdir(directory)
                  if is_scratch_dir(d, output_prefix) and os.path.isdir(os.path.join(directory, d)))
  files = _matching_files(FileSystems.join(base, f"beam-temp-*-{stem}", "*"))
  return sorted(p for p in files if is_scratch_dir(p.rsplit("/", 1)[0], output_prefix))


def delete_previous_outputs(output_prefix: str, scratch: bool = True) -> list[str]:
  """Deletes an earlier run's files of this prefix, and nothing else; returns the deleted paths.

  Exactly: PREFIX-manifest.json, PREFIX-SSSSS-of-NNNNN.parquet / .tfrecord, PREFIX-errors-SSSSS-of-NNNNN.jsonl
  (5-digit numbers), a killed manifest write's PREFIX-manifest.json.tmp-<uuid> and the sinks' scratch
  directories of this prefix. Another run's files stay, also when its prefix starts with this one
  (`emb-large-*` for `emb`) and files that only look similar (`emb-00000-of-00001.parquet.bak`, `emb-notes.txt`).
  The manifest goes first, so an interruption leaves files without a manifest (visibly incomplete),
  never a manifest that vouches for a mix of old and new files. `scratch=False` leaves the sinks' scratch
  directories (a running job's own sinks may have created theirs already: see DeletePreviousOutputs).
  """
  check_output_prefix(output_prefix)
  deleted = []
  manifest = manifest_path(output_prefix)
  if FileSystems.exists(manifest):
    FileSystems.delete([manifest])
    deleted.append(manifest)
  stale_tmp = _stale_manifest_tmp_files(output_prefix)
  shards = _previous_shards(output_prefix)
  stale_scratch = _stale_sink_scratch(output_prefix) if scratch else []
  if stale_tmp + shards + stale_scratch:
    FileSystems.delete(stale_tmp + shards + stale_scratch)
  return deleted + stale_tmp + shards + stale_scratch


def delete_stale_scratch(output_prefix: str) -> list[str]:
  """Deletes the sinks' scratch directories of this prefix; call it only when no sink of the prefix is running."""
  stale = _stale_sink_scratch(output_prefix)
  if stale:
    FileSystems.delete(stale)
  return stale


class _DeleteFn(beam.DoFn):
  def __init__(self, output_prefix: str, scratch: bool):
    super().__init__()
    self._prefix = output_prefix
    self._scratch = scratch

  def process(self, unused_element, *unused_after) -> Iterator[list[str]]:
    if self._scratch:
      yield delete_stale_scratch(self._prefix)
    else:
      yield delete_previous_outputs(self._prefix, scratch=False)


class DeletePreviousOutputs(beam.PTransform):
  """The job's first step: deletes an earlier run's manifest and shards under the output prefix.

  Inside the job, not at launch, so a submission that fails (or a job that never starts) leaves the earlier output
  as it was. The job's writes wait for its one output (see `After`). Its sinks' scratch directories are left alone:
  this job's own sinks create theirs independently of it; DeleteStaleScratch removes the others at the end.
  Output: one list of the deleted paths.
  """

  def __init__(self, output_prefix: str):
    super().__init__()
    check_output_prefix(output_prefix)
    self._prefix = output_prefix

  def expand(self, pbegin):
    return (pbegin
            | "Once" >> beam.Create([None])
            | "Delete" >> beam.ParDo(_DeleteFn(self._prefix, scratch=False)))


class DeleteStaleScratch(beam.PTransform):
  """Deletes the scratch directories a killed run's sinks left under the prefix, once this job's sinks are done.

  Input: the PCollection of the job's written files (complete only after every sink finalized and removed its own
  scratch). Output: one list of the deleted paths.
  """

  def __init__(self, output_prefix: str):
    super().__init__()
    check_output_prefix(output_prefix)
    self._prefix = output_prefix

  def expand(self, files):
    return (files.pipeline
            | "Once" >> beam.Create([None])
            | "Delete" >> beam.ParDo(_DeleteFn(self._prefix, scratch=True),
                                     beam.pvalue.AsList(files)))


class After(beam.PTransform):
  """Passes its input through once `before` (a PCollection) is complete: sequences writes after a deletion.

  `before` is a side input of the pass-through, so no element reaches the next step before it is computed, on
  any runner.
  """

  def __init__(self, before):
    super().__init__()
    self._before = before

  def expand(self, pcoll):
    wait = beam.Map(lambda element, unused_before: element, beam.pvalue.AsList(self._before))
    if pcoll.element_type is not None:
      wait = wait.with_output_types(pcoll.element_type)  # the same coder as without the wait
    return pcoll | "Wait" >> wait

