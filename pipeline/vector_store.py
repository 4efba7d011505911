"""--vector-store: the store checked at launch, the choice between syncing it and rebuilding it, the job's writes,
and the finalizer that commits a rebuild.

After a successful run the store's collection NAME holds exactly the rows of the run's output (same ids, same
vectors). Two ways to get there, chosen at launch:

- sync (`incremental`): the run reuses its previous output (--previous, same embedding fingerprint), NAME exists,
  the previous run wrote it (its manifest's `vector_store` names the same store and physical collection) and NAME
  still holds as many points as that output had rows. Then only the rows this run encoded are upserted, and the
  previous rows it did not carry over (records deleted, changed, encoded again; windows no longer produced) and
  does not write again are deleted. These writes go to NAME while the job runs: a failed run may have applied
  some of them (each is idempotent, and the rerun converges).
- rebuild: anything else (first run, fingerprint change, a store that drifted from the previous output). The job
  creates a new physical collection `NAME__TAG` as its first step, writes every row there, and the finalizer, which
  runs only after the run's checks passed and before its files replace the earlier output, moves NAME to it in one
  operation and drops the old one. A failed or killed run leaves NAME on the previous complete collection (the
  abandoned `NAME__TAG` stays until dropped by hand, see README).

The finalizer records the `vector_store` section of the manifest (kind, URL, collection, mode and why, the physical
collection, points held); the counts `store_upserted` and `store_deleted` say what the run wrote.
"""
from __future__ import annotations

import datetime
import logging
import uuid
from typing import NamedTuple, Optional

import apache_beam as beam

from pipeline import finalize as finalize_lib
from pipeline.options import UsageError
from stores.base import StoreError, StoreState, rebuild_name
from transforms.sequencing import After
from transforms.store_writes import StoreConfig, WriteToStore

MODE_SYNC = "incremental"
MODE_REBUILD = "rebuild"
COUNTS = ("store_upserted", "store_deleted")
SECTION = "vector_store"
_LOG = logging.getLogger(__name__)


class StoreLaunch(NamedTuple):
  """The store as found at launch: how to reach it and what NAME held."""
  config: StoreConfig
  state: StoreState


class StorePlan(NamedTuple):
  """What the job does to the store; static, decided when the pipeline is built."""
  config: StoreConfig
  mode: str  # MODE_SYNC or MODE_REBUILD
  reason: str  # why a rebuild ("" for a sync)
  target: Optional[str]  # the physical collection a rebuild writes (None for a sync: NAME itself)
  tag: Optional[str] = None  # the rebuild's tag (target = NAME__TAG)


def check_store(o, dimension: int, remote_runner: bool = False) -> Optional[StoreLaunch]:
  """--vector-store at launch: reachable, credentials accepted, NAME absent or of `dimension`; raises UsageError
  (one line). Changes nothing in the store. None without --vector-store. A Qdrant folder needs a local runner:
  remote workers cannot reach this machine's folder."""
  if not o.vector_store:
    return None
  try:
    given = {"batch_size": o.vector_store_batch_size, "retries": o.vector_store_retries}
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
  return StoreLaunch(config, state)


def _previous_section(previous_plan) -> Optional[dict]:
  previous = previous_plan.previous
  if previous is None or previous.manifest is None:
    return None
  return previous.manifest.get(SECTION)


def plan_store(launch: StoreLaunch, previous_plan, tag: Optional[str] = None) -> StorePlan:
  """Sync or rebuild (see the module docstring); `previous_plan` is the run's pipeline.previous.Plan. Raises
  UsageError when a rebuild is needed but cannot be swapped in (a Qdrant NAME that is a collection, not an alias)."""
  config, state = launch.config, launch.state
  section = _previous_section(previous_plan)
  rows = ((previous_plan.previous.manifest or {}).get("counts") or {}).get("rows") if previous_plan.previous else None
  if not previous_plan.incremental:
    reason = f"the run re-embeds every record ({previous_plan.reason})"
  elif not state.exists:
    reason = f"{config.name} does not exist yet"
  elif not section or (section.get("kind"), section.get("url"), section.get("collection")) != (
      config.kind, config.url, config.name):
    reason = f"the previous run did not write {config.name} at {config.url}"
  elif section.get("physical") != state.physical:
    reason = (f"{config.name} resolves to {state.physical}, the previous run left it on {section.get('physical')}: "
              f"another job replaced it")
  elif rows != state.count:
    reason = f"{config.name} holds {state.count} points, the previous output {rows} rows"
  else:
    return StorePlan(config, MODE_SYNC, "", None)
  if config.kind == "qdrant" and state.exists and state.physical == config.name:
    raise UsageError(f"--vector-collection {config.name}: a rebuild is needed ({reason}), but {config.name} is a "
                     f"Qdrant collection, not an alias, so it cannot be swapped; choose another name")
  tag = tag or datetime.datetime.now(datetime.timezone.utc).strftime("r%Y%m%d%H%M%S_") + uuid.uuid4().hex[:6]
  return StorePlan(config, MODE_REBUILD, reason, rebuild_name(config.name, tag), tag)


class _BeginRebuildFn(beam.DoFn):

  def __init__(self, plan: StorePlan, dimension: int):
    super().__init__()
    self._plan = plan
    self._dimension = dimension

  def process(self, unused_element):
    store = self._plan.config.make()
    try:
      physical = store.begin_rebuild(self._dimension, self._plan.tag)
    finally:
      store.close()
    if physical != self._plan.target:
      raise StoreError(f"the rebuild of {self._plan.config.name} was created as {physical}, "
                       f"expected {self._plan.target}")
    yield physical


def write_store(plan: StorePlan, dimension: int, encoded_rows, all_rows, stale_ids, pipeline) -> dict:
  """Wires the job's store writes; returns {count name: PCollection of ints} for the manifest.

  encoded_rows: the valid rows this run encoded; all_rows: every valid row of the output (encoded and carried);
  stale_ids: the ids of the previous rows not carried (None without carry-over).
  """
  if plan.mode == MODE_REBUILD:
    begun = (pipeline
             | "BeginStoreRebuild" >> beam.Create([None])
             | "CreateRebuild" >> beam.ParDo(_BeginRebuildFn(plan, dimension)))
    upserts = all_rows | "AfterRebuildBegun" >> After(begun)
    deletes = pipeline | "NothingToDelete" >> beam.Create([])
  else:
    upserts = encoded_rows
    stale = (stale_ids if stale_ids is not None else pipeline | "NoStaleIds" >> beam.Create([]))
    # A stale id that this run writes again is overwritten by its upsert; only the others are deleted.
    deletes = ({"stale": stale | "KeyStale" >> beam.Map(lambda i: (i, None)),
                "upserted": encoded_rows | "KeyUpserted" >> beam.Map(lambda r: (r.id, None))}
               | "StaleOrRewritten" >> beam.CoGroupByKey()
               | "OnlyStale" >> beam.FlatMap(lambda kv: [kv[0]] if kv[1]["stale"] and not kv[1]["upserted"] else []))
  written = (upserts, deletes) | "WriteToStore" >> WriteToStore(plan.config, plan.target)
  return {"store_upserted": written["upserted"], "store_deleted": written["deleted"]}


class StoreFinalizer(finalize_lib.Finalizer):
  """Commits the store with the run: swaps a rebuild in (then drops the collection it replaced) and records the
  manifest's `vector_store` section."""

  name = "vector_store"

  def __init__(self, plan: StorePlan):
    self._plan = plan

  def commit(self, run: finalize_lib.CommittedRun) -> dict:
    plan = self._plan
    store = plan.config.make()
    try:
      replaced = None
      if plan.mode == MODE_REBUILD:
        replaced = store.swap_in(plan.target)
        if replaced is not None and replaced != plan.target:
          store.drop(replaced)
      state = store.check()
      points = store.count()
    finally:
      store.close()
    rows = int(run.counts.get("rows", 0))
    if points != rows:
      _LOG.warning("%s holds %d points, the output %d rows: the next run rebuilds it", plan.config.name, points, rows)
    return {SECTION: {"kind": plan.config.kind, "url": plan.config.url, "collection": plan.config.name,
                      "mode": plan.mode, "reason": plan.reason, "physical": state.physical, "replaced": replaced,
                      "points": points, "in_sync": points == rows}}


def summary_line(manifest: dict) -> Optional[str]:
  """One line on what the run did to the store, or None for a run without --vector-store."""
  section, c = manifest.get(SECTION), manifest.get("counts") or {}
  if not section:
    return None
  how = "synced" if section["mode"] == MODE_SYNC else f"rebuilt as {section['physical']} ({section['reason']})"
  return (f"bert-embed: {section['kind']} {section['collection']} {how}: {c.get('store_upserted', 0)} upserted, "
          f"{c.get('store_deleted', 0)} deleted, {section['points']} points")
