"""Tests for transforms/manifest_facts.py: per-bundle partial sums and the one combine that gathers the manifest."""
from __future__ import annotations

import collections
import heapq

import apache_beam as beam
import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that
from hypothesis import given, settings, strategies as st

from snapshot.store_verify import VerifyFacts
from stores.digest import digest
from transforms.manifest_facts import (COUNT, EXAMPLES, FIELD, FILE, PARTIAL, TALLY, GatherFacts, SumPerBundle,
                                    field_fact, file_fact)

_NAMES = st.sampled_from(["read", "written", "tokens"])
_COUNT_FACTS = st.tuples(st.just(COUNT), _NAMES, st.integers(0, 10**6))
_TALLY_FACTS = st.tuples(st.just(TALLY), st.sampled_from(["precision_used", "langs"]),
                         st.dictionaries(st.sampled_from(["fp32", "bf16", "x"]), st.integers(1, 1000), min_size=1))
_FILE_FACTS = st.builds(file_fact, st.text(min_size=1, max_size=8))


def _brute_force(facts: list, fields: dict) -> dict:
  counts, tallies = collections.Counter(), {}
  for kind, name, value in facts:
    if kind == COUNT:
      counts[name] += value
    elif kind == TALLY:
      tallies.setdefault(name, collections.Counter()).update(value)
  return {"counts": dict(counts), "tallies": {k: dict(v) for k, v in tallies.items()}, "fields": fields,
          "files": sorted(value for kind, _, value in facts if kind == FILE)}


@settings(max_examples=60, deadline=None)
@given(facts=st.lists(st.one_of(_COUNT_FACTS, _TALLY_FACTS, _FILE_FACTS), max_size=40),
       fields=st.dictionaries(st.sampled_from(["drift", "incremental"]), st.one_of(st.none(), st.integers())),
       cuts=st.lists(st.integers(0, 45), max_size=6), seed=st.randoms(use_true_random=False))
def test_gathered_in_any_partition_equals_the_plain_sums(facts, fields, cuts, seed):
  everything = facts + [field_fact(value, name) for name, value in fields.items()]
  seed.shuffle(everything)
  combine = GatherFacts()
  bounds = sorted({0, len(everything), *(c for c in cuts if c < len(everything))})
  accumulators = []
  for lo, hi in zip(bounds, bounds[1:]):
    acc = combine.create_accumulator()
    for fact in everything[lo:hi]:
      acc = combine.add_input(acc, fact)
    accumulators.append(acc)
  # merged in two levels, as a runner may do
  merged = combine.merge_accumulators([combine.merge_accumulators(accumulators[:2]),
                                       combine.merge_accumulators(accumulators[2:])])
  assert combine.extract_output(merged) == _brute_force(facts, fields)


def test_a_field_with_two_values_is_an_error_also_across_accumulators():
  combine = GatherFacts()
  acc = combine.add_input(combine.create_accumulator(), field_fact(1, "drift"))
  with pytest.raises(ValueError, match="'drift' got more than one value"):
    combine.add_input(acc, field_fact(2, "drift"))
  other = combine.add_input(combine.create_accumulator(), field_fact(3, "drift"))
  with pytest.raises(ValueError, match="more than one value"):
    combine.merge_accumulators([acc, other])
  with pytest.raises(ValueError, match="not a manifest fact"):
    combine.add_input(combine.create_accumulator(), ("cnt", "read", 1))


def test_partial_sums_per_bundle_add_up_with_fewer_elements_than_the_input():
  p = TestPipeline()
  numbers = p | "Numbers" >> beam.Create(list(range(500)))
  words = p | "Words" >> beam.Create(["fp32"] * 300 + ["bf16"] * 7)
  sums = numbers | "Sum" >> beam.ParDo(SumPerBundle("n"))
  tallies = words | "Tally" >> beam.ParDo(SumPerBundle("p", tally=True))

  def check_sums(facts):
    assert facts and all(kind == COUNT and name == "n" for kind, name, _ in facts)
    assert sum(value for _, _, value in facts) == sum(range(500))
    assert len(facts) < 500  # one per bundle, not one per element

  def check_tallies(facts):
    total = collections.Counter()
    for kind, name, value in facts:
      assert (kind, name) == (TALLY, "p")
      total.update(value)
    assert total == {"fp32": 300, "bf16": 7} and len(facts) < 307

  assert_that(sums, check_sums, label="Sums")
  assert_that(tallies, check_tallies, label="Tallies")
  p.run().wait_until_finish()


@settings(max_examples=40, deadline=None)
@given(pairs=st.lists(st.tuples(st.sampled_from(["parse: x", "read: y", "encode: z"]), st.text(min_size=1, max_size=4)),
                      min_size=1, max_size=30),
       cut=st.integers(0, 30))
def test_examples_keep_every_occurrence_and_the_smallest_example(pairs, cut):
  """TallyWithExample's per-bundle facts, gathered from any split: {key: [occurrences, smallest example]}."""
  combine = GatherFacts()
  accumulators = []
  for part in (pairs[:cut], pairs[cut:]):
    seen = {}
    for key, example in part:
      n, smallest = seen.get(key, (0, example))
      seen[key] = [n + 1, min(smallest, example)]
    accumulators.append(combine.add_input(combine.create_accumulator(), (EXAMPLES, "reasons", seen)) if seen
                        else combine.create_accumulator())
  got = combine.extract_output(combine.merge_accumulators(accumulators))["examples"]["reasons"]
  expected = {key: [sum(1 for k, _ in pairs if k == key), min(e for k, e in pairs if k == key)]
              for key in {k for k, _ in pairs}}
  assert got == expected


@settings(max_examples=40, deadline=None)
@given(ids=st.lists(st.text(max_size=6), unique=True, max_size=30), size=st.integers(0, 5),
       cuts=st.lists(st.integers(0, 30), max_size=5), seed=st.randoms(use_true_random=False))
def test_partial_values_merge_into_the_whole_in_any_partition(ids, size, cuts, seed):
  """PARTIAL facts (e.g. the store verify's, one per bundle) gathered from any split and merged in two levels: the
  digest of all ids and the `size` smallest random keys of all."""
  keyed = [(k / 1e6, i) for k, i in zip(seed.sample(range(10**6), len(ids)), ids)]  # distinct, as random floats are
  bounds = sorted({0, len(keyed), *(c for c in cuts if c < len(keyed))})
  combine = GatherFacts()
  accumulators = []
  for lo, hi in zip(bounds, bounds[1:]):
    part = keyed[lo:hi]
    value = VerifyFacts(digest((i, "sha") for _, i in part), size, tuple(heapq.nsmallest(size, part)))
    accumulators.append(combine.add_input(combine.create_accumulator(), (PARTIAL, "_verify", value)))
  merged = combine.merge_accumulators([combine.merge_accumulators(accumulators[:2]),
                                       combine.merge_accumulators(accumulators[2:])])
  got = combine.extract_output(merged)["fields"].get("_verify")
  if not keyed:
    assert got is None
    return
  assert got.digest == digest((i, "sha") for i in ids) and got.size == size
  assert sorted(got.sample) == heapq.nsmallest(size, keyed)
