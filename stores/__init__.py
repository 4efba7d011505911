"""Vector stores: one interface (stores.base.VectorStore) and its implementations, Qdrant and PostgreSQL with
pgvector. Store clients only, no TensorFlow and no Beam steps (the steps that write are in transforms/)."""
from __future__ import annotations

from typing import Any

from stores.base import StoreError, VectorStore

STORE_KINDS = ("qdrant", "postgres")
# The longest record id (UTF-8 bytes) a store holds; longer ids are dead-lettered. PostgreSQL: its btree primary key
# takes entries up to ~2,700 bytes; Qdrant keeps the id in the payload (the point id is its UUIDv5): no limit.
MAX_ID_BYTES = {"postgres": 2000}


def make_store(kind: str, url: str, name: str, **kwargs: Any) -> VectorStore:
  """The store of `kind` for NAME at `url` (not connected yet); StoreError for an unknown kind or a bad URL/name."""
  if kind == "qdrant":
    from stores.qdrant_store import QdrantStore  # pylint: disable=import-outside-toplevel
    return QdrantStore(url, name, **kwargs)
  if kind == "postgres":
    from stores.postgres_store import PostgresStore  # pylint: disable=import-outside-toplevel
    return PostgresStore(url, name, **kwargs)
  raise StoreError(f"unknown vector store {kind!r}; choose one of {', '.join(STORE_KINDS)}")
