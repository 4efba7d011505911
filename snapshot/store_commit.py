"""The commit step's part for --vector-store: apply the store's staged changes, verify NAME, record it.

StoreFinalizer runs from snapshot/commit.py (step 2) after the run's checks passed and before the files are moved in:

1. applies what the job staged (snapshot/store_plan.py): a sync's staging merged into NAME, or NAME moved to the
   rebuild, with the run's snapshot id recorded in the store. The store first checks that NAME still records what
   the run saw at launch: when another run committed since, nothing is applied and the run fails in one line;
2. drops the table/collection a rebuild replaced (a failure is a warning naming what was left, not a failed run:
   the data is committed);
3. verifies NAME against the output and repairs what it can (snapshot/store_verify.py);
4. returns the manifest's `vector_store` section and the count `store_repaired`.

Once 1 committed, NAME holds the run's snapshot: a verify that cannot be made (3) is a warning, the files commit
and the manifest's `in_sync: false` makes the next run rebuild. A failure in 1 fails the run; the message says what
NAME holds: PostgreSQL applies in one transaction (NAME is unchanged); Qdrant may hold part of the changes, recorded
as an unfinished apply that the next run rebuilds.
"""
from __future__ import annotations

import logging

from snapshot import store_verify
from snapshot.commit import CommittedRun, Finalizer
from snapshot import store_plan as vector_store_lib
from snapshot.store_plan import MODE_REBUILD, SECTION, StorePlan
from stores.base import DIFFERS, ChangedSinceLaunch, Marker, StoreError

_LOG = logging.getLogger(__name__)


class StoreFinalizer(Finalizer):
  """Commits the store with the run (see the module docstring)."""

  name = "vector_store"

  def __init__(self, plan: StorePlan):
    self._plan = plan

  def kept_note(self) -> str:
    return (f"the vector store's {self._plan.config.name} was not changed (this run's {self._plan.target} is "
            f"dropped by the next run)")

  def _apply_failed(self, error: Exception, prefix: str) -> StoreError:
    name = self._plan.config.name
    if self._plan.config.kind == "postgres" or self._plan.mode == MODE_REBUILD:
      held = f"{name} was not changed"
    else:
      held = f"{name} may hold part of this run's changes, recorded as an unfinished apply that the next run rebuilds"
    return StoreError(f"applying this run to {name} failed, so nothing was replaced at {prefix} and {held}: {error}")

  def commit(self, run: CommittedRun) -> dict:
    plan = self._plan
    name = plan.config.name
    store = plan.config.make()
    warnings = []
    try:
      try:
        if plan.mode == MODE_REBUILD:
          replaced = store.commit_rebuild(plan.target, plan.tag, plan.expected)
        else:
          replaced = None
          store.apply_staged(plan.target, plan.tag, plan.expected)
      except ChangedSinceLaunch as e:
        raise StoreError(f"{e}; this run applied nothing to {name} and nothing was replaced at "
                         f"{run.output_prefix}") from None
      except StoreError as e:
        raise self._apply_failed(e, run.output_prefix) from None
      if replaced is not None and replaced != plan.target:
        try:
          store.drop(replaced)
        except StoreError as e:
          warnings.append(f"the replaced {replaced} could not be dropped ({e}); the next run drops it")
          _LOG.warning("%s", warnings[-1])
      verify, state = self._verify(store, run, warnings)
    finally:
      store.close()
    rows = int(run.counts.get("rows", 0))
    in_sync = state is not None and state.count == rows and not (verify and verify.get("left_for_next_run"))
    return {SECTION: {"kind": plan.config.kind, "url": plan.config.url, "collection": name, "mode": plan.mode,
                      "reason": plan.reason, "snapshot": plan.tag, "physical": state.physical if state else None,
                      "replaced": replaced, "abandoned_dropped": run.private.get(vector_store_lib.DROPPED_FIELD) or [],
                      "points": state.count if state else None, "in_sync": in_sync, "verify": verify,
                      "warnings": warnings},
            "counts": {"store_repaired": (verify or {}).get("repaired", 0)}}

  def _verify(self, store, run: CommittedRun, warnings: list):
    """(the manifest's `verify`, NAME's state) once the apply committed. From then on NAME holds this run's
    snapshot, so a comparison that cannot be made (the store gone, an output file unreadable) is a warning and the
    run goes on to commit its files: failing it would leave LATEST on the previous output while NAME holds this
    one. Its manifest then says `in_sync: false`, on which the next run rebuilds (snapshot/store_plan.py)."""
    plan, name = self._plan, self._plan.config.name
    try:
      verify = None  # without the job's facts (a caller that gives none) nothing is compared, nothing deleted
      if vector_store_lib.VERIFY_FIELD in run.private:  # None: the job had no rows
        facts = run.private[vector_store_lib.VERIFY_FIELD] or store_verify.VerifyFacts()
        verify = store_verify.verify_and_repair(store, facts, lambda: store_verify.output_pairs(run.files))
      if verify and verify["left_for_next_run"]:
        store.set_marker(Marker(plan.tag, DIFFERS))
        warnings.append(f"{name} differs from the output in {verify['left_for_next_run']} points this run could "
                        f"not rewrite (e.g. {verify['examples'][:1]}); the next run rebuilds it")
        _LOG.warning("%s", warnings[-1])
      return verify, store.check()
    except (StoreError, OSError, ValueError) as e:
      error = " ".join(str(e).split())
      warnings.append(f"{name} holds this run's snapshot, but verifying it failed ({error}); the next run "
                      f"rebuilds it")
      _LOG.warning("%s", warnings[-1])
      try:
        store.set_marker(Marker(plan.tag, DIFFERS))
      except StoreError:
        pass  # the manifest's in_sync false makes the next run rebuild too
      return {"error": error}, None

