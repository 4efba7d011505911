"""The model fingerprint cached on disk, keyed by the sizes and mtimes of the model's files.

Hashing the variables reads every weight at each start; the key changes when any model file's size or mtime does,
so a rewritten model is fingerprinted anew.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from typing import Callable, Optional

from formats.paths import is_local_path
from models.model_fingerprint import semantic_metadata
from models.model_flags import ModelSpec

_LOG = logging.getLogger(__name__)
FINGERPRINT_CACHE_FORMAT = 2  # bump when model_fingerprint.model_fingerprint changes, so cached values are recomputed


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


def _fingerprint_cache_path(key: str) -> str:
  from models.default_model import cache_root  # pylint: disable=import-outside-toplevel
  return os.path.join(str(cache_root()), "fingerprints", key[:2], key + ".json")


def cached_fingerprint(key: Optional[str], compute: Callable[[], str]) -> str:
  """The fingerprint stored under `key`, else `compute()` (stored for next time when the cache is writable)."""
  path = _fingerprint_cache_path(key) if key else None
  if path:
    try:
      with open(path, encoding="utf-8") as f:
        value = json.load(f).get("fingerprint")
      if isinstance(value, str) and len(value) == 64:
        return value
    except (OSError, ValueError):
      pass
  value = compute()
  if path:
    try:
      os.makedirs(os.path.dirname(path), exist_ok=True)
      tmp = f"{path}.{os.getpid()}.tmp"
      with open(tmp, "w", encoding="utf-8") as f:
        json.dump({"fingerprint": value}, f)
      os.replace(tmp, path)
    except OSError as e:
      _LOG.debug("cannot cache the model fingerprint at %s: %s", path, e)
  return value
