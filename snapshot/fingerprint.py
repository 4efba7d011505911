"""The embedding fingerprint: what must be equal for a previous vector to be reused.

A previous vector is reused only when the *embedding fingerprint* of both runs is equal: the model fingerprint
(models/model_fingerprint.py: variable values, vocab, config, tokenizer behaviour), the dimension and the value of
every field of the run's JobConfig (and of the config objects it holds, such as its MlmSpec) that is not listed in
NOT_VECTOR_SHAPING with the reason it cannot change a vector. The fields are read from the config classes
themselves, so a field added later is in the fingerprint until it is listed there: erring towards recomputing is
safe, reusing a stale vector is not. VECTOR_SHAPING lists the others, so that a test can insist that every field
was decided one way or the other.

Manifests of earlier versions compare equal when nothing changed: their recorded inputs are brought to the current
form (upgrade) before comparing, and a field they do not record reads as the value of a run without that option
(ABSENT_MEANS). A field without such a value that an older manifest lacks counts as changed.

An input that cannot be read (a manifest whose inputs are not what bert-embed writes, a config value that has no
JSON form) raises FingerprintError: it is never left out.

Precision: the requested --precision is part of the fingerprint, but bf16/fp16/auto resolve on each worker. Reuse
also needs the previous output to be of one resolved precision (its manifest's precision_used), fp32 when this run
asks for fp32. A reduced-precision run reuses vectors on the assumption that its workers resolve the same way as the
previous run's (same machine type); the manifest records both (`incremental.previous_precision_used`,
`precision_used`).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import numbers
from typing import Callable, Optional

_WHICH_RECORDS = "decides which records exist and under which id, which the join on id and text_sha256 accounts for"
_BATCHING = ("decides which records share an encoder call and how far they are padded; padding is masked, so a "
             "record's vector is the same up to float rounding")

# Config fields that cannot change a record's vector (nor the columns a carried row must have), with the reason,
# per config class. Every other field is a fingerprint input.
NOT_VECTOR_SHAPING: dict[str, dict[str, str]] = {
    "JobConfig": {
        "inputs": _WHICH_RECORDS,
        "input_patterns": _WHICH_RECORDS,
        "input_format": _WHICH_RECORDS,
        "id_field": _WHICH_RECORDS,
        "text_field": _WHICH_RECORDS + " (another field, another text: another text_sha256)",
        "text_pair_field": _WHICH_RECORDS + " (text_sha256 covers the pair)",
        "limit": _WHICH_RECORDS,
        "on_duplicate_id": _WHICH_RECORDS,
        "dedupe_texts": "a distinct text's vector is fanned out to every record with that text: the same vector",
        "model": "the SavedModels' paths; what they hold is the model fingerprint, an input of its own",
        "model_info": "the model fingerprint and dimension are inputs of their own; the rest is read from the model",
        "output": "where the rows are written",
        "output_format": "previous rows are read in their own format and written in the new one",
        "num_shards": "how the rows are split into files",
        "keep_text": "a carried row takes its text from the input (equal text_sha256, equal text)",
        "emit_tokens": "checked on its own: the previous output must have the token columns (snapshot/previous.py)",
        "previous": "what is compared with, not what is computed",
        "drift_sample": "how many old and new vectors the manifest compares, after they are computed",
        "batch_size": _BATCHING,
        "min_batch_size": _BATCHING,
        "max_batch_tokens": _BATCHING,
        "bucket_lengths": _BATCHING + " (tests/test_batching.py compares bucketed with unbucketed vectors)",
        "preprocess_batch_size": "how many texts are tokenized per call; each text is tokenized on its own",
        "vector_store": "where a copy of the rows goes (snapshot/store_plan.py decides on its own whether to sync "
                        "or rebuild it)",
    },
    "MlmSpec": {
        "special": "the preprocessor's special token ids: from its vocab, which the model fingerprint covers",
        "continuation": "the vocab's '##' pieces: from the vocab, which the model fingerprint covers",
        "max_tokens": "how many masked copies share an encoder call; each copy's score is its own",
    },
}
# The fields that are fingerprint inputs, per config class: NOT_VECTOR_SHAPING and these hold every field.
VECTOR_SHAPING: dict[str, tuple[str, ...]] = {
    "JobConfig": ("seq_length", "pooling", "normalize", "layers", "precision", "max_text_bytes", "embeddings", "mlm",
                  "long_text", "chunk_stride", "chunk_output", "output_dtype", "truncate_dim"),
    "MlmSpec": ("whole_word", "per_token"),
}
# Fields that matter only with another setting: None otherwise (--chunk-stride and --chunk-output without chunking).
APPLIES_WHEN: dict[str, dict[str, Callable[[object], bool]]] = {
    "JobConfig": {"chunk_stride": lambda cfg: cfg.long_text == "chunk",
                  "chunk_output": lambda cfg: cfg.long_text == "chunk"},
}
# What a fingerprint input absent from an older manifest means: the value of a run without that option.
ABSENT_MEANS = {"embeddings": True, "mlm": None, "long_text": "truncate", "chunk_stride": None, "chunk_output": None,
                "output_dtype": "float32", "truncate_dim": None}
# Keys older versions recorded beside the fields above: `mlm` holds what the three mlm_* keys said, `format` is the
# output format (output_format).
_LEGACY_KEYS = ("mlm_scores", "mlm_whole_word", "mlm_per_token", "format")


class FingerprintError(ValueError):
  """A fingerprint input that cannot be read: the fingerprint would silently miss it."""


def config_fields(obj) -> tuple[str, ...]:
  """The field names of a config object: a dataclass or a NamedTuple."""
  if dataclasses.is_dataclass(obj):
    return tuple(f.name for f in dataclasses.fields(obj))
  if isinstance(obj, tuple) and hasattr(obj, "_fields"):
    return tuple(obj._fields)
  raise FingerprintError(f"{type(obj).__name__} is not a config object (a dataclass or NamedTuple)")


def _plain(value, where: str):
  """`value` as JSON data (tuples as lists); a config object by its vector-shaping fields."""
  if value is None or isinstance(value, (bool, int, float, str)):
    return value
  if isinstance(value, numbers.Integral):  # numpy integers
    return int(value)
  if isinstance(value, numbers.Real):
    return float(value)
  if isinstance(value, (list, tuple)) and not hasattr(value, "_fields"):
    return [_plain(v, f"{where}[{i}]") for i, v in enumerate(value)]
  if isinstance(value, dict) and all(isinstance(k, str) for k in value):
    return {k: _plain(v, f"{where}.{k}") for k, v in value.items()}
  if _config_kind(value) is not None:
    return shaping_values(value, where)
  raise FingerprintError(f"cannot compute the embedding fingerprint: {where} is of type {type(value).__name__}, "
                         "which has no JSON form and no entry in snapshot/fingerprint.py's NOT_VECTOR_SHAPING")


def _config_kind(obj) -> Optional[str]:
  """The config class (or base class) of `obj` that NOT_VECTOR_SHAPING has an entry for, or None."""
  return next((c.__name__ for c in type(obj).__mro__ if c.__name__ in NOT_VECTOR_SHAPING), None)


def shaping_values(obj, where: Optional[str] = None) -> dict:
  """{field: JSON value} for every field of the config object `obj` not in NOT_VECTOR_SHAPING (a field that a
  subclass adds is included)."""
  kind = _config_kind(obj)
  where = where or type(obj).__name__
  if kind is None:
    raise FingerprintError(f"cannot compute the embedding fingerprint: {where} is of type {type(obj).__name__}, "
                           "which has no entry in snapshot/fingerprint.py's NOT_VECTOR_SHAPING")
  skip, conditions = NOT_VECTOR_SHAPING[kind], APPLIES_WHEN.get(kind, {})
  out = {}
  for name in config_fields(obj):
    if name in skip:
      continue
    applies = conditions.get(name)
    out[name] = _plain(getattr(obj, name), f"{where}.{name}") if applies is None or applies(obj) else None
  return out


def fingerprint_inputs(model_fingerprint: Optional[str], dimension: Optional[int], options: dict) -> dict:
  """What the embedding fingerprint hashes (JSON-normalized, so a manifest's copy compares equal)."""
  return json.loads(json.dumps({"model": model_fingerprint, "dimension": dimension, "options": options},
                               sort_keys=True))


def current_fingerprint_inputs(cfg) -> dict:
  """The fingerprint inputs of the run `cfg` (a JobConfig); raises FingerprintError."""
  return fingerprint_inputs(cfg.model_info.fingerprint, cfg.model_info.dim, shaping_values(cfg))


def fingerprint(inputs: dict) -> str:
  return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode("utf-8")).hexdigest()


def _upgrade_mlm(options: dict):
  """The `mlm` input of an older manifest's options in the current form (MlmSpec's vector-shaping fields)."""
  if "mlm" not in options:  # before `mlm` was recorded: the three flags said it
    if not options.get("mlm_scores"):
      return None
    return {"whole_word": bool(options.get("mlm_whole_word")), "per_token": bool(options.get("mlm_per_token"))}
  mlm = options["mlm"]
  if mlm is None:
    return None
  if not isinstance(mlm, dict):
    raise FingerprintError(f"its fingerprint input mlm is {json.dumps(mlm)}, not an object")
  return {k: v for k, v in mlm.items() if k not in NOT_VECTOR_SHAPING["MlmSpec"]}


def upgrade(inputs: dict) -> dict:
  """Fingerprint inputs recorded by any version, in the current form (see the module docstring)."""
  options = inputs.get("options")
  if not isinstance(options, dict):
    raise FingerprintError(f"its fingerprint inputs have no options object (found {json.dumps(options)[:80]})")
  not_shaping = NOT_VECTOR_SHAPING["JobConfig"]
  current = {k: v for k, v in options.items() if k not in not_shaping and k not in _LEGACY_KEYS}
  current["mlm"] = _upgrade_mlm(options)
  for key, value in ABSENT_MEANS.items():
    current.setdefault(key, value)
  return fingerprint_inputs(inputs.get("model"), inputs.get("dimension"), current)


def manifest_fingerprint_inputs(manifest: dict) -> dict:
  """The fingerprint inputs of an earlier run, in the current form: as it recorded them, else rebuilt from its
  model and options. Raises FingerprintError when the manifest does not hold them as bert-embed writes them."""
  if not isinstance(manifest, dict):
    raise FingerprintError("its manifest is not a JSON object")
  incremental = manifest.get("incremental")
  if incremental is not None and not isinstance(incremental, dict):
    raise FingerprintError("its manifest's incremental section is not an object")
  recorded = (incremental or {}).get("fingerprint_inputs")
  if recorded is not None:
    if not isinstance(recorded, dict):
      raise FingerprintError("its manifest's incremental.fingerprint_inputs is not an object")
    return upgrade(recorded)
  model = manifest.get("model")
  if not isinstance(model, dict):
    raise FingerprintError("its manifest has no model section")
  return upgrade({"model": model.get("fingerprint"), "dimension": manifest.get("dimension"),
                  "options": manifest.get("options")})


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
