"""Incremental runs: finding the previous output, deciding whether its vectors can be reused, and saying why not.

`--previous PREFIX` names the output prefix of an earlier run; `--previous latest:ROOT` follows ROOT/LATEST, a
pointer file that successful runs write as their very last step. Either way the previous output is read through
its manifest, whose presence means that output is complete.

A previous vector is reused only when the *embedding fingerprint* of both runs is equal: the model fingerprint
(pipeline/models.py: variable values, vocab, config, tokenizer behaviour), the dimension and every output-shaping
option except those listed in NOT_VECTOR_SHAPING. Options not listed there, including ones added later, force a
full re-embed when they change: erring towards recomputing is safe, reusing a stale vector is not.

Precision: the requested --precision is part of the fingerprint, but bf16/fp16/auto resolve on each worker. Reuse
also needs the previous output to be of one resolved precision (its manifest's precision_used), fp32 when this run
asks for fp32. A reduced-precision run reuses vectors on the assumption that its workers resolve the same way as the
previous run's (same machine type); the manifest records both (`incremental.previous_precision_used`,
`precision_used`).

Where the pointer goes (`pointer_path`): ROOT/LATEST when the run was given `--previous latest:ROOT` and its output
lies under ROOT; otherwise LATEST in the directory of the output prefix. The pointer holds the absolute output
prefix on one line.
"""
from __future__ import annotations

import hashlib
import json
import os
from typing import NamedTuple, Optional, Sequence

import apache_beam as beam
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from pipeline import manifest as manifest_lib
from pipeline.options import UsageError
from transforms import incremental
from transforms.output_files import path_basename

LATEST_SCHEME = "latest:"
LATEST_NAME = "LATEST"
from transforms.defaults import DEFAULT_DRIFT_SAMPLE  # pylint: disable=wrong-import-position

# Output-shaping options that never change a record's vector. format: previous rows are read in their own format
# and written in the new one. keep_text: a reused row takes its text from the input (equal text_sha256, equal
# text). emit_tokens: checked on its own (the previous output must have the token columns). The others decide which
# records exist, which the join on id and text_sha256 already accounts for.
NOT_VECTOR_SHAPING = frozenset({
    "format", "keep_text", "emit_tokens", "input_format", "id_field", "text_field", "text_pair_field", "limit",
    "on_duplicate_id", "dedupe_texts", "num_shards"})

MODE_INCREMENTAL = "incremental"
MODE_FULL = "full"


class PreviousOutput(NamedTuple):
  """The output a run compares against."""
  requested: str  # the --previous value as given
  prefix: Optional[str]  # None when latest:ROOT has no pointer yet (the first run under ROOT)
  manifest: Optional[dict]
  latest_root: Optional[str]  # ROOT of latest:ROOT


class Plan(NamedTuple):
  """What an incremental run does; static, decided when the pipeline is built."""
  mode: str  # MODE_INCREMENTAL (reuse unchanged records) or MODE_FULL (encode every record)
  reason: str  # why the run is full ("" when incremental)
  previous: Optional[PreviousOutput]
  fingerprint: str
  fingerprint_inputs: dict
  drift_sample: int  # > 0: compare old and new vectors of up to this many records (the fingerprint changed)
  pointer: str  # the LATEST file this run writes last

  @property
  def incremental(self) -> bool:
    return self.mode == MODE_INCREMENTAL

  @property
  def previous_files(self) -> Optional[list[str]]:
    """The previous output's embedding files, or None when there is no previous output.

    Located next to the previous prefix (the manifest's paths may be relative to that run's working directory,
    and a ROOT may have been copied elsewhere since).
    """
    if self.previous is None or self.previous.manifest is None:
      return None
    directory = _parent(self.previous.prefix)
    return [_join(directory, path_basename(f)) for f in self.previous.manifest.get("output_files") or []]

  @property
  def previous_normalized(self) -> bool:
    """Whether the previous output's vectors were L2-normalised (its options say --normalize)."""
    if self.previous is None or self.previous.manifest is None:
      return False
    return bool((manifest_fingerprint_inputs(self.previous.manifest).get("options") or {}).get("normalize"))

  @property
  def previous_format(self) -> Optional[str]:
    if self.previous is None or self.previous.manifest is None:
      return None
    return previous_format(self.previous.manifest)


def _is_remote(path: str) -> bool:
  return "://" in path


def normalize_prefix(prefix: str) -> str:
  """A comparable spelling of an output prefix (absolute for local paths, no duplicate slashes)."""
  prefix = prefix.strip()
  if prefix.startswith("file://"):
    prefix = prefix[len("file://"):]
  if _is_remote(prefix):
    scheme, rest = prefix.split("://", 1)
    while "//" in rest:
      rest = rest.replace("//", "/")
    return f"{scheme}://{rest}"
  return os.path.abspath(os.path.expanduser(prefix))


def _join(directory: str, name: str) -> str:
  """`name` in `directory`, spelled by the directory's Beam filesystem."""
  return FileSystems.join(directory.rstrip("/") if _is_remote(directory) else directory, name)


def _parent(prefix: str) -> str:
  return FileSystems.split(normalize_prefix(prefix))[0]


def same_prefix(a: str, b: str) -> bool:
  """True when two output prefixes name the same files: local ones compared by real path (so a symlinked alias of a
  directory is the directory), remote ones by scheme, bucket and object name."""
  a, b = normalize_prefix(a), normalize_prefix(b)
  if _is_remote(a) or _is_remote(b):
    return a == b
  return os.path.realpath(a) == os.path.realpath(b)


def is_under(prefix: str, root: str) -> bool:
  """True when the output prefix lies in directory `root` or below it."""
  prefix, root = normalize_prefix(prefix), normalize_prefix(root)
  separator = "/" if _is_remote(root) else os.sep
  return prefix.startswith(root.rstrip(separator) + separator)


def pointer_path(output: str, latest_root: Optional[str]) -> str:
  """The LATEST file a run writing `output` updates (see the module docstring)."""
  if latest_root and is_under(output, latest_root):
    return _join(normalize_prefix(latest_root), LATEST_NAME)
  return _join(_parent(output), LATEST_NAME)


def read_pointer(path: str) -> Optional[str]:
  """The prefix a LATEST file points at, or None when the file does not exist."""
  if not FileSystems.exists(path):
    return None
  with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
    lines = [line.strip() for line in f.read().decode("utf-8").splitlines() if line.strip()]
  if not lines:
    raise UsageError(f"{path} is empty: it should hold the output prefix of the last successful run")
  return lines[0]


def write_pointer(path: str, prefix: str) -> str:
  """Points `path` (a LATEST file) at `prefix`, atomically; returns `path`."""
  manifest_lib.write_atomically(path, (normalize_prefix(prefix) + "\n").encode("utf-8"), mime_type="text/plain")
  return path


def _read_previous_manifest(prefix: str, requested: str) -> dict:
  path = manifest_lib.manifest_path(prefix)
  if not FileSystems.exists(path):
    raise UsageError(f"--previous {requested}: {path} does not exist, so {prefix} is not the output of a completed "
                     "run (a run writes its manifest only after all its files)")
  try:
    manifest = manifest_lib.read_manifest(prefix)
  except (ValueError, OSError) as e:
    raise UsageError(f"--previous {requested}: cannot read {path}: {e}") from None
  if previous_format(manifest) is None or not isinstance(manifest.get("output_files"), list):
    raise UsageError(f"--previous {requested}: {path} does not list Parquet or TFRecord output files")
  return manifest


def resolve_previous(requested: Optional[str], output: str) -> Optional[PreviousOutput]:
  """Finds the previous output named by --previous; raises UsageError before anything is written.

  Refuses a previous output equal to --output: the run deletes its output prefix's old files first, which would
  destroy the data it is meant to read.
  """
  if requested is None or not requested.strip():
    return None
  requested = requested.strip()
  latest_root = None
  if requested.startswith(LATEST_SCHEME):
    latest_root = requested[len(LATEST_SCHEME):].strip()
    if not latest_root:
      raise UsageError("--previous latest:ROOT needs a ROOT directory, e.g. latest:gs://bucket/embeddings")
    prefix = read_pointer(_join(normalize_prefix(latest_root), LATEST_NAME))
    if prefix is None:
      return PreviousOutput(requested, None, None, latest_root)
  else:
    prefix = requested
  if same_prefix(prefix, output):
    raise UsageError(f"--output {output} is the previous output ({requested}): a run replaces its output prefix, "
                     "so write each run to a new prefix (e.g. ROOT/run-DATE/emb) and point --previous at the last one")
  return PreviousOutput(requested, prefix, _read_previous_manifest(prefix, requested), latest_root)


def previous_format(manifest: dict) -> Optional[str]:
  """The previous output's format, from its options or else its file names."""
  fmt = (manifest.get("options") or {}).get("format")
  if fmt in ("parquet", "tfrecord"):
    return fmt
  files = manifest.get("output_files") or []
  for fmt in ("parquet", "tfrecord"):
    if files and all(f.endswith("." + fmt) for f in files):
      return fmt
  return None


# Settings that shape the rows but that JobConfig.output_shaping_options() may not list, with the values of a run
# that did not have them (so manifests written before they existed compare equal when they are off).
RUN_SHAPING_DEFAULTS = {"embeddings": True, "mlm": None, "long_text": "truncate", "chunk_stride": None,
                        "chunk_output": None}


def run_shaping(cfg) -> dict:
  """RUN_SHAPING_DEFAULTS' settings of a JobConfig (absent attributes read as the defaults)."""
  mlm = getattr(cfg, "mlm", None)
  chunked = getattr(cfg, "long_text", "truncate") == "chunk"
  return {
      "embeddings": bool(getattr(cfg, "embeddings", True)),
      "mlm": None if mlm is None else {"whole_word": bool(mlm.whole_word), "per_token": bool(mlm.per_token),
                                       "max_tokens": int(mlm.max_tokens)},
      "long_text": getattr(cfg, "long_text", "truncate"),
      "chunk_stride": getattr(cfg, "chunk_stride", 0) if chunked else None,
      "chunk_output": getattr(cfg, "chunk_output", "rows") if chunked else None,
  }


def fingerprint_inputs(model_fingerprint: Optional[str], dimension: Optional[int], options: Optional[dict],
                       run: Optional[dict] = None) -> dict:
  """What the embedding fingerprint hashes (JSON-normalized, so a manifest's copy compares equal).

  `options` are output_shaping_options() (NOT_VECTOR_SHAPING left out); `run` adds run_shaping()'s settings that
  the options do not already hold.
  """
  shaping = {k: v for k, v in (options or {}).items() if k not in NOT_VECTOR_SHAPING}
  for key, value in {**RUN_SHAPING_DEFAULTS, **(run or {})}.items():
    shaping.setdefault(key, value)
  return json.loads(json.dumps({"model": model_fingerprint, "dimension": dimension, "options": shaping},
                               sort_keys=True))


def current_fingerprint_inputs(cfg) -> dict:
  return fingerprint_inputs(cfg.model_info.fingerprint, cfg.model_info.dim, cfg.output_shaping_options(),
                            run_shaping(cfg))


def fingerprint(inputs: dict) -> str:
  return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode("utf-8")).hexdigest()


def manifest_fingerprint_inputs(manifest: dict) -> dict:
  """The fingerprint inputs of an earlier run: as it recorded them, else rebuilt from its model and options."""
  recorded = (manifest.get("incremental") or {}).get("fingerprint_inputs")
  if isinstance(recorded, dict):
    return recorded
  return fingerprint_inputs((manifest.get("model") or {}).get("fingerprint"), manifest.get("dimension"),
                            manifest.get("options"))


def _short(value) -> str:
  if isinstance(value, str) and len(value) == 64:
    return value[:12] + "…"
  return json.dumps(value)


def differences(old: dict, new: dict) -> list[str]:
  """Human-readable differences between two fingerprint inputs, model first."""
  out = []
  if old.get("model") != new.get("model"):
    out.append(f"the model changed (fingerprint {_short(old.get('model'))} -> {_short(new.get('model'))})")
  if old.get("dimension") != new.get("dimension"):
    out.append(f"dimension {old.get('dimension')} -> {new.get('dimension')}")
  old_opts, new_opts = old.get("options") or {}, new.get("options") or {}
  for key in sorted(set(old_opts) | set(new_opts)):
    if old_opts.get(key, "<absent>") != new_opts.get(key, "<absent>"):
      before = _short(old_opts[key]) if key in old_opts else "(absent)"
      after = _short(new_opts[key]) if key in new_opts else "(absent)"
      out.append(f"{key} {before} -> {after}")
  return out


def resolved_precisions(manifest: dict) -> list[str]:
  """The precisions an earlier run's records were encoded in (its manifest's precision_used); [] when unknown."""
  used = manifest.get("precision_used") or {}
  return sorted(name for name, count in used.items() if count) if isinstance(used, dict) else []


def plan(cfg) -> Plan:
  """Decides how the run `cfg` (a JobConfig) uses its previous output."""
  current = current_fingerprint_inputs(cfg)
  previous = getattr(cfg, "previous", None)
  sample = getattr(cfg, "drift_sample", DEFAULT_DRIFT_SAMPLE)
  pointer = pointer_path(cfg.output, previous.latest_root if previous else None)

  def full(reason: str, drift_sample: int = 0) -> Plan:
    return Plan(MODE_FULL, reason, previous, fingerprint(current), current, drift_sample, pointer)

  if previous is None:
    return full("no --previous output was given")
  if previous.manifest is None:
    return full(f"no previous output yet: {_join(normalize_prefix(previous.latest_root), LATEST_NAME)} "
                "does not exist (the first run under this root)")
  old = manifest_fingerprint_inputs(previous.manifest)
  changes = differences(old, current)
  if changes:
    comparable = (old.get("dimension") == current.get("dimension")
                  and all((inputs.get("options") or {}).get("embeddings", True) for inputs in (old, current)))
    return full("the embedding fingerprint changed: " + "; ".join(changes), sample if comparable else 0)
  if cfg.emit_tokens and not (previous.manifest.get("options") or {}).get("emit_tokens"):
    return full("--emit-tokens needs token_ids and sequence_output, which the previous output does not have")
  resolved = resolved_precisions(previous.manifest)
  if len(resolved) > 1:
    return full(f"the previous output mixes precisions ({', '.join(resolved)}: workers resolved "
                f"--precision {current['options'].get('precision')} differently), so its vectors are not one snapshot")
  if current["options"].get("precision", "fp32") == "fp32" and resolved not in ([], ["fp32"]):
    return full(f"the previous output was encoded in {resolved[0]}, this run encodes in fp32")
  return Plan(MODE_INCREMENTAL, "", previous, fingerprint(current), current, 0, pointer)


def manifest_section(p: Plan, unreadable: Sequence[tuple[str, str]] = ()) -> dict:
  """The manifest's `incremental` field.

  `unreadable`: (file, reason) of the previous output's parts that could not be read (damaged, failed a checksum):
  then the run was a full re-embed whatever the plan said, and the reason says so.
  """
  prev = p.previous
  mode, reason = p.mode, p.reason
  failures = {}
  for path, why in sorted(unreadable):
    failures.setdefault(path, why)
  if failures:
    first, why = next(iter(failures.items()))
    more = f" and {len(failures) - 1} more" if len(failures) > 1 else ""
    damaged = (f"the previous output could not be read ({first}: {why}{more}), so every record was encoded "
               "again")
    mode, reason = MODE_FULL, f"{reason}; {damaged}" if reason else damaged
  return {
      "mode": mode,
      "reason": reason,
      "previous": normalize_prefix(prev.prefix) if prev and prev.prefix else None,
      "previous_requested": prev.requested if prev else None,
      "fingerprint": p.fingerprint,
      "fingerprint_inputs": p.fingerprint_inputs,
      "drift_sample": p.drift_sample,
      "previous_precision_used": resolved_precisions(prev.manifest) if prev and prev.manifest else None,
      "latest_pointer": p.pointer,
      "previous_unreadable": [{"file": path, "reason": why} for path, why in failures.items()],
  }


class ManifestSection(beam.PTransform):
  """The manifest's `incremental` field, known only once the previous output has been read (manifest_section).

  Input: the (file, reason) pairs of IncrementalResult.unreadable. Output: one dict.
  """

  def __init__(self, p: Plan):
    super().__init__()
    self._plan = p

  def expand(self, unreadable):
    return (unreadable
            | "AllUnreadable" >> beam.combiners.ToList()
            | "Section" >> beam.Map(lambda failures, p: manifest_section(p, failures), self._plan))


def summary_line(manifest: dict) -> Optional[str]:
  """One line on what an incremental run reused, or None for a manifest without that section."""
  section, c = manifest.get("incremental"), manifest.get("counts") or {}
  if not section:
    return None
  line = (f"bert-embed: {section['mode']} run: {c.get('new', 0)} new, {c.get('changed', 0)} changed, "
          f"{c.get('unchanged', 0)} unchanged, {c.get('deleted', 0)} deleted; {c.get('encoded', 0)} encoded")
  if c.get(incremental.DAMAGED):
    line += f"; {c[incremental.DAMAGED]} unchanged records encoded again because their previous row was damaged"
  if section.get("reason"):
    line += f" ({section['reason']})"
  drift = manifest.get("drift")
  if drift and drift.get("sample_size"):
    line += f"; drift: mean cosine {drift['mean_cosine']:.4f} over {drift['sample_size']} records"
  return line


class UpdateLatest(beam.PTransform):
  """Writes the LATEST pointer once the manifest exists: the pipeline's last step, so it also happens on Dataflow.

  Input: the PCollection of the manifest (one element). Output: the pointer path.
  """

  def __init__(self, pointer: str, output_prefix: str):
    super().__init__()
    self._pointer = pointer
    self._prefix = normalize_prefix(output_prefix)  # here, on the launcher: a relative local path means its cwd

  def expand(self, manifest):
    return manifest | "WritePointer" >> beam.Map(lambda _, path, prefix: write_pointer(path, prefix),
                                                 self._pointer, self._prefix)
