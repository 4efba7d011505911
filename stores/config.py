"""Which vector store a run writes, and how: the options --vector-store* as one value (transforms/store_writes.py
writes through it, snapshot/store_plan.py plans with it)."""
from __future__ import annotations

import dataclasses
from typing import Optional

import stores
from stores.base import DEFAULT_BATCH_SIZE, DEFAULT_RETRIES, VectorStore


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
    if self.kind != "qdrant":  # before the import: qdrant_client takes ~1.4 s to import, a PostgreSQL run needs none
      return False
    from stores.qdrant_store import is_server_url  # pylint: disable=import-outside-toplevel
    return not is_server_url(self.url)
