"""Qdrant as a vector store: a server (`http(s)://host:6333`) or the embedded engine in a local folder.

NAME is a Qdrant alias; the points live in a physical collection `NAME__TAG` behind it, so a whole replacement
is a new collection and one alias operation (delete + create in a single `update_collection_aliases` call, which
Qdrant applies atomically). Collections hold one named dense vector `dense` of the model's dimension with cosine
distance (Qdrant stores cosine vectors normalised to unit length); the payload holds the record id, `text_sha256`,
`source` and the optional fields of stores.base.PAYLOAD_FIELDS.

Point ids are UUIDv5 of the record id under a fixed namespace (Qdrant accepts only unsigned integers and UUIDs,
and ids like `docs/a.txt:12` must work), so a retried batch or a rerun overwrites a point instead of adding one.

Server: the API key comes from the environment variable QDRANT_API_KEY, never from an option. Every worker
process may write, each in batches of `batch_size` with `retries` retries of a transient failure (connection,
5xx, 429). Folder: the embedded engine locks its folder to one process, so all writes to a folder must come from
one process (the pipeline gathers them to a single writer step); inside that process every store object for the
folder shares one client, serialised by a lock (Beam runs DoFns on several threads).

From Beam's `apache_beam.ml.rag.ingestion.qdrant` this uses the connection parameters and the converter to a point.
Its writer only upserts into an existing collection: it cannot delete, create, move an alias or say what it wrote.
"""
from __future__ import annotations

import os
import re
import threading
import time
import uuid
from typing import Any, Optional, Sequence

import numpy as np
from apache_beam.ml.rag.ingestion.qdrant import QdrantConnectionParameters, QdrantWriteConfig
from apache_beam.ml.rag.types import Content, EmbeddableItem, Embedding
from qdrant_client import QdrantClient, models
from qdrant_client.common.client_exceptions import ResourceExhaustedResponse
from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse

from stores import qdrant_marker
from stores.base import (HELD, Marker, StoreError, StorePoint, StoreState, VectorStore, backoff_seconds, batches,
                         checked_point, one_line, rebuild_name, redacted, refuse_password_in_url)

API_KEY_ENV = "QDRANT_API_KEY"
VECTOR_NAME = "dense"  # Beam's QdrantWriteConfig default
# Fixed forever: point ids of existing collections depend on it.
POINT_ID_NAMESPACE = uuid.UUID("16c6bab5-6356-40ed-b717-2d7afb3b444a")
INITIAL_TAG = "initial"
_SERVER_TIMEOUT_S = 30

# Embedded engines by real folder path, shared by every store object of this process: [client, users, lock].
_LOCAL: dict[str, list] = {}
_LOCAL_GUARD = threading.Lock()


def point_id(record_id: str) -> str:
  """The Qdrant point id of a record id: UUIDv5 under POINT_ID_NAMESPACE."""
  return str(uuid.uuid5(POINT_ID_NAMESPACE, record_id))


def is_server_url(url: str) -> bool:
  return url.startswith(("http://", "https://"))


class _NullLock:

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    return False


class QdrantStore(VectorStore):
  """A Qdrant collection NAME (an alias) on a server or in a local folder (see the module docstring)."""

  kind = "qdrant"

  def __init__(self, url: str, name: str, **kwargs: Any):
    refuse_password_in_url("Qdrant", url, f"give the API key in ${API_KEY_ENV}")
    super().__init__(url, name, **kwargs)
    if not is_server_url(url) and "://" in url:
      raise StoreError(f"Qdrant URL must be http(s)://host:port or a local folder, got {redacted(url)!r}")
    self._client = None
    self._folder: Optional[str] = None if is_server_url(url) else os.path.realpath(url)

  @classmethod
  def check_name(cls, name: str) -> None:
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]{0,99}", name or "") or "__" in name:
      raise StoreError(f"Qdrant collection name must be 1-100 characters of [A-Za-z0-9_-] without '__' "
                       f"(reserved for its physical collections), got {name!r}")

  # --- connection ---

  def _connection(self) -> QdrantConnectionParameters:
    if self._folder is not None:
      return QdrantConnectionParameters.local(self._folder)
    return QdrantConnectionParameters.for_url(self.url, api_key=os.environ.get(API_KEY_ENV) or None,
                                              timeout=_SERVER_TIMEOUT_S)

  def _connect(self):
    """The client, created on first use; a folder's client is shared within the process."""
    if self._client is not None:
      return self._client
    params = self._connection()
    if self._folder is None:
      self._client = QdrantClient(url=params.url, api_key=params.api_key, timeout=params.timeout,
                                  check_compatibility=False)
      return self._client
    with _LOCAL_GUARD:
      entry = _LOCAL.get(self._folder)
      if entry is None:
        try:
          client = QdrantClient(path=params.path, force_disable_check_same_thread=True)
        except RuntimeError as e:  # the folder lock: another process has it open
          raise StoreError(f"Qdrant folder {self._folder} is in use by another process ({one_line(e)}); "
                           f"a folder takes writes from one process only") from e
        entry = _LOCAL[self._folder] = [client, 0, threading.RLock()]
      entry[1] += 1
      self._client = entry[0]
    return self._client

  def _lock(self):
    if self._folder is None:
      return _NullLock()
    self._connect()
    return _LOCAL[self._folder][2]

  def close(self) -> None:
    client, self._client = self._client, None
    if client is None:
      return
    if self._folder is None:
      client.close()
      return
    with _LOCAL_GUARD:
      entry = _LOCAL.get(self._folder)
      if entry is not None and entry[0] is client:
        entry[1] -= 1
        if entry[1] <= 0:
          del _LOCAL[self._folder]
          client.close()

  def _call(self, what: str, fn, *args, retry: bool = False, **kwargs):
    """Runs a client call under the folder lock; maps connection and auth failures to StoreError and retries
    transient ones when `retry` (the call must be idempotent)."""
    attempt = 0
    while True:
      try:
        with self._lock():
          return fn(*args, **kwargs)
      except ResourceExhaustedResponse as e:  # 429: bounded backoff, then one line
        attempt += 1
        if not retry or attempt > self.retries:
          raise StoreError(f"Qdrant {what} on {self.url} was rate-limited (429) after {attempt} attempts") from e
        time.sleep(min(30.0, max(backoff_seconds(attempt), float(e.retry_after_s or 0))))
      except UnexpectedResponse as e:
        if e.status_code in (401, 403):
          raise StoreError(f"Qdrant at {self.url} refused the API key ({e.status_code}; key from ${API_KEY_ENV}"
                           f"{'' if os.environ.get(API_KEY_ENV) else ', which is not set'})") from e
        attempt += 1
        transient = e.status_code is None or e.status_code >= 500 or e.status_code == 429
        if not (retry and transient) or attempt > self.retries:
          raise StoreError(f"Qdrant {what} on {self.url} failed: {e.status_code} {one_line(e.content[:200])}") from e
        time.sleep(backoff_seconds(attempt))
      except ResponseHandlingException as e:
        attempt += 1
        if not retry or attempt > self.retries:
          raise StoreError(f"Qdrant at {self.url} is not reachable ({what}: {one_line(e.source)})") from e
        time.sleep(backoff_seconds(attempt))

  # --- inspection ---

  def _aliases(self) -> dict[str, str]:
    client = self._connect()
    found = self._call("listing aliases", client.get_aliases)
    return {a.alias_name: a.collection_name for a in found.aliases}

  def _resolve(self) -> Optional[str]:
    """The physical collection NAME resolves to, or None."""
    physical = self._aliases().get(self.name)
    if physical is not None:
      return physical
    client = self._connect()
    return self.name if self._call("checking the collection", client.collection_exists, self.name) else None

  def _dimension(self, physical: str) -> int:
    client = self._connect()
    info = self._call("reading the collection", client.get_collection, physical)
    vectors = info.config.params.vectors
    if not isinstance(vectors, dict) or VECTOR_NAME not in vectors:
      raise StoreError(f"Qdrant collection {self.name!r} has no dense vector named {VECTOR_NAME!r}: "
                       f"it was not made by bert-embed; choose another --vector-collection")
    return int(vectors[VECTOR_NAME].size)

  def check(self, dimension: Optional[int] = None) -> StoreState:
    client = self._connect()
    self._call("listing collections", client.get_collections)  # reachability and the API key
    physical = self._resolve()
    if physical is None:
      return StoreState(False, None, None, 0)
    if not physical.startswith(self.name + "__"):
      what = "is a collection, not an alias" if physical == self.name else f"is an alias of {physical!r}"
      raise StoreError(f"Qdrant {self.name!r} {what} that bert-embed did not create (its collections are "
                       f"{self.name}__TAG); it is left alone: choose another --vector-collection")
    found = self._dimension(physical)
    if dimension is not None and found != dimension:
      raise StoreError(f"Qdrant collection {self.name!r} holds vectors of dimension {found}, the model's is "
                       f"{dimension}: choose another --vector-collection or remove it")
    return StoreState(True, found, physical, self.count(physical), qdrant_marker.read_marker(self))

  def count(self, target: Optional[str] = None) -> int:
    client = self._connect()
    return int(self._call("counting", client.count, target or self.name, exact=True, retry=True).count)

  # --- changes ---

  def _create(self, physical: str, dimension: int) -> None:
    client = self._connect()
    self._call("creating a collection", client.create_collection, physical,
               vectors_config={VECTOR_NAME: models.VectorParams(size=dimension, distance=models.Distance.COSINE)})

  def ensure(self, dimension: int) -> None:
    if self.check(dimension).exists:
      return
    self.swap_in(self.begin_rebuild(dimension, INITIAL_TAG))

  def begin_rebuild(self, dimension: int, tag: str) -> str:
    physical = rebuild_name(self.name, tag)
    client = self._connect()
    if physical == self._resolve():  # the live collection came from a rebuild of the same tag: use its twin
      physical += "_2"
    if self._call("checking the collection", client.collection_exists, physical):
      self._call("dropping an abandoned rebuild", client.delete_collection, physical)
    self._create(physical, dimension)
    return physical

  def swap_in(self, physical: str) -> Optional[str]:
    client = self._connect()
    aliases = self._aliases()
    previous = aliases.get(self.name)
    if previous == physical:  # swapped in by an earlier attempt
      return None
    if previous is None and self._call("checking the collection", client.collection_exists, self.name):
      raise StoreError(f"Qdrant collection {self.name!r} is a collection, not an alias: a whole replacement needs "
                       f"an alias; choose another --vector-collection")
    operations = []
    if previous is not None:
      operations.append(models.DeleteAliasOperation(delete_alias=models.DeleteAlias(alias_name=self.name)))
    operations.append(models.CreateAliasOperation(
        create_alias=models.CreateAlias(collection_name=physical, alias_name=self.name)))
    self._call("moving the alias", client.update_collection_aliases, change_aliases_operations=operations)
    return previous

  def drop(self, physical: str) -> None:
    if physical == self._resolve():
      raise StoreError(f"Qdrant collection {physical!r} is the one {self.name!r} resolves to; not dropped")
    client = self._connect()
    self._call("dropping a collection", client.delete_collection, physical, retry=True)

  def upsert(self, points: Sequence[StorePoint], target: Optional[str] = None) -> int:
    convert = QdrantWriteConfig(connection_params=self._connection(), collection_name=target or self.name,
                                dense_embedding_key=VECTOR_NAME).create_converter()
    client = self._connect()
    written = 0
    for batch in batches(list(points), self.batch_size):
      structs = []
      for point in batch:
        vector, payload = checked_point(point)
        payload["id"] = point.id
        item = EmbeddableItem(content=Content(), id=point_id(point.id), metadata=payload,
                              embedding=Embedding(dense_embedding=vector.tolist()))
        structs.append(convert(item))
      self._call("upserting", client.upsert, target or self.name, points=structs, wait=True, retry=True)
      written += len(structs)
    return written

  def delete(self, ids: Sequence[str], target: Optional[str] = None) -> int:
    client = self._connect()
    ids = list(ids)
    for batch in batches(ids, self.batch_size):
      selector = models.PointIdsList(points=[point_id(i) for i in batch])
      self._call("deleting", client.delete, target or self.name, points_selector=selector, wait=True, retry=True)
    return len(ids)

  # --- staged changes and their commit (stores/qdrant_marker.py) ---

  def abandoned(self) -> list[str]:
    client = self._connect()
    names = [c.name for c in self._call("listing collections", client.get_collections).collections]
    keep = {self._resolve(), qdrant_marker.meta_name(self.name)}
    return sorted(n for n in names if n.startswith(self.name + "__") and n not in keep)

  def begin_staging(self, dimension: int, tag: str) -> str:
    staging = rebuild_name(self.name, tag)
    client = self._connect()
    if self._call("checking the collection", client.collection_exists, staging):
      self._call("dropping an abandoned staging collection", client.delete_collection, staging)
    self._create(staging, dimension)
    return staging

  def stage_deletes(self, ids: Sequence[str], staging: str) -> int:
    client = self._connect()
    ids = list(ids)
    unit = [1.0] + [0.0] * (self._dimension(staging) - 1)
    for batch in batches(ids, self.batch_size):
      flagged = [models.PointStruct(id=point_id(i), vector={VECTOR_NAME: unit},
                                    payload={"id": i, qdrant_marker.DELETE_FLAG: True}) for i in batch]
      self._call("staging deletes", client.upsert, staging, points=flagged, wait=True, retry=True)
    return len(ids)

  def apply_staged(self, staging: str, snapshot: str, expected: Optional[Marker]) -> None:
    if not qdrant_marker.begin_commit(self, snapshot, expected):
      qdrant_marker.apply_staging(self, staging)
      qdrant_marker.write_marker(self, Marker(snapshot, HELD), release=True)
    qdrant_marker.drop_quietly(self, staging)

  def commit_rebuild(self, physical: str, snapshot: str, expected: Optional[Marker]) -> Optional[str]:
    if qdrant_marker.begin_commit(self, snapshot, expected):
      return None
    previous = self.swap_in(physical)
    qdrant_marker.write_marker(self, Marker(snapshot, HELD), release=True)
    return previous

  def set_marker(self, marker: Marker) -> None:
    qdrant_marker.write_marker(self, marker)

  def _scroll(self, **kwargs):
    client = self._connect()
    offset = None
    while True:
      page, offset = self._call("reading points", client.scroll, self.name, limit=1024, offset=offset, retry=True,
                                **kwargs)
      yield from page
      if offset is None:
        return

  def fingerprints(self) -> dict[str, Optional[str]]:
    return {(p.payload or {}).get("id"): (p.payload or {}).get("text_sha256")
            for p in self._scroll(with_payload=["id", "text_sha256"], with_vectors=False)}

  def vectors(self, ids: Sequence[str]) -> dict[str, np.ndarray]:
    client = self._connect()
    out = {}
    for batch in batches(list(ids), 1024):
      found = self._call("reading vectors", client.retrieve, self.name, [point_id(i) for i in batch],
                         with_payload=["id"], with_vectors=True, retry=True)
      out.update({p.payload["id"]: np.asarray(p.vector[VECTOR_NAME], np.float32) for p in found})
    return out
