"""Cosine similarity (runtime/similarity.py) against a plain-Python computation of the definition."""
from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from runtime.similarity import cosine

_VALUES = st.floats(min_value=-1e3, max_value=1e3, allow_nan=False).filter(lambda x: x == 0 or abs(x) > 1e-6)


def _reference(a, b) -> float:
  norms = math.sqrt(math.fsum(x * x for x in a)) * math.sqrt(math.fsum(y * y for y in b))
  return math.fsum(x * y for x, y in zip(a, b)) / norms if norms > 0 else 0.0


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 4).flatmap(lambda h: st.tuples(st.lists(st.lists(_VALUES, min_size=h, max_size=h),
                                                                   min_size=1, max_size=5),
                                                          st.lists(_VALUES, min_size=h, max_size=h))))
def test_rows_and_one_vector_against_each_row_match_the_definition(case):
  rows, vector = case
  expected = [_reference(row, vector) for row in rows]
  np.testing.assert_allclose(cosine(np.asarray(rows, np.float32), np.asarray(vector)), expected, atol=1e-6)
  np.testing.assert_allclose(cosine(np.asarray(rows), np.asarray([vector] * len(rows))), expected, atol=1e-6)


def test_a_zero_vector_has_cosine_zero_and_parallel_ones_one():
  assert cosine(np.zeros(3), np.ones(3)) == 0.0
  assert cosine(np.array([1.0, 2.0]), np.array([2.0, 4.0])) == pytest.approx(1.0, abs=1e-12)
  assert cosine(np.array([1.0, 0.0]), np.array([-3.0, 0.0])) == pytest.approx(-1.0, abs=1e-12)


def test_nearest_neighbours_match_a_brute_force_search():
  from cli.neighbours import nearest_neighbours  # pylint: disable=import-outside-toplevel
  rng = np.random.default_rng(3)
  vectors = rng.normal(size=(12, 5)).astype(np.float32)
  vectors[4] = 0.0  # a zero vector is nobody's neighbour unless all others are opposite
  queries = [0, 4, 7, 11]
  expected = []
  for q in queries:
    sims = {j: _reference(vectors[q].tolist(), vectors[j].tolist()) for j in range(len(vectors)) if j != q}
    best = max(sims, key=sims.get)
    expected.append((best, sims[best]))
  found = nearest_neighbours(vectors, queries)
  assert [j for j, _ in found] == [j for j, _ in expected]
  assert [s for _, s in found] == pytest.approx([s for _, s in expected], abs=1e-6)
