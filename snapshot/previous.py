"""Incremental runs: deciding whether the previous output's vectors can be reused, and saying why not.

The previous output is found through snapshot/latest_pointer.py; the embedding fingerprint that must match is
snapshot/fingerprint.py.
"""
from __future__ import annotations

from typing import NamedTuple, Optional, Sequence

from snapshot.fingerprint import (FingerprintError, current_fingerprint_inputs, differences, fingerprint,
                                  manifest_fingerprint_inputs, resolved_precisions)
from snapshot.latest_pointer import (LATEST_NAME, PreviousOutput, join_path, normalize_prefix, parent_dir,
                                     pointer_path, previous_format)
from formats.usage import UsageError
from formats import compact
from formats.output_files import path_basename
from snapshot.manifest import ShardIdentity
from runtime.defaults import DEFAULT_DRIFT_SAMPLE

MODE_INCREMENTAL = "incremental"
MODE_FULL = "full"
# unchanged records whose previous row is damaged (re-encoded): a count, like transforms/incremental.py KINDS
DAMAGED = "previous_damaged"


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
    directory = parent_dir(self.previous.prefix)
    return [join_path(directory, path_basename(f)) for f in self.previous.manifest.get("output_files") or []]

  @property
  def previous_identities(self) -> Optional[dict]:
    """{previous file: ShardIdentity} as its manifest records them (size, SHA-256, and for Parquet the embedding
    fingerprint its footer carries); None when the manifest records none (written before it did)."""
    files = self.previous_files
    shards = (self.previous.manifest or {}).get("shards") if files is not None else None
    if not isinstance(shards, dict) or not shards:
      return None
    fingerprint = (self.previous.manifest.get("incremental") or {}).get("fingerprint")
    footer = fingerprint if self.previous_format == "parquet" else None
    identities = {}
    for path in files:
      entry = shards.get(path_basename(path))
      if isinstance(entry, dict):
        identities[path] = ShardIdentity(int(entry.get("size_bytes", -1)), str(entry.get("sha256", "")), footer)
      else:  # listed, but not described: it cannot match
        identities[path] = ShardIdentity(-1, "", footer)
    return identities

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


def plan(cfg) -> Plan:
  """Decides how the run `cfg` (a JobConfig) uses its previous output; raises UsageError when a fingerprint input
  of this run or of the previous output's manifest cannot be read."""
  try:
    current = current_fingerprint_inputs(cfg)
  except FingerprintError as e:
    raise UsageError(str(e)) from None
  previous = getattr(cfg, "previous", None)
  sample = getattr(cfg, "drift_sample", DEFAULT_DRIFT_SAMPLE)
  pointer = pointer_path(cfg.output, previous.latest_root if previous else None)

  def full(reason: str, drift_sample: int = 0) -> Plan:
    return Plan(MODE_FULL, reason, previous, fingerprint(current), current, drift_sample, pointer)

  if previous is None:
    return full("no --previous output was given")
  if previous.manifest is None:
    return full(f"no previous output yet: {join_path(normalize_prefix(previous.latest_root), LATEST_NAME)} "
                "does not exist (the first run under this root)")
  try:
    old = manifest_fingerprint_inputs(previous.manifest)
  except FingerprintError as e:
    raise UsageError(f"--previous {previous.requested}: cannot tell which options shaped its vectors: {e}") from None
  changes = differences(old, current)
  if changes:
    old_options = old.get("options") or {}
    comparable = (old.get("dimension") == current.get("dimension")
                  and all((inputs.get("options") or {}).get("embeddings", True) for inputs in (old, current))
                  # the new vectors are compared before they are compacted: the old ones must be whole float32
                  and old_options.get("output_dtype", "float32") == "float32"
                  and old_options.get("truncate_dim") is None)
    return full("the embedding fingerprint changed: " + "; ".join(changes), sample if comparable else 0)
  if cfg.emit_tokens and not (previous.manifest.get("options") or {}).get("emit_tokens"):
    return full("--emit-tokens needs token_ids and sequence_output, which the previous output does not have")
  resolved = resolved_precisions(previous.manifest)
  if len(resolved) > 1:
    return full(f"the previous output mixes precisions ({', '.join(resolved)}: workers resolved "
                f"--precision {current['options'].get('precision')} differently), so its vectors are not one snapshot")
  if current["options"].get("precision", "fp32") == "fp32" and resolved not in ([], ["fp32"]):
    return full(f"the previous output was encoded in {resolved[0]}, this run encodes in fp32")
  if getattr(cfg, "output_dtype", "float32") == compact.INT8:
    try:
      previous_int8_ranges(previous.manifest, cfg.model_info.dim, cfg.truncate_dim)
    except ValueError as e:
      return full(f"the previous output's int8 ranges cannot be read ({e}), so its rows cannot share a quantizer "
                  "with new ones")
  return Plan(MODE_INCREMENTAL, "", previous, fingerprint(current), current, 0, pointer)


INT8_RANGES_KEY = "int8_ranges"


def previous_int8_ranges(manifest: dict, dim: int, truncate_dim: Optional[int]) -> Optional[compact.Int8Ranges]:
  """The int8 ranges a previous output's manifest records; None when it calibrated on no vector (it has no int8
  vector to carry). Raises ValueError when they are missing or malformed."""
  if INT8_RANGES_KEY not in manifest:
    raise ValueError(f"its manifest has no {INT8_RANGES_KEY}")
  recorded = manifest[INT8_RANGES_KEY]
  if recorded is None:
    return None
  return compact.Int8Ranges.from_json(recorded, compact.kept_dims(dim, truncate_dim))


def int8_ranges(p: Plan, cfg) -> Optional[compact.Int8Ranges]:
  """The ranges an int8 run quantizes with: the previous output's when it carries rows from it, else None (the run
  calibrates on its own vectors)."""
  if not p.incremental or cfg.output_dtype != compact.INT8:
    return None
  return previous_int8_ranges(p.previous.manifest, cfg.model_info.dim, cfg.truncate_dim)


def manifest_section(p: Plan, unreadable: Sequence[tuple[str, str]] = ()) -> dict:
  """The manifest's `incremental` field.

  `unreadable`: (file, reason) of the previous output's parts that could not be read (damaged, failed a checksum):
  their records were encoded again (see transforms/incremental.py), and the reason says so.
  """
  prev = p.previous
  mode, reason = p.mode, p.reason
  failures = {}
  for path, why in sorted(unreadable):
    failures.setdefault(path, why)
  if failures:
    first, why = next(iter(failures.items()))
    more = f" and {len(failures) - 1} more" if len(failures) > 1 else ""
    damaged = f"part of the previous output could not be read ({first}: {why}{more})"
    if mode != MODE_FULL:
      damaged += ": the records in it, and records written as windows, were encoded again"
    reason = f"{reason}; {damaged}" if reason else damaged
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


def summary_line(manifest: dict) -> Optional[str]:
  """One line on what an incremental run reused, or None for a manifest without that section.

  The new, changed and unchanged records are what was read minus what was dead-lettered while reading (unreadable,
  duplicate ids); the line says how many of them were written and how many were dead-lettered after reading.
  """
  section, c = manifest.get("incremental"), manifest.get("counts") or {}
  if not section:
    return None
  classified = c.get("new", 0) + c.get("changed", 0) + c.get("unchanged", 0)
  later = c.get("dead_lettered", 0) - (c.get("read", 0) - classified)
  line = (f"bert-embed: {section['mode']} run: {c.get('new', 0)} new, {c.get('changed', 0)} changed, "
          f"{c.get('unchanged', 0)} unchanged ({c.get('written', 0)} written, {later} dead-lettered after reading), "
          f"{c.get('deleted', 0)} deleted; {c.get('encoded', 0)} records encoded")
  if c.get(DAMAGED):
    line += f"; {c[DAMAGED]} unchanged records encoded again because their previous row was damaged"
  if section.get("reason"):
    line += f" ({section['reason']})"
  drift = manifest.get("drift")
  if drift and drift.get("sample_size"):
    line += f"; drift: mean cosine {drift['mean_cosine']:.4f} over {drift['sample_size']} records"
  return line


