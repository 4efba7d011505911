"""After a store commit: is NAME equal to the run's output? Checks, and repairs what it can.

The job gathers VerifyFacts (transforms/store_writes.py: one part per bundle, fused with the step that makes the
output's rows, merged by the commit step's one combine): the digest of the output's (id, text_sha256) pairs
(stores/digest.py) and a random sample of its points (--vector-store-verify N, or all). So no list of every id
travels to the commit: the digest is compared with NAME's, computed where the points are (PostgreSQL: one query;
Qdrant: from its ids and text_sha256 read back). Only when the two differ are the pairs compared one by one: the
output's, read from the run's staged embeddings files (the id and text_sha256 columns), with NAME's.

Vectors of the sample are compared with what NAME holds, within VECTOR_TOLERANCE (Qdrant's cosine collections may
keep vectors normalised to unit length: for Qdrant both sides are normalised before comparing). A point NAME holds
that the output has not is deleted; a missing or different point is written again when the sample holds it (with
`all`, always). What is left (missing or different points outside the sample) is recorded in the store (marker
DIFFERS), so the next run rebuilds NAME.
"""
from __future__ import annotations

import heapq
import logging
from typing import Callable, Iterable, Iterator, NamedTuple, Sequence

import numpy as np
import pyarrow.parquet as pq

from formats import columns as columns_lib
from formats.columns import KEY_COLUMNS
from formats.compression import open_input
from formats.output_files import EMBEDDINGS
from formats.tfrecord_input import verified_payloads
from snapshot.store_plan import VERIFY_ALL
from stores.base import VectorStore
from stores.digest import EMPTY, Digest

VECTOR_TOLERANCE = 1e-5
_LOG = logging.getLogger(__name__)


def _key(entry: tuple) -> float:
  return entry[0]


class VerifyFacts(NamedTuple):
  """What the job gathers for the verify: the digest of the output's (id, text_sha256) pairs and a random sample of
  its points, as ((random key, StorePoint), ...): the `size` smallest keys of all (VERIFY_ALL: every point). Parts
  of it (e.g. one per bundle) merge in any order into the whole's."""
  digest: Digest = EMPTY
  size: int = 0
  sample: tuple = ()

  def merged(self, other: "VerifyFacts") -> "VerifyFacts":
    sample = self.sample + other.sample
    if self.size != VERIFY_ALL and len(sample) > self.size:
      sample = heapq.nsmallest(self.size, sample, key=_key)
    return VerifyFacts(self.digest.plus(other.digest), self.size, tuple(sample))


def output_pairs(files: Sequence) -> Iterator[tuple[str, str]]:
  """(id, text_sha256) of every row of a run's embeddings files (snapshot.staging.WrittenFile; Parquet or TFRecord
  by extension), reading only those two columns."""
  names = list(KEY_COLUMNS)
  for written in files:
    if written.kind != EMBEDDINGS:
      continue
    with open_input(written.path) as stream:
      if written.path.endswith(".parquet"):
        table = pq.ParquetFile(stream).read(columns=names)
        yield from zip(table.column("id").to_pylist(), table.column("text_sha256").to_pylist())
        continue
      yield from ((r.id, r.text_sha256) for r in columns_lib.payloads_to_records(verified_payloads(stream), names, 0))


def _as_stored(vector: np.ndarray, normalised: bool) -> np.ndarray:
  vector = np.asarray(vector, np.float32)
  if not normalised:
    return vector
  norm = float(np.linalg.norm(vector))
  return vector / norm if norm > 0 else vector


def _pair_differences(store: VectorStore, pairs: Callable[[], Iterable[tuple[str, str]]]):
  """(wanted ids, NAME's point count, missing, extra, changed) compared one by one."""
  wanted = dict(pairs())
  found = store.fingerprints()
  missing = [i for i in wanted if i not in found]
  extra = [i for i in found if i is not None and i not in wanted]
  changed = [i for i in wanted if i in found and found[i] != wanted[i]]
  return len(wanted), len(found), missing, extra, changed


def verify_and_repair(store: VectorStore, facts: VerifyFacts, pairs: Callable[[], Iterable[tuple[str, str]]]
                      ) -> dict:
  """Compares NAME with the output (`facts`: gathered by the job; `pairs`: reads the output's (id, text_sha256),
  called only when the digests differ) and repairs what it can; returns the manifest's `verify` section (how the
  ids were compared, counts of each kind of difference, `repaired` and `left_for_next_run`)."""
  found_digest = store.digest()
  if found_digest == facts.digest:
    compared, checked, held, missing, extra, changed = "digest", facts.digest.count, found_digest.count, [], [], []
  else:
    compared = "one by one (the digests differ)"
    checked, held, missing, extra, changed = _pair_differences(store, pairs)
  points = {p.id: p for _, p in facts.sample}
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
  return {"points": held, "ids_checked": checked, "ids_compared": compared, "vectors_checked": len(stored),
          "vector_tolerance": VECTOR_TOLERANCE, "missing": len(missing), "extra": len(extra),
          "text_changed": len(changed), "vectors_differ": len(vectors_differ),
          "repaired": len(extra) + len(rewrite), "left_for_next_run": len(left), "examples": left[:5]}
