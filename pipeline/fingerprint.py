"""The embedding fingerprint: what must be equal for a previous vector to be reused.

A previous vector is reused only when the *embedding fingerprint* of both runs is equal: the model fingerprint
(pipeline/models.py: variable values, vocab, config, tokenizer behaviour), the dimension and every output-shaping
option except those listed in NOT_VECTOR_SHAPING. Options not listed there, including ones added later, force a
full re-embed when they change: erring towards recomputing is safe, reusing a stale vector is not.

Precision: the requested --precision is part of the fingerprint, but bf16/fp16/auto resolve on each worker. Reuse
also needs the previous output to be of one resolved precision (its manifest's precision_used), fp32 when this run
asks for fp32. A reduced-precision run reuses vectors on the assumption that its workers resolve the same way as the
previous run's (same machine type); the manifest records both (`incremental.previous_precision_used`,
`precision_used`).
"""
from __future__ import annotations

import hashlib
import json
from typing import Optional

# Output-shaping options that never change a record's vector. format: previous rows are read in their own format
# and written in the new one. keep_text: a reused row takes its text from the input (equal text_sha256, equal
# text). emit_tokens: checked on its own (the previous output must have the token columns). The others decide which
# records exist, which the join on id and text_sha256 already accounts for.
NOT_VECTOR_SHAPING = frozenset({
    "format", "keep_text", "emit_tokens", "input_format", "id_field", "text_field", "text_pair_field", "limit",
    "on_duplicate_id", "dedupe_texts", "num_shards"})


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
