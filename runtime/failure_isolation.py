"""Isolating failures inside a batch: one poisonous record must not fail its neighbours, and a fault that fails
every record is not mistaken for bad records.

A batch whose call raises is bisected until each failing element stands alone. An element that fails alone is a
bad record (the caller dead-letters it) unless the same error keeps coming back: when `systemic_after` elements in a
row fail alone with the same exception type and message, with no successful call in between, the error is raised
instead. Then the runner retries the bundle (Dataflow retries a work item a few times, then fails the job) rather
than dead-lettering the whole corpus for a driver fault, an out-of-memory or a code bug.
"""
from __future__ import annotations

from typing import Callable, Hashable, Iterator, Optional, Sequence, TypeVar

T = TypeVar("T")
R = TypeVar("R")

# Distinct elements in a row that must fail alone with one identical error before it counts as systemic. A fault
# of the worker or the code fails every record alike, so it shows after this many records, at about two calls of
# the batch function each. Bad records seldom fail with byte-identical messages several times in a row with no good
# record between them, and repeats of one bad input count once (the caller's `key`): with 4, up to three
# neighbouring bad records that fail alike are still dead letters, and a fault costs a few calls. 1 or 2 would fail
# the job for two bad records side by side; larger values only make every systemic fault cost more calls.
SYSTEMIC_AFTER = 4


def signature(error: BaseException) -> tuple[str, str]:
  """What makes two errors "the same": the exception type and its message."""
  return type(error).__qualname__, str(error).strip()


class FailureIsolation:
  """Runs batches through a function, isolating failures; keeps the streak of like failures across batches.

  One instance per caller (e.g. per DoFn or model handler), used from one thread at a time. A batch of one or two
  records cannot show a systemic fault on its own, so the streak spans the caller's batches and is reset by any
  call that succeeds.

  Args:
    systemic_after: elements in a row failing alone with the same error that make it systemic.
    tries_alone: calls an element gets alone before it counts as failed (2: one retry, so a transient failure
      does not dead-letter it).
    on_retry: called once for every call after a batch's first (bisection halves and retries alone).
    key: what makes two elements the same input (hashable); repeats of one input extend a streak only once.
  """

  def __init__(self, systemic_after: int = SYSTEMIC_AFTER, tries_alone: int = 1,
               on_retry: Optional[Callable[[], None]] = None, key: Optional[Callable[[T], Hashable]] = None):
    if systemic_after < 1 or tries_alone < 1:
      raise ValueError(f"systemic_after and tries_alone must be >= 1, got {systemic_after}, {tries_alone}")
    self.systemic_after = systemic_after
    self.tries_alone = tries_alone
    self._on_retry = on_retry
    self._key = key
    self._streak: Optional[tuple[str, str]] = None  # the signature of the last element that failed alone
    self._streak_keys: set = set()  # the keys of the elements in the streak
    self._streak_length = 0

  def _reset(self) -> None:
    self._streak, self._streak_keys, self._streak_length = None, set(), 0

  def run(self, batch: Sequence[T], fn: Callable[[Sequence[T]], list[R]]
          ) -> Iterator[tuple[T, Optional[R], Optional[Exception]]]:
    """Yields (element, result, None) for elements that succeeded and (element, None, error) for those that fail
    even alone, in batch order. A batch with k bad elements costs O(k log n) extra calls.

    Raises:
      The error itself when it is systemic (see the class doc); elements already yielded stay yielded, so a
      caller that must not emit part of a batch collects the whole batch first.
    """
    yield from self._run(batch, fn, first=True)

  def _call(self, part: Sequence[T], fn: Callable[[Sequence[T]], list[R]], first: bool) -> list[R]:
    if not first and self._on_retry is not None:
      self._on_retry()
    return fn(part)

  def _succeeded(self, part: Sequence[T], results: list[R]) -> None:
    if len(results) != len(part):
      raise AssertionError(f"batch function returned {len(results)} results for {len(part)} elements")
    self._reset()

  def _run(self, batch: Sequence[T], fn: Callable[[Sequence[T]], list[R]], first: bool
           ) -> Iterator[tuple[T, Optional[R], Optional[Exception]]]:
    if not batch:
      return
    if len(batch) == 1:
      yield self._alone(batch[0], fn, first)
      return
    try:
      results = self._call(batch, fn, first)
    except Exception:  # pylint: disable=broad-except
      mid = len(batch) // 2
      yield from self._run(batch[:mid], fn, first=False)
      yield from self._run(batch[mid:], fn, first=False)
      return
    self._succeeded(batch, results)
    yield from ((element, result, None) for element, result in zip(batch, results))

  def _alone(self, element: T, fn: Callable[[Sequence[T]], list[R]], first: bool
             ) -> tuple[T, Optional[R], Optional[Exception]]:
    error: Optional[Exception] = None
    for attempt in range(self.tries_alone):
      try:
        results = self._call([element], fn, first and attempt == 0)
      except Exception as e:  # pylint: disable=broad-except
        error = e
        continue
      self._succeeded([element], results)
      return element, results[0], None
    assert error is not None
    found = signature(error)
    if found != self._streak:
      self._reset()
      self._streak = found
    key = self._key(element) if self._key is not None else object()
    if key not in self._streak_keys:
      self._streak_keys.add(key)
      self._streak_length += 1
    if self._streak_length >= self.systemic_after:
      count = self._streak_length
      self._reset()
      error.add_note(f"bert-embed: {count} different records in a row failed alone with this same error, so it is "
                     "raised as a fault of the worker or the code (the runner retries the bundle, then fails the "
                     "job) rather than dead-lettered")
      raise error
    return element, None, error


def run_isolating_failures(batch: Sequence[T], fn: Callable[[Sequence[T]], list[R]],
                           isolation: Optional[FailureIsolation] = None
                           ) -> Iterator[tuple[T, Optional[R], Optional[Exception]]]:
  """`isolation.run(batch, fn)`, with a fresh FailureIsolation (whose streak spans this batch only) by default."""
  return (isolation or FailureIsolation()).run(batch, fn)


def describe(error: Exception) -> str:
  """A one-line reason for a dead-letter record."""
  text = str(error).strip().splitlines()
  first = text[0] if text else ""
  return f"{type(error).__name__}: {first}"[:500]
