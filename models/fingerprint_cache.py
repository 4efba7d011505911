"""The model fingerprint and the launcher's whole model inspection cached on disk, keyed by the sizes and mtimes of
the model's files.

Hashing the variables reads every weight at each start, and inspecting a model loads both SavedModels (seconds);
the keys change when any model file's size or mtime does, so a rewritten model is inspected and fingerprinted anew.
An inspection's key also holds the TensorFlow and TF Text versions (the tokenizer's ops, whose output the
fingerprint covers, are theirs) and the probed sequence length.
"""
from __future__ import annotations

import hashlib
import importlib.metadata
import json
import logging
import os
from typing import Callable, Optional

from formats.paths import is_local_path
from models.model_fingerprint import semantic_metadata
from models.model_flags import ModelSpec

_LOG = logging.getLogger(__name__)
FINGERPRINT_CACHE_FORMAT = 2  # bump when model_fingerprint.model_fingerprint changes, so cached values are recomputed
INSPECTION_CACHE_FORMAT = 1  # bump when model_inspection.inspect_models changes what it finds or checks


def _file_stats(root: str) -> Optional[list]:
  """(relative path, size, mtime_ns) of every file under a local directory; None for remote or unreadable ones."""
  if not is_local_path(root):
    return None
  root = root[len("file://"):] if root.startswith("file://") else root
  stats = []
  try:
    for directory, _, names in os.walk(root):
      for name in names:
        path = os.path.join(directory, name)
        st = os.stat(path)
        stats.append((os.path.relpath(path, root), st.st_size, st.st_mtime_ns))
  except OSError:
    return None
  return sorted(stats) or None


def fingerprint_cache_key(spec: ModelSpec, metadata: Optional[dict], probe_token_ids: Optional[list]) -> Optional[str]:
  """Key of a model's cached fingerprint: the sizes and mtimes of all its files, plus what the fingerprint hashes
  besides the variables (export metadata, tokenizer probe ids: cheap, and computed anyway). None when unknown."""
  files = {role: _file_stats(path) for role, path in (("preprocessor", spec.preprocessor), ("encoder", spec.encoder))}
  if any(v is None for v in files.values()):
    return None
  payload = {"format": FINGERPRINT_CACHE_FORMAT, "files": files, "export": semantic_metadata(metadata),
             "probe_token_ids": probe_token_ids,
             "paths": [os.path.abspath(spec.preprocessor), os.path.abspath(spec.encoder)]}
  return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def _cache_path(kind: str, key: str) -> str:
  from models.default_model import cache_root  # pylint: disable=import-outside-toplevel
  return os.path.join(str(cache_root()), kind, key[:2], key + ".json")


def _read(path: str) -> Optional[dict]:
  try:
    with open(path, encoding="utf-8") as f:
      value = json.load(f)
    return value if isinstance(value, dict) else None
  except (OSError, ValueError):
    return None


def _write(path: str, value: dict) -> None:
  """Stores `value` at `path` (atomically: a reader sees the old file or the new one), when the cache is writable."""
  try:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
      json.dump(value, f)
    os.replace(tmp, path)
  except OSError as e:
    _LOG.debug("cannot cache %s: %s", path, e)


def cached_fingerprint(key: Optional[str], compute: Callable[[], str]) -> str:
  """The fingerprint stored under `key`, else `compute()` (stored for next time when the cache is writable)."""
  path = _cache_path("fingerprints", key) if key else None
  if path:
    value = (_read(path) or {}).get("fingerprint")
    if isinstance(value, str) and len(value) == 64:
      return value
  value = compute()
  if path:
    _write(path, {"fingerprint": value})
  return value


def _version(distribution: str) -> Optional[str]:
  try:
    return importlib.metadata.version(distribution)
  except importlib.metadata.PackageNotFoundError:
    return None


def inspection_cache_key(spec: ModelSpec, seq_length: int) -> Optional[str]:
  """Key of a model's cached inspection (see the module docstring); None for a model not on this machine."""
  files = {role: _file_stats(path) for role, path in (("preprocessor", spec.preprocessor), ("encoder", spec.encoder))}
  if any(v is None for v in files.values()):
    return None
  payload = {"format": INSPECTION_CACHE_FORMAT, "fingerprint_format": FINGERPRINT_CACHE_FORMAT, "files": files,
             "paths": [os.path.abspath(spec.preprocessor), os.path.abspath(spec.encoder)], "seq_length": seq_length,
             "versions": [_version("tensorflow"), _version("tensorflow-text")]}
  return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def cached_inspection(key: Optional[str]) -> Optional[dict]:
  """The inspection (ModelInfo fields) stored under `key`; None when there is none."""
  return _read(_cache_path("inspections", key)) if key else None


def store_inspection(key: Optional[str], fields: dict) -> None:
  if key:
    _write(_cache_path("inspections", key), fields)
