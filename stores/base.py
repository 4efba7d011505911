"""The one interface every vector store implements, and the point it stores.

A store holds one logical collection under a NAME that readers query. Two ways to change it:

- incremental: `upsert` and `delete` on NAME itself (idempotent: a retried batch overwrites the same ids);
- whole replacement: `begin_rebuild` creates a new physical collection, `upsert` fills it (passing its name as
  `target`), `swap_in` makes NAME resolve to it in one atomic step, `drop` removes the previous one. Until the swap,
  readers of NAME see the previous complete set; after it, the new complete set.

A store object is cheap to build and picklable (Beam ships it to workers): it connects on first use, and
`close` releases the connection. Every failure a user can fix (unreachable, refused credentials, a collection of
another dimension, a bad name) is a `StoreError` whose message is one line.
"""
from __future__ import annotations

import abc
import math
import re
import urllib.parse
from typing import Any, Mapping, NamedTuple, Optional, Sequence

import numpy as np

from stores import digest as digest_lib

# The payload fields a point may carry, with their kind ("text" or "int"). `id` is the record id exactly as in the
# Parquet output; `text` comes with --keep-text, the window fields with --long-text chunk --chunk-output rows.
PAYLOAD_FIELDS: Mapping[str, str] = {
    "id": "text",
    "text_sha256": "text",
    "source": "text",
    "text": "text",
    "parent_id": "text",
    "chunk_index": "int",
    "chunk_start_piece": "int",
    "chunk_end_piece": "int",
}

DEFAULT_BATCH_SIZE = 256
DEFAULT_RETRIES = 3


class StoreError(Exception):
  """A store problem the user has to fix (reachability, credentials, names, dimensions); the message is one line."""

  def __init__(self, message: str):
    super().__init__(one_line(message))


def refuse_password_in_url(label: str, url: str, instead: str) -> None:
  """Raises StoreError (one line, without the password) when `url` holds a user-info password."""
  try:
    parts = urllib.parse.urlsplit(url)
    password = parts.password
  except ValueError:
    return
  if password:
    raise StoreError(f"{label} URL must not hold a password (user {parts.username!r} at {parts.hostname}): "
                     f"{instead}")


def redacted(url: str) -> str:
  """`url` with any user-info password replaced by ***."""
  return re.sub(r"(//[^/@:]*:)[^/@]*@", r"\1***@", url)


def one_line(message: Any) -> str:
  """`message` as a single line: newlines folded, long messages cut."""
  text = " ".join(str(message).split())
  return text if len(text) <= 400 else text[:397] + "..."


class StorePoint(NamedTuple):
  """One row of the output as the store holds it."""
  id: str  # the record id, exactly as in the Parquet output
  vector: np.ndarray  # float32 [H]
  payload: Mapping[str, Any]  # keys from PAYLOAD_FIELDS; `id` is added by the stores themselves


# The states a store records with the snapshot it holds (Marker.state).
HELD = "held"  # NAME holds the snapshot, verified when the run finished
APPLYING = "applying"  # an apply of the snapshot began and has not finished (Qdrant: no multi-point transaction)
DIFFERS = "differs"  # the verify after the apply found differences it could not repair: the next run rebuilds


class Marker(NamedTuple):
  """What a store records of the snapshot NAME holds: the run's snapshot id (the manifest's vector_store.snapshot)
  and a state (HELD, APPLYING, DIFFERS)."""
  snapshot: str
  state: str


class StoreState(NamedTuple):
  """What `check` found under NAME."""
  exists: bool
  dimension: Optional[int]  # None when NAME does not exist
  physical: Optional[str]  # the physical collection/table NAME resolves to (NAME itself when it is not an alias)
  count: int
  marker: Optional[Marker] = None  # the snapshot NAME records (None: none recorded)
  blocked: Optional[str] = None  # what keeps a rebuild from replacing NAME (e.g. views on a table), or None


class ChangedSinceLaunch(Exception):
  """NAME no longer holds what the run saw at launch: another writer committed first. Nothing was applied."""

  def __init__(self, name: str, found: Optional[Marker], expected: Optional[Marker]):
    def show(marker):
      return "none" if marker is None else f"{marker.snapshot} ({marker.state})"

    super().__init__(f"{name} records snapshot {show(found)}, this run saw {show(expected)} at launch: another run "
                     f"or job wrote it since")


def check_payload(payload: Mapping[str, Any]) -> None:
  """Raises ValueError for a payload field the stores do not know or a value of the wrong kind."""
  for key, value in payload.items():
    kind = PAYLOAD_FIELDS.get(key)
    if kind is None:
      raise ValueError(f"unknown payload field {key!r}; known: {', '.join(PAYLOAD_FIELDS)}")
    if value is None:
      continue
    if kind == "text" and not isinstance(value, str):
      raise ValueError(f"payload field {key!r} must be a string, got {type(value).__name__}")
    if kind == "int" and (isinstance(value, bool) or not isinstance(value, (int, np.integer))):
      raise ValueError(f"payload field {key!r} must be an integer, got {type(value).__name__}")


def check_vector(point_id: str, vector: np.ndarray, dimension: Optional[int]) -> np.ndarray:
  """`vector` as float32 [H]; raises ValueError if it is not finite or not of `dimension` (when given)."""
  array = np.asarray(vector, dtype=np.float32)
  if array.ndim != 1 or (dimension is not None and array.shape[0] != dimension):
    raise ValueError(f"vector of {point_id!r} has shape {array.shape}, the collection holds dimension {dimension}")
  if not np.all(np.isfinite(array)):
    raise ValueError(f"vector of {point_id!r} is not finite")
  return array


def checked_point(point: StorePoint) -> tuple[np.ndarray, dict]:
  """A point's vector (float32 [H], finite) and its payload with None values left out and integers as int; raises
  ValueError for a payload or vector the stores do not take."""
  check_payload(point.payload)
  vector = check_vector(point.id, point.vector, None)
  payload = {key: (int(value) if PAYLOAD_FIELDS[key] == "int" else value)
             for key, value in point.payload.items() if value is not None}
  return vector, payload


def rebuild_name(name: str, tag: str) -> str:
  """The physical name of a rebuild of NAME: `NAME__TAG`, TAG made of [a-z0-9_]."""
  if not re.fullmatch(r"[a-z0-9_]{1,24}", tag):
    raise ValueError(f"rebuild tag must be 1-24 characters of [a-z0-9_], got {tag!r}")
  return f"{name}__{tag}"


def batches(items: Sequence[Any], size: int):
  """`items` in consecutive slices of at most `size`."""
  for start in range(0, len(items), max(1, size)):
    yield items[start:start + size]


def backoff_seconds(attempt: int) -> float:
  """The pause before retry number `attempt` (1-based): 0.5 s doubling, at most 8 s."""
  return min(8.0, 0.5 * math.pow(2, attempt - 1))


class VectorStore(abc.ABC):
  """A vector store holding one logical collection NAME (see the module docstring).

  `target` arguments name a physical collection returned by `begin_rebuild`; None means NAME.
  """

  kind: str = ""

  def __init__(self, url: str, name: str, *, batch_size: int = DEFAULT_BATCH_SIZE,
               retries: int = DEFAULT_RETRIES):
    if batch_size < 1:
      raise StoreError(f"store batch size must be at least 1, got {batch_size}")
    if retries < 0:
      raise StoreError(f"store retries must be 0 or more, got {retries}")
    self.url = url
    self.name = name
    self.batch_size = batch_size
    self.retries = retries
    self.check_name(name)

  @classmethod
  @abc.abstractmethod
  def check_name(cls, name: str) -> None:
    """Raises StoreError unless `name` is a valid collection/table name for this store."""

  @abc.abstractmethod
  def check(self, dimension: Optional[int] = None) -> StoreState:
    """Connects (reachability, credentials) and inspects NAME; raises StoreError if NAME exists with a dimension
    other than `dimension` (when given). Changes nothing."""

  @abc.abstractmethod
  def ensure(self, dimension: int) -> None:
    """Creates NAME with `dimension` (and the payload columns it lacks) when missing; checks its dimension."""

  @abc.abstractmethod
  def upsert(self, points: Sequence[StorePoint], target: Optional[str] = None) -> int:
    """Writes `points` (insert or overwrite by id) in batches of `batch_size`; returns how many were written."""

  @abc.abstractmethod
  def delete(self, ids: Sequence[str], target: Optional[str] = None) -> int:
    """Removes the points with these record ids (absent ones are ignored); returns how many ids were asked for."""

  @abc.abstractmethod
  def begin_rebuild(self, dimension: int, tag: str) -> str:
    """Creates an empty physical collection for a whole replacement of NAME and returns its name. Readers of NAME
    do not see it until `swap_in`. An earlier rebuild of the same tag that was never swapped in (a failed attempt)
    is dropped first; the collection NAME resolves to is never touched, whatever the tag."""

  @abc.abstractmethod
  def swap_in(self, physical: str) -> Optional[str]:
    """Makes NAME resolve to `physical` in one atomic step; returns the physical collection NAME resolved to before
    (None when NAME did not exist, or when it already is this rebuild: a repeated call changes nothing). The
    previous one is kept until `drop`."""

  @abc.abstractmethod
  def drop(self, physical: str) -> None:
    """Removes a physical collection (a replaced one, or an abandoned rebuild). Refuses the one NAME resolves to."""

  # --- staged changes and their commit (how each store keeps readers on the old or new set: its module docstring)

  @abc.abstractmethod
  def abandoned(self) -> list[str]:
    """The physical collections/tables this job created for NAME that NAME does not resolve to (failed rebuilds,
    staging of failed runs, replaced ones a drop missed)."""

  @abc.abstractmethod
  def begin_staging(self, dimension: int, tag: str) -> str:
    """Creates an empty staging collection/table for a sync's changes (`upsert` with it as `target`, then
    `stage_deletes`); NAME is untouched until `apply_staged`."""

  @abc.abstractmethod
  def stage_deletes(self, ids: Sequence[str], staging: str) -> int:
    """Records in `staging` that these record ids are to be deleted from NAME; returns how many."""

  @abc.abstractmethod
  def apply_staged(self, staging: str, snapshot: str, expected: Optional[Marker]) -> None:
    """Applies a staging's upserts and deletes to NAME and records `snapshot` (HELD); raises ChangedSinceLaunch
    when NAME's marker is not `expected` (nothing applied), StoreError when the store fails."""

  @abc.abstractmethod
  def commit_rebuild(self, physical: str, snapshot: str, expected: Optional[Marker]) -> Optional[str]:
    """`swap_in` with the marker: checks `expected` (ChangedSinceLaunch), makes NAME resolve to `physical` and
    records `snapshot` (HELD); returns the replaced physical collection/table (to drop) or None."""

  @abc.abstractmethod
  def set_marker(self, marker: Marker) -> None:
    """Records `marker` as what NAME holds."""

  @abc.abstractmethod
  def fingerprints(self) -> dict[str, Optional[str]]:
    """{record id: text_sha256} of every point in NAME (no vectors read)."""

  def digest(self) -> digest_lib.Digest:
    """The digest (stores/digest.py) of NAME's (id, text_sha256) pairs; a store that can compute it where the points
    are overrides this, which reads them all (`fingerprints`)."""
    return digest_lib.digest((i, sha) for i, sha in self.fingerprints().items() if i is not None)

  @abc.abstractmethod
  def vectors(self, ids: Sequence[str]) -> dict[str, np.ndarray]:
    """{record id: vector as stored} of those of `ids` that NAME holds."""

  @abc.abstractmethod
  def count(self, target: Optional[str] = None) -> int:
    """The number of points in NAME (or `target`)."""

  @abc.abstractmethod
  def close(self) -> None:
    """Releases the connection; the store reconnects on its next use."""

  def __getstate__(self):
    state = dict(self.__dict__)
    state["_client"] = None
    return state

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()
