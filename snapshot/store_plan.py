"""--vector-store: the store checked at launch, the choice between syncing it and rebuilding it, and the job's staged
writes (snapshot/store_commit.py applies them).

After a successful run NAME holds exactly the rows of the run's output (same ids, vectors and text_sha256), and
records that run's snapshot id. Nothing reaches NAME before the run's checks pass: the job writes to a collection
or table of its own, and the commit step applies it after the checks, before the files are moved in.

- sync (`incremental`): the run reuses its previous output (--previous, same embedding fingerprint), NAME exists,
  the previous run wrote it, NAME records the previous output's snapshot (held, not half-applied or found to differ)
  and holds as many points as that output had rows. The job stages the rows it encoded (upserts) and the previous
  rows it did not carry over and does not write again (deletes) in `NAME__sTAG`; the commit applies them.
- rebuild: anything else (first run, fingerprint change, a store another root or job wrote, an interrupted apply,
  a restore). The job writes every row into `NAME__rTAG`; the commit moves NAME to it and drops the old one.
  Abandoned tables/collections of the job (failed runs) are dropped when a run begins its writes.

The snapshot id is the run's tag (`sTAG` / `rTAG`); the manifest's `vector_store.snapshot` and the store's marker
must agree for the next run to sync.
"""
from __future__ import annotations

import datetime
import logging
import uuid
from typing import NamedTuple, Optional

from formats.usage import UsageError
from stores.base import APPLYING, DIFFERS, Marker, StoreError, StoreState, rebuild_name
from stores.config import StoreConfig

MODE_SYNC = "incremental"
MODE_REBUILD = "rebuild"
COUNTS = ("store_upserted", "store_deleted", "store_repaired")
DEFAULT_VERIFY = 1000
VERIFY_ALL = -1
VERIFY_FIELD, DROPPED_FIELD = "_store_verify", "_store_dropped"  # private fields of the commit (store_commit.py)
SECTION = "vector_store"
_LOG = logging.getLogger(__name__)


class StoreLaunch(NamedTuple):
  """The store as found at launch: how to reach it and what NAME held."""
  config: StoreConfig
  state: StoreState
  verify: int = DEFAULT_VERIFY


class StorePlan(NamedTuple):
  """What the job does to the store; static, decided when the pipeline is built."""
  config: StoreConfig
  mode: str  # MODE_SYNC or MODE_REBUILD
  reason: str  # why a rebuild ("" for a sync)
  target: str  # the collection/table the job writes: a rebuild's NAME__rTAG, a sync's staging NAME__sTAG
  tag: str  # the snapshot id this run records in the store (target = NAME__TAG)
  expected: Optional[Marker] = None  # what NAME recorded at launch: the commit applies only onto it
  verify: int = DEFAULT_VERIFY  # vectors compared after the apply (VERIFY_ALL: every one)


def check_store(o, dimension: int, remote_runner: bool = False) -> Optional[StoreLaunch]:
  """--vector-store at launch: reachable, credentials accepted, NAME absent or of `dimension`; raises UsageError
  (one line). Changes nothing in the store. None without --vector-store. A Qdrant folder needs a local runner:
  remote workers cannot reach this machine's folder."""
  if not o.vector_store:
    return None
  verify = parse_verify(getattr(o, "vector_store_verify", None))
  try:
    given = {"batch_size": o.vector_store_batch_size, "retries": o.vector_store_retries,
             "index": getattr(o, "vector_store_index", None)}
    config = StoreConfig(o.vector_store, o.vector_store_url, o.vector_collection, keep_text=o.keep_text,
                         **{name: value for name, value in given.items() if value is not None})
    if remote_runner and config.single_writer:
      raise UsageError(f"--vector-store-url {o.vector_store_url}: a Qdrant folder is written by Qdrant's embedded "
                       f"engine on this machine, which remote workers cannot reach; give a Qdrant server URL")
    store = config.make()
    try:
      state = store.check(dimension)
    finally:
      store.close()
  except StoreError as e:
    raise UsageError(f"--vector-store {o.vector_store}: {e}") from None
  return StoreLaunch(config, state, verify)


def parse_verify(value) -> int:
  """--vector-store-verify: a number of vectors (0 or more) or `all` (VERIFY_ALL); None gives DEFAULT_VERIFY."""
  if value is None:
    return DEFAULT_VERIFY
  if str(value).strip().lower() == "all":
    return VERIFY_ALL
  try:
    n = int(value)
  except ValueError:
    n = -1
  if n < 0:
    raise UsageError(f"--vector-store-verify must be a number of vectors (0 or more) or all, got {value!r}")
  return n


def _snapshot_mismatch(name: str, marker: Optional[Marker], recorded: Optional[str]) -> Optional[str]:
  """Why NAME cannot be synced onto (None when its marker is the previous output's snapshot, held)."""
  if marker is None:
    return f"{name} records no snapshot (written by an earlier version or by hand, or restored)"
  if marker.state == APPLYING:
    return f"the apply of snapshot {marker.snapshot} to {name} was interrupted"
  if marker.state == DIFFERS:
    return f"the verify of snapshot {marker.snapshot} found points of {name} that differ"
  if marker.snapshot != recorded:
    return (f"{name} holds snapshot {marker.snapshot}, the previous output's is {recorded}: another root or job "
            f"wrote it, or it was restored")
  return None


def _previous_section(previous_plan) -> Optional[dict]:
  previous = previous_plan.previous
  if previous is None or previous.manifest is None:
    return None
  return previous.manifest.get(SECTION)


def plan_store(launch: StoreLaunch, previous_plan, tag: Optional[str] = None) -> StorePlan:
  """Sync or rebuild (see the module docstring); `previous_plan` is the run's snapshot.previous.Plan."""
  config, state = launch.config, launch.state
  section = _previous_section(previous_plan)
  rows = ((previous_plan.previous.manifest or {}).get("counts") or {}).get("rows") if previous_plan.previous else None
  mode = MODE_REBUILD
  if not previous_plan.incremental:
    reason = f"the run re-embeds every record ({previous_plan.reason})"
  elif not state.exists:
    reason = f"{config.name} does not exist yet"
  elif not section or (section.get("kind"), section.get("url"), section.get("collection")) != (
      config.kind, config.url, config.name):
    reason = f"the previous run did not write {config.name} at {config.url}"
  elif section.get("in_sync") is False:
    reason = f"the previous run left {config.name} unverified or differing from its output"
  elif section.get("physical") != state.physical:
    reason = (f"{config.name} resolves to {state.physical}, the previous run left it on {section.get('physical')}: "
              f"another job replaced it")
  elif (mismatch := _snapshot_mismatch(config.name, state.marker, section.get("snapshot"))) is not None:
    reason = mismatch
  elif rows != state.count:
    reason = f"{config.name} holds {state.count} points, the previous output {rows} rows"
  else:
    mode, reason = MODE_SYNC, ""
  if mode == MODE_REBUILD and state.blocked:
    raise UsageError(f"--vector-collection {config.name}: a rebuild is needed ({reason}), but {state.blocked}; "
                     f"drop it or choose another name")
  stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%d%H%M%S_") + uuid.uuid4().hex[:6]
  tag = tag or ("s" if mode == MODE_SYNC else "r") + stamp
  return StorePlan(config, mode, reason, rebuild_name(config.name, tag), tag, state.marker, launch.verify)


def summary_line(manifest: dict) -> Optional[str]:
  """One line on what the run did to the store, or None for a run without --vector-store."""
  section, c = manifest.get(SECTION), manifest.get("counts") or {}
  if not section:
    return None
  how = "synced" if section["mode"] == MODE_SYNC else f"rebuilt as {section['physical']} ({section['reason']})"
  line = (f"bert-embed: {section['kind']} {section['collection']} {how}: {c.get('store_upserted', 0)} upserted, "
          f"{c.get('store_deleted', 0)} deleted, {section['points']} points")
  verify = section.get("verify")
  if verify and "error" in verify:
    line += f"; not verified ({verify['error']}): the next run rebuilds it"
  elif verify:
    line += (f"; verified {verify['ids_checked']} ids and {verify['vectors_checked']} vectors, "
             f"{verify['repaired']} repaired" + (f", {verify['left_for_next_run']} left for the next run"
                                                  if verify["left_for_next_run"] else ""))
  return line
