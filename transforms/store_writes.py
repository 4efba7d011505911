"""Writing output rows to a vector store and removing ids from it (stores/ holds the clients).

WriteToStore takes two PCollections: the rows to upsert (EmbeddingRecord) and the record ids to delete, and
returns how many points it upserted and deleted (ints, one per write). It writes to the physical collection of a
rebuild (`target`, from VectorStore.begin_rebuild) or to a sync's staging (`staged`: from VectorStore.begin_staging,
deletes recorded there, not applied), or to NAME when `target` is None; applying them to NAME is not its job.

Where the writes run: a store that takes writes from any process (a Qdrant server, PostgreSQL) is written by every
worker in batches of the store's batch size, each connection opened in `setup`. A Qdrant folder is locked by its
embedded engine to one process, so for it every upsert and delete is gathered under one key (a GroupByKey) and
applied by a single call, in one process, which opens the folder and closes it before returning: no two processes
ever hold it, and the launcher can open it again afterwards. That call holds the job's rows in memory, which suits
the embedded engine's scale (Qdrant recommends a server beyond ~20,000 points). Deletes run before upserts (an id is
never in both: a deleted id is absent from the output). Every write is idempotent, so a retried bundle converges.

write_store wires a run's store writes as snapshot/store_plan.py planned them: first the run's own table/collection
(a rebuild's, or a sync's staging), then the writes into it; the commit applies them (snapshot/store_commit.py).
What the commit's verify compares NAME with (snapshot/store_verify.py VerifyFacts: a digest of the output's ids and
text_sha256, a random sample of its points) is gathered per bundle, fused with the step that makes the output's rows:
no step of its own, and no list of every id.
"""
from __future__ import annotations

import heapq
import logging
import random
from typing import Iterable, Iterator, Optional

import apache_beam as beam
from apache_beam.transforms.window import GlobalWindows

from formats.records import EmbeddingRecord
from snapshot import store_plan
from snapshot.store_verify import VerifyFacts
from stores.base import StoreError, VectorStore
from stores.config import StoreConfig
from stores.digest import Digest, pair_hash
from stores.points import point_from_record
from transforms.sequencing import After

UPSERT, DELETE = "upsert", "delete"
_LOG = logging.getLogger(__name__)



def _delete(store: VectorStore, ids: list[str], target: Optional[str], staged: bool) -> int:
  return store.stage_deletes(ids, target) if staged else store.delete(ids, target=target)


class _UpsertFn(beam.DoFn):
  """A batch of rows -> upserted into the store; yields the count."""

  def __init__(self, config: StoreConfig, target: Optional[str], staged: bool = False):
    super().__init__()
    self._config = config
    self._target = target
    self._staged = staged
    self._store: Optional[VectorStore] = None

  def setup(self):
    self._store = self._config.make()

  def process(self, batch: list[EmbeddingRecord]) -> Iterator[int]:
    points = [point_from_record(r, keep_text=self._config.keep_text) for r in batch]
    yield self._store.upsert(points, target=self._target)

  def teardown(self):
    if self._store is not None:
      self._store.close()


class _DeleteFn(_UpsertFn):
  """A batch of record ids -> deleted from the store; yields the count."""

  def process(self, batch: list[str]) -> Iterator[int]:
    yield _delete(self._store, batch, self._target, self._staged)


class _SingleWriterFn(beam.DoFn):
  """All (kind, item) pairs of the job -> applied by one call in one process; yields (kind, count) pairs."""

  def __init__(self, config: StoreConfig, target: Optional[str], staged: bool = False):
    super().__init__()
    self._config = config
    self._target = target
    self._staged = staged

  def process(self, keyed: tuple) -> Iterator[tuple]:
    _, items = keyed
    upserts, deletes = [], []
    for kind, item in items:
      (upserts if kind == UPSERT else deletes).append(item)
    store = self._config.make()
    try:
      deleted = _delete(store, deletes, self._target, self._staged) if deletes else 0
      points = [point_from_record(r, keep_text=self._config.keep_text) for r in upserts]
      upserted = store.upsert(points, target=self._target) if points else 0
    finally:
      store.close()
    yield UPSERT, upserted
    yield DELETE, deleted


def _count_of(kind: str):

  def count(pair: tuple) -> Iterable[int]:
    return [pair[1]] if pair[0] == kind else []

  return count


class WriteToStore(beam.PTransform):
  """(rows to upsert, ids to delete) -> {"upserted": ints, "deleted": ints} (see the module docstring)."""

  def __init__(self, config: StoreConfig, target: Optional[str] = None, staged: bool = False):
    super().__init__()
    self._config = config
    self._target = target
    self._staged = staged

  def expand(self, pcolls):
    rows, ids = pcolls
    size = self._config.batch_size
    if not self._config.single_writer:
      upserted = (rows
                  | "BatchRows" >> beam.BatchElements(min_batch_size=1, max_batch_size=size)
                  | "Upsert" >> beam.ParDo(_UpsertFn(self._config, self._target, self._staged)))
      deleted = (ids
                 | "BatchIds" >> beam.BatchElements(min_batch_size=1, max_batch_size=size)
                 | "Delete" >> beam.ParDo(_DeleteFn(self._config, self._target, self._staged)))
      return {"upserted": upserted, "deleted": deleted}
    tagged = ((rows | "TagRows" >> beam.Map(lambda r: (0, (UPSERT, r))),
               ids | "TagIds" >> beam.Map(lambda i: (0, (DELETE, i))))
              | "Together" >> beam.Flatten())
    written = (tagged
               | "OneWriter" >> beam.GroupByKey()
               | "Write" >> beam.ParDo(_SingleWriterFn(self._config, self._target, self._staged)))
    return {"upserted": written | "Upserted" >> beam.FlatMap(_count_of(UPSERT)),
            "deleted": written | "Deleted" >> beam.FlatMap(_count_of(DELETE))}


class _VerifyFactsFn(beam.DoFn):
  """Output rows -> one VerifyFacts per bundle: the digest of its rows' (id, text_sha256) and the points of the
  `size` rows with the smallest random keys (store_plan.VERIFY_ALL: every row), made into points only at the end."""

  def __init__(self, size: int, keep_text: bool):
    super().__init__()
    self._size = size
    self._keep_text = keep_text
    self._count, self._total, self._kept = 0, 0, []

  def start_bundle(self):
    self._count, self._total, self._kept = 0, 0, []  # _kept: a max-heap of (-key, n, row) of the smallest keys

  def process(self, row: EmbeddingRecord):
    self._count += 1
    self._total += pair_hash(row.id, row.text_sha256)
    entry = (-random.random() if self._size != store_plan.VERIFY_ALL else 0.0, self._count, row)
    if self._size == store_plan.VERIFY_ALL or len(self._kept) < self._size:
      heapq.heappush(self._kept, entry)
    elif self._kept and entry[0] > self._kept[0][0]:
      heapq.heapreplace(self._kept, entry)
    return ()

  def finish_bundle(self):
    if self._count:
      sample = tuple((-key, point_from_record(row, keep_text=self._keep_text)) for key, _, row in self._kept)
      yield GlobalWindows.windowed_value(VerifyFacts(Digest(self._count, self._total), self._size, sample))


class _BeginFn(beam.DoFn):
  """Drops the job's abandoned tables/collections of NAME, then creates the one this run writes; yields
  (its name, [the dropped ones])."""

  def __init__(self, plan: store_plan.StorePlan, dimension: int):
    super().__init__()
    self._plan = plan
    self._dimension = dimension

  def process(self, unused_element):
    store = self._plan.config.make()
    try:
      dropped = []
      for abandoned in store.abandoned():
        try:
          store.drop(abandoned)
          dropped.append(abandoned)
        except StoreError as e:
          _LOG.warning("could not drop the abandoned %s: %s", abandoned, e)
      begin = store.begin_rebuild if self._plan.mode == store_plan.MODE_REBUILD else store.begin_staging
      physical = begin(self._dimension, self._plan.tag)
    finally:
      store.close()
    if physical != self._plan.target:
      raise StoreError(f"{self._plan.config.name}: {physical} was created, expected {self._plan.target}")
    yield physical, dropped


def write_store(plan: store_plan.StorePlan, dimension: int, encoded_rows, all_rows, stale_ids, pipeline
                ) -> tuple[dict, dict, dict]:
  """Wires the job's staged store writes; returns ({count name: PCollection of ints}, {private field: PCollection},
  {private field: PCollection of its parts}) for Finalize's counts, fields and partials (snapshot/store_commit.py
  verifies against the VerifyFacts).

  encoded_rows: the valid rows this run encoded; all_rows: every valid row of the output (encoded and carried);
  stale_ids: the ids of the previous rows not carried (None without carry-over).
  """
  begun = (pipeline
           | "BeginStoreWrites" >> beam.Create([None])
           | "CreateStoreTarget" >> beam.ParDo(_BeginFn(plan, dimension)))
  if plan.mode == store_plan.MODE_REBUILD:
    upserts = all_rows | "AfterRebuildBegun" >> After(begun)
    deletes = pipeline | "NothingToDelete" >> beam.Create([])
  else:
    upserts = encoded_rows | "AfterStagingBegun" >> After(begun)
    stale = (stale_ids if stale_ids is not None else pipeline | "NoStaleIds" >> beam.Create([]))
    # A stale id that this run writes again is overwritten by its upsert; only the others are deleted.
    deletes = ({"stale": stale | "KeyStale" >> beam.Map(lambda i: (i, None)),
                "upserted": encoded_rows | "KeyUpserted" >> beam.Map(lambda r: (r.id, None))}
               | "StaleOrRewritten" >> beam.CoGroupByKey()
               | "OnlyStale" >> beam.FlatMap(lambda kv: [kv[0]] if kv[1]["stale"] and not kv[1]["upserted"] else [])
               | "DeletesAfterStagingBegun" >> After(begun))
  written = (upserts, deletes) | "WriteToStore" >> WriteToStore(plan.config, plan.target,
                                                                 staged=plan.mode == store_plan.MODE_SYNC)
  facts = all_rows | "FactsToVerify" >> beam.ParDo(_VerifyFactsFn(plan.verify, plan.config.keep_text))
  fields = {store_plan.DROPPED_FIELD: begun | "Dropped" >> beam.Map(lambda pair: pair[1])}
  counts = {"store_upserted": written["upserted"], "store_deleted": written["deleted"]}
  return counts, fields, {store_plan.VERIFY_FIELD: facts}
