"""After a store commit: is NAME equal to the run's output? Checks, and repairs what it can.

Ids and text_sha256 of every point are compared with the output's (no vectors read); vectors of a random sample of
the output's rows (--vector-store-verify N, or all) are compared with what NAME holds, within VECTOR_TOLERANCE
(Qdrant's cosine collections may keep vectors normalised to unit length: for Qdrant both sides are normalised
before comparing). A point NAME
holds that the output has not is deleted; a missing or different point is written again when the sample holds it
(with `all`, always). What is left (missing or different points outside the sample) is recorded in the store
(marker DIFFERS), so the next run rebuilds NAME.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from stores.base import StorePoint, VectorStore

VECTOR_TOLERANCE = 1e-5


def _as_stored(vector: np.ndarray, normalised: bool) -> np.ndarray:
  vector = np.asarray(vector, np.float32)
  if not normalised:
    return vector
  norm = float(np.linalg.norm(vector))
  return vector / norm if norm > 0 else vector


def verify_and_repair(store: VectorStore, expected: Sequence[tuple[str, str]],
                      sample: Optional[Sequence[StorePoint]]) -> dict:
  """Compares NAME with the output (`expected`: (id, text_sha256) of every row; `sample`: full points of some rows)
  and repairs what it can; returns the manifest's `verify` section (counts of each kind of difference, `repaired`
  and `left_for_next_run`)."""
  wanted = dict(expected)
  found = store.fingerprints()
  missing = [i for i in wanted if i not in found]
  extra = [i for i in found if i is not None and i not in wanted]
  changed = [i for i in wanted if i in found and found[i] != wanted[i]]
  points = {p.id: p for p in sample or ()}
  normalised = store.kind == "qdrant"
  stored = store.vectors(list(points)) if points else {}
  vectors_differ = [i for i, p in points.items() if i in stored and np.max(
      np.abs(_as_stored(stored[i], normalised) - _as_stored(p.vector, normalised)), initial=0.0) > VECTOR_TOLERANCE]
  if extra:
    store.delete(extra)
  rewrite = [points[i] for i in sorted(set(missing) | set(changed) | set(vectors_differ)) if i in points]
  if rewrite:
    store.upsert(rewrite)
  left = sorted((set(missing) | set(changed)) - set(points))
  return {"points": len(found), "ids_checked": len(wanted), "vectors_checked": len(stored),
          "vector_tolerance": VECTOR_TOLERANCE, "missing": len(missing), "extra": len(extra),
          "text_changed": len(changed), "vectors_differ": len(vectors_differ),
          "repaired": len(extra) + len(rewrite), "left_for_next_run": len(left), "examples": left[:5]}
