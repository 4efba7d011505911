"""Qdrant: the marker of the snapshot NAME holds, the lease of a commit, and applying a sync's staged changes.

Qdrant has no multi-point transaction, so an apply is made detectable instead of atomic:

- The marker is one point of the collection `NAME__meta` (vector of dimension 1) whose payload holds `snapshot`
  and `state` (stores.base HELD / APPLYING / DIFFERS) and the commit lease (`lease_owner`, `lease_until`).
- A sync's changes go to a staging collection `NAME__sTAG` while the job runs: the points to upsert as they are,
  the ids to delete as points flagged `bert_embed_delete`. The commit takes the lease, checks the marker is the one
  the run saw at launch, records APPLYING, copies the staging's upserts and deletes into NAME, records HELD (last)
  and drops the staging collection. An apply that stops half-way leaves APPLYING: the next run sees it and rebuilds.
- The lease (a server; a folder is locked by its engine) keeps two runs from committing to NAME at once: a commit
  finding another run's unexpired lease (LEASE_S) fails in one line; one that finds NAME's marker changed since its
  launch applies nothing.
"""
from __future__ import annotations

import logging
import time
import uuid
from typing import Optional

from qdrant_client import models

from stores.base import APPLYING, HELD, ChangedSinceLaunch, Marker, StoreError, batches

META_SUFFIX = "__meta"
DELETE_FLAG = "bert_embed_delete"
LEASE_S = 600.0
_META_POINT = str(uuid.uuid5(uuid.UUID("16c6bab5-6356-40ed-b717-2d7afb3b444a"), "bert-embed marker"))
_LOG = logging.getLogger(__name__)


def meta_name(name: str) -> str:
  return name + META_SUFFIX


def _meta_payload(store) -> Optional[dict]:
  client = store._connect()  # pylint: disable=protected-access
  meta = meta_name(store.name)
  if not store._call("checking the marker", client.collection_exists, meta):  # pylint: disable=protected-access
    return None
  found = store._call("reading the marker", client.retrieve, meta, [_META_POINT],  # pylint: disable=protected-access
                      with_payload=True, retry=True)
  return dict(found[0].payload or {}) if found else None


def read_marker(store) -> Optional[Marker]:
  payload = _meta_payload(store)
  if not payload or not payload.get("snapshot"):
    return None
  return Marker(payload["snapshot"], payload.get("state") or "")


def _write(store, fields: dict) -> None:
  client = store._connect()  # pylint: disable=protected-access
  meta = meta_name(store.name)
  call = store._call  # pylint: disable=protected-access
  if not call("checking the marker", client.collection_exists, meta):
    call("creating the marker", client.create_collection, meta,
         vectors_config=models.VectorParams(size=1, distance=models.Distance.DOT))
  payload = {**(_meta_payload(store) or {}), **fields}
  point = models.PointStruct(id=_META_POINT, vector=[1.0], payload=payload)
  call("writing the marker", client.upsert, meta, points=[point], wait=True, retry=True)


def write_marker(store, marker: Marker, release: bool = False) -> None:
  fields = {"snapshot": marker.snapshot, "state": marker.state}
  if release:
    fields.update(lease_owner=None, lease_until=None)
  _write(store, fields)


def take_lease(store, owner: str) -> None:
  """Raises StoreError (one line) when another run holds an unexpired lease on NAME; else records ours. A folder needs
  none: its engine's lock keeps every other process out while the commit holds it (a killed run leaves no lease)."""
  if store._folder is not None:  # pylint: disable=protected-access
    return
  payload = _meta_payload(store) or {}
  holder, until = payload.get("lease_owner"), payload.get("lease_until") or 0.0
  if holder and holder != owner and until > time.time():
    raise StoreError(f"another run ({holder}) is committing to Qdrant collection {store.name!r} (lease until "
                     f"{time.strftime('%H:%M:%S', time.gmtime(until))} UTC); this run applied nothing")
  _write(store, {"lease_owner": owner, "lease_until": time.time() + LEASE_S})


def release_lease(store) -> None:
  _write(store, {"lease_owner": None, "lease_until": None})


def begin_commit(store, snapshot: str, expected: Optional[Marker]) -> bool:
  """Takes the lease and checks the marker; records APPLYING. True when an earlier attempt already committed."""
  take_lease(store, snapshot)
  found = read_marker(store)
  if found == Marker(snapshot, HELD):
    release_lease(store)
    return True
  if found not in (expected, Marker(snapshot, APPLYING)):
    release_lease(store)
    raise ChangedSinceLaunch(store.name, found, expected)
  write_marker(store, Marker(snapshot, APPLYING))
  return False


def apply_staging(store, staging: str) -> None:
  """Copies the staging collection's upserts into NAME and applies its deletes (idempotent: a repeat converges)."""
  client = store._connect()  # pylint: disable=protected-access
  call = store._call  # pylint: disable=protected-access
  offset = None
  while True:
    page, offset = call("reading the staged changes", client.scroll, staging, limit=store.batch_size, offset=offset,
                        with_payload=True, with_vectors=True, retry=True)
    deletes = [p.id for p in page if (p.payload or {}).get(DELETE_FLAG)]
    upserts = [models.PointStruct(id=p.id, vector=p.vector, payload=p.payload) for p in page
               if not (p.payload or {}).get(DELETE_FLAG)]
    for batch in batches(deletes, store.batch_size):
      call("applying deletes", client.delete, store.name, points_selector=models.PointIdsList(points=list(batch)),
           wait=True, retry=True)
    if upserts:
      call("applying upserts", client.upsert, store.name, points=upserts, wait=True, retry=True)
    if offset is None:
      return


def drop_quietly(store, collection: str) -> Optional[str]:
  """Drops `collection`; a failure is a warning (what was left), returned as its message."""
  try:
    store.drop(collection)
    return None
  except Exception as e:  # pylint: disable=broad-except  (the data is committed: a leftover is not a failed run)
    message = f"could not drop {collection} ({str(e)[:200]}); it is left, and dropped by the next rebuild"
    _LOG.warning(message)
    return message
