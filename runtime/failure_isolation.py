"""Isolating failures inside a batch: one poisonous record must not fail its neighbours."""
from __future__ import annotations

from typing import Callable, Iterator, Sequence, TypeVar

T = TypeVar("T")
R = TypeVar("R")


def run_isolating_failures(batch: Sequence[T], fn: Callable[[Sequence[T]], list[R]]
                           ) -> Iterator[tuple[T, R | None, Exception | None]]:
  """Runs `fn` on the whole batch; when it raises, bisects until each failing element stands alone.

  Yields (element, result, None) for elements that succeeded and (element, None, error) for those that fail even
  alone. A batch with k bad elements costs O(k log n) extra calls.
  """
  try:
    results = fn(batch)
  except Exception as e:  # pylint: disable=broad-except
    if len(batch) == 1:
      yield batch[0], None, e
      return
    mid = len(batch) // 2
    yield from run_isolating_failures(batch[:mid], fn)
    yield from run_isolating_failures(batch[mid:], fn)
    return
  if len(results) != len(batch):
    raise AssertionError(f"batch function returned {len(results)} results for {len(batch)} elements")
  for element, result in zip(batch, results):
    yield element, result, None


def describe(error: Exception) -> str:
  """A one-line reason for a dead-letter record."""
  text = str(error).strip().splitlines()
  first = text[0] if text else ""
  return f"{type(error).__name__}: {first}"[:500]
