"""Records that share an id: keep the first (smallest source file, then position), dead-letter or fail on the rest.

The records are grouped by id with a GroupByKey, so the check scales with the
runner's shuffle: no worker holds more than one id's records at a time.
"""
from __future__ import annotations

from typing import Iterable, NamedTuple

import apache_beam as beam

from runtime.defaults import DEFAULT_DUPLICATE_ID_POLICY as DEFAULT_POLICY
from runtime.defaults import DUPLICATE_ID_POLICIES as POLICIES
from transforms.names import DEAD_LETTER, NAMESPACE
from formats.records import DeadLetter, TextRecord



class DuplicateIdError(RuntimeError):
  """Two records share an id and the policy is "fail"."""


class DuplicatesResult(NamedTuple):
  records: beam.PCollection  # TextRecord, ids unique unless the policy is "keep"
  dead_letters: beam.PCollection  # DeadLetter(stage="parse") for each dropped duplicate


def order_key(record: TextRecord) -> tuple[str, int]:
  """Records of one id are ranked by (source file, position); the smallest is kept."""
  return record.source, record.position


def where(record: TextRecord) -> str:
  return f"{record.source}:{record.position}"


class _ResolveDuplicatesFn(beam.DoFn):
  """(id, records) -> the kept record; the others as dead letters, or DuplicateIdError."""

  def __init__(self, policy: str):
    super().__init__()
    self._fail = policy == "fail"
    self._duplicates = beam.metrics.Metrics.counter(NAMESPACE, "records_dead_lettered_duplicate_id")

  def process(self, keyed: tuple[str, Iterable[TextRecord]]) -> Iterable:
    record_id, records = keyed
    kept = None
    for record in records:  # one pass for the smallest; the group's iterable can be iterated again
      if kept is None or order_key(record) < order_key(kept):
        kept = record
    yield kept
    kept_key, passed_kept = order_key(kept), False
    for record in records:  # compared by key: a re-iterated group may hold fresh copies, not the same objects
      if not passed_kept and order_key(record) == kept_key:
        passed_kept = True
        continue
      if self._fail:
        raise DuplicateIdError(f"duplicate id {record_id!r}: records at {where(kept)} and {where(record)} "
                               "(--on-duplicate-id fail)")
      self._duplicates.inc()
      yield beam.pvalue.TaggedOutput(DEAD_LETTER, DeadLetter.make(
          record_id, record.source, "parse", f"duplicate id; kept the record at {where(kept)}", record.text))


class ResolveDuplicateIds(beam.PTransform):
  """PCollection[TextRecord] -> DuplicatesResult, by policy ("dead-letter", "fail" or "keep").

  Args:
    policy: one of POLICIES.
    ids_unique: the ids are unique by construction (e.g. `<file>:<line>` of text input); skips the shuffle.
  """

  def __init__(self, policy: str = DEFAULT_POLICY, *, ids_unique: bool = False):
    super().__init__()
    if policy not in POLICIES:
      raise ValueError(f"duplicate id policy must be one of {POLICIES}, got {policy!r}")
    self._policy = policy
    self._ids_unique = ids_unique

  def expand(self, records) -> DuplicatesResult:
    if self._policy == "keep" or self._ids_unique:
      # An empty PCollection fused with the records' stage (a Create would add a stage of its own).
      return DuplicatesResult(records, records | "NoDuplicates" >> beam.FlatMap(lambda _: ()))
    resolved = (
        records
        | "KeyById" >> beam.WithKeys(lambda r: r.id)
        | "GroupById" >> beam.GroupByKey()
        | "KeepFirst" >> beam.ParDo(_ResolveDuplicatesFn(self._policy)).with_outputs(DEAD_LETTER, main="records"))
    return DuplicatesResult(resolved.records, resolved[DEAD_LETTER])
