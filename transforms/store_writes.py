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
"""
from __future__ import annotations

import dataclasses
from typing import Iterable, Iterator, Optional

import apache_beam as beam

import stores
from formats.records import EmbeddingRecord
from stores.base import DEFAULT_BATCH_SIZE, DEFAULT_RETRIES, VectorStore
from stores.points import point_from_record

UPSERT, DELETE = "upsert", "delete"


@dataclasses.dataclass(frozen=True)
class StoreConfig:
  """Which store holds the vectors (`kind`, `url`, `name` = --vector-store, --vector-store-url,
  --vector-collection), how it is written, and whether the payload carries the text."""
  kind: str
  url: str
  name: str
  batch_size: int = DEFAULT_BATCH_SIZE
  retries: int = DEFAULT_RETRIES
  keep_text: bool = False
  index: Optional[str] = None  # --vector-store-index (PostgreSQL)

  def __post_init__(self):
    self.make()  # an unknown kind, a bad URL or name: StoreError now, not on a worker

  def make(self) -> VectorStore:
    """A new store object (not connected)."""
    extra = {"index": self.index} if self.index else {}
    return stores.make_store(self.kind, self.url, self.name, batch_size=self.batch_size, retries=self.retries,
                             **extra)

  @property
  def single_writer(self) -> bool:
    """True when all writes must come from one process (Qdrant's embedded engine in a folder)."""
    from stores.qdrant_store import is_server_url  # pylint: disable=import-outside-toplevel  (qdrant_client: seconds)
    return self.kind == "qdrant" and not is_server_url(self.url)


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
