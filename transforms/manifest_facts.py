"""The finalize step's inputs gathered by one combine: counts, tallies, single-value fields and written files.

Every input becomes a "fact" `(kind, name, value)`; one Flatten joins them and one CombineGlobally(GatherFacts())
folds them into {"counts", "tallies", "fields", "files"}. Counts and tallies are first summed per bundle where they
are produced (SumPerBundle emits one partial sum per bundle, fused into the producing stage; the pipeline's own
counting steps, transforms/progress_counts.py CountPerBundle, emit several counts' sums from one step), so the
Flatten holds a few elements per bundle, not one per record.

One combine rather than one per count: each CombineGlobally adds ~6 steps and a stage, which the launcher
serialises and the DirectRunner sets up and runs; with fifteen counts they were half of a one-line job's graph.
Only for the global window (a batch job): the partial sums are emitted into it.
"""
from __future__ import annotations

from typing import Iterable

import apache_beam as beam
from apache_beam.transforms.window import GlobalWindows

COUNT, TALLY, FIELD, FILE, EXAMPLES, PARTIAL = "count", "tally", "field", "file", "examples", "partial"


class SumPerBundle(beam.DoFn):
  """Ints -> one (COUNT, name, sum) per bundle; with tally=True, any hashable elements -> one
  (TALLY, name, {element: occurrences}) per bundle. A bundle that adds nothing (no elements, or a sum of 0) emits
  nothing: a name without facts reads as 0."""

  def __init__(self, name: str, tally: bool = False):
    super().__init__()
    self._name = name
    self._tally = tally
    self._sum = 0
    self._occurrences: dict = {}

  def start_bundle(self):
    self._sum, self._occurrences = 0, {}

  def process(self, element):
    if self._tally:
      self._occurrences[element] = self._occurrences.get(element, 0) + 1
    else:
      self._sum += int(element)
    return ()

  def finish_bundle(self):
    if self._occurrences:
      yield GlobalWindows.windowed_value((TALLY, self._name, dict(self._occurrences)))
    elif self._sum:
      yield GlobalWindows.windowed_value((COUNT, self._name, self._sum))


class TallyWithExample(beam.DoFn):
  """Elements -> one (EXAMPLES, name, {key: [occurrences, smallest example]}) per bundle: how often each key occurs
  and one example of it (e.g. dead-letter reasons and a record id), at the cost of a tally. `key_and_example`:
  element -> (key, example); None: the elements are such pairs."""

  def __init__(self, name: str, key_and_example=None):
    super().__init__()
    self._name = name
    self._key_and_example = key_and_example
    self._seen: dict = {}

  def start_bundle(self):
    self._seen = {}

  def process(self, element):
    key, example = element if self._key_and_example is None else self._key_and_example(element)
    seen = self._seen.get(key)
    if seen is None:
      self._seen[key] = [1, example]
    else:
      seen[0] += 1
      seen[1] = min(seen[1], example)
    return ()

  def finish_bundle(self):
    if self._seen:
      yield GlobalWindows.windowed_value((EXAMPLES, self._name, dict(self._seen)))


def field_fact(value, name: str) -> tuple:
  return FIELD, name, value


def partial_fact(value, name: str) -> tuple:
  return PARTIAL, name, value


def file_fact(path: str) -> tuple:
  return FILE, None, path


class GatherFacts(beam.CombineFn):
  """Facts -> {"counts": {name: sum}, "tallies": {name: {key: sum}}, "fields": {name: value}, "files": sorted}, and
  "examples": {name: {key: [sum, smallest example]}} when there were EXAMPLES facts.

  A name that got no fact is absent. Two values for one field are an error (a field holds at most one value), but
  PARTIAL facts of a field are parts of its value (e.g. one per bundle), merged with the value's own `merged`
  method (associative, in any order): the field is their merge.
  """

  def create_accumulator(self) -> dict:
    return {"counts": {}, "tallies": {}, "fields": {}, "files": []}

  def add_input(self, accumulator: dict, fact: tuple) -> dict:
    kind, name, value = fact
    if kind == COUNT:
      accumulator["counts"][name] = accumulator["counts"].get(name, 0) + int(value)
    elif kind == TALLY:
      tally = accumulator["tallies"].setdefault(name, {})
      for key, n in value.items():
        tally[key] = tally.get(key, 0) + int(n)
    elif kind == FIELD:
      if name in accumulator["fields"]:
        raise ValueError(f"the manifest field {name!r} got more than one value")
      accumulator["fields"][name] = value
    elif kind == FILE:
      accumulator["files"].append(value)
    elif kind == PARTIAL:
      partials = accumulator.setdefault("partials", {})
      partials[name] = value if name not in partials else partials[name].merged(value)
    elif kind == EXAMPLES:
      seen = accumulator.setdefault("examples", {}).setdefault(name, {})
      for key, (n, example) in value.items():
        if key in seen:
          seen[key] = [seen[key][0] + int(n), min(seen[key][1], example)]
        else:
          seen[key] = [int(n), example]
    else:
      raise ValueError(f"not a manifest fact: {fact!r}")
    return accumulator

  def merge_accumulators(self, accumulators: Iterable[dict]) -> dict:
    merged = self.create_accumulator()
    for acc in accumulators:
      for fact in _facts_of(acc):
        self.add_input(merged, fact)
    return merged

  def extract_output(self, accumulator: dict) -> dict:
    gathered = {**accumulator, "files": sorted(accumulator["files"])}
    partials = gathered.pop("partials", {})
    if set(partials) & set(gathered["fields"]):
      raise ValueError(f"the manifest fields {sorted(set(partials) & set(gathered['fields']))} got whole and partial "
                       f"values")
    gathered["fields"] = {**gathered["fields"], **partials}
    return gathered


def _facts_of(accumulator: dict) -> Iterable[tuple]:
  for name, total in accumulator["counts"].items():
    yield COUNT, name, total
  for name, tally in accumulator["tallies"].items():
    yield TALLY, name, tally
  for name, value in accumulator["fields"].items():
    yield FIELD, name, value
  for path in accumulator["files"]:
    yield FILE, None, path
  for name, seen in accumulator.get("examples", {}).items():
    yield EXAMPLES, name, seen
  for name, value in accumulator.get("partials", {}).items():
    yield PARTIAL, name, value

