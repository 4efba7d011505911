"""Isolating failures inside a batch: one poisonous record must not fail its neighbours, and a fault that fails
every record is not mistaken for bad records.

A batch whose call raises is bisected until each failing element stands alone. An element that fails alone is a
bad record (the caller dead-letters it), unless the function itself is broken. Whether it is is asked of the
function, not read from the errors' messages (a fault's message often varies: a counter, a tensor shape, an
address): when `systemic_after` different elements in a row have failed alone, with no successful call in between,
the function is called on probe elements that are known to be good (the caller's probe texts, else the last
element that succeeded), one at a time. If every probe fails too, the fault is systemic and SystemicError is
raised: the runner retries the bundle (Dataflow retries a work item a few times, then fails the job) instead of
dead-lettering the corpus for a lost device, an out-of-memory or a code bug. If a probe succeeds, the elements
are bad records and stay dead letters; the next probe comes after twice as many lone failures in a row.
"""
from __future__ import annotations

import re
from typing import Callable, Hashable, Iterator, Optional, Sequence, TypeVar

T = TypeVar("T")
R = TypeVar("R")

# Different elements in a row that must fail alone before the function is probed. A fault of the worker or the code
# shows after this many records, at about two calls of the batch function each, plus the probe calls. 1 or 2 would
# probe for every pair of bad records side by side; larger values only make every systemic fault cost more calls.
SYSTEMIC_AFTER = 4
REASON_CHARS = 300  # a dead letter's reason keeps this much of the error's own message


class SystemicError(RuntimeError):
  """The batch function fails on known-good probe elements too: a fault of the model, the worker or the code, not
  of the records. The message is one line; the error that failed the last record is its __cause__."""


class FailureIsolation:
  """Runs batches through a function, isolating failures; keeps the streak of lone failures across batches.

  One instance per caller (e.g. per DoFn or model handler), used from one thread at a time. A batch of one or two
  records cannot show a systemic fault on its own, so the streak spans the caller's batches and is reset by any
  call that succeeds.

  Args:
    systemic_after: different elements in a row failing alone after which the function is probed.
    tries_alone: calls an element gets alone before it counts as failed (2: one retry, so a transient failure
      does not dead-letter it).
    on_retry: called once for every call after a batch's first (bisection halves, retries alone, probes).
    key: what makes two elements the same input (hashable); repeats of one input extend a streak only once.
    probe: returns known-good elements (called once, at the first probe); None: the last element that succeeded.
      With neither (nothing has succeeded yet), lone failures in a row are taken as systemic.
    name: what the function is, for SystemicError's message (e.g. "the encoder").
  """

  def __init__(self, systemic_after: int = SYSTEMIC_AFTER, tries_alone: int = 1,
               on_retry: Optional[Callable[[], None]] = None, key: Optional[Callable[[T], Hashable]] = None,
               probe: Optional[Callable[[], Sequence[T]]] = None, name: str = "the batch function"):
    if systemic_after < 1 or tries_alone < 1:
      raise ValueError(f"systemic_after and tries_alone must be >= 1, got {systemic_after}, {tries_alone}")
    self.systemic_after = systemic_after
    self.tries_alone = tries_alone
    self._on_retry = on_retry
    self._key = key
    self._probe = probe
    self._probe_elements: Optional[Sequence[T]] = None
    self._name = name
    self._last_good: list[T] = []  # the last element that succeeded (at most one)
    self._streak_keys: set = set()  # the keys of the elements that failed alone since the last success
    self._next_probe = systemic_after

  def _reset(self) -> None:
    self._streak_keys, self._next_probe = set(), self.systemic_after

  def run(self, batch: Sequence[T], fn: Callable[[Sequence[T]], list[R]]
          ) -> Iterator[tuple[T, Optional[R], Optional[Exception]]]:
    """Yields (element, result, None) for elements that succeeded and (element, None, error) for those that fail
    even alone, in batch order. A batch with k bad elements costs O(k log n) extra calls.

    Raises:
      SystemicError: the function fails on the probe elements too (see the class doc); elements already yielded
        stay yielded, so a caller that must not emit part of a batch collects the whole batch first.
    """
    yield from self._run(batch, fn, first=True)

  def _call(self, part: Sequence[T], fn: Callable[[Sequence[T]], list[R]], first: bool) -> list[R]:
    if not first and self._on_retry is not None:
      self._on_retry()
    return fn(part)

  def _succeeded(self, part: Sequence[T], results: list[R]) -> None:
    if len(results) != len(part):
      raise AssertionError(f"batch function returned {len(results)} results for {len(part)} elements")
    self._last_good = [part[0]]
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
    self._streak_keys.add(self._key(element) if self._key is not None else len(self._streak_keys))
    if len(self._streak_keys) >= self._next_probe:
      self._check_function(fn, error)
      self._next_probe *= 2  # bad records side by side: probe again after twice as many
    return element, None, error

  def _check_function(self, fn: Callable[[Sequence[T]], list[R]], error: Exception) -> None:
    """Calls `fn` on each probe element alone until one succeeds; raises SystemicError when none does."""
    count = len(self._streak_keys)
    if self._probe is not None and self._probe_elements is None:
      self._probe_elements = list(self._probe())
    probes = self._probe_elements if self._probe is not None else self._last_good
    failure: Exception = error
    for element in probes:
      try:
        self._call([element], fn, first=False)
      except Exception as e:  # pylint: disable=broad-except
        failure = e
        continue
      return
    what = (f"fails on {'its probe texts' if self._probe is not None else 'a record it succeeded on before'} too"
            if probes else "has not succeeded on any record yet")
    self._reset()
    raise SystemicError(f"{self._name} {what} after {count} different records in a row failed alone, so the fault "
                        f"is the model's, the worker's or the code's, not the records': {describe(failure)}"
                        ) from error


def run_isolating_failures(batch: Sequence[T], fn: Callable[[Sequence[T]], list[R]],
                           isolation: Optional[FailureIsolation] = None
                           ) -> Iterator[tuple[T, Optional[R], Optional[Exception]]]:
  """`isolation.run(batch, fn)`, with a fresh FailureIsolation (whose streak spans this batch only) by default."""
  return (isolation or FailureIsolation()).run(batch, fn)


# TensorFlow wraps a failing op's own message in the graph's call stack: "Graph execution error:", "Detected at node
# X defined at (most recent call last):" with indented File lines (or "<stack traces unavailable>"), "Node: 'X'", then
# the message, then "\t [[{{node X}}]] [Op:__inference_f_22]"; several root errors come as "(0) INVALID_ARGUMENT: ...".
_TF_HEADER = re.compile(r"^(Graph execution error:|<stack traces unavailable>|Node: '.*'|\[\[\{\{node .*|"
                        r"\d+ root error\(s\) found\.?)$")
_TF_STACK = re.compile(r"^Detected at node .* defined at \(most recent call last\):$")
_TF_NODE = re.compile(r"\[\[\{\{node ([^}]+)\}\}\]\]")
_TF_NOISE = re.compile(r"\{\{function_node [^}]*\}\}|\[Op:[^\]]*\]( name: ?$)?|^\(\d+\) [A-Z_]+: ")


def _own_message(text: str) -> str:
  """The first line of an error's text that is not TensorFlow's wrapping, without its noise; "" when none is."""
  in_stack = False
  for line in text.splitlines():
    if in_stack and (not line.strip() or line[0].isspace()):
      continue
    in_stack = bool(_TF_STACK.match(line.strip()))
    if in_stack or _TF_HEADER.match(line.strip()):
      continue
    message = " ".join(_TF_NOISE.sub(" ", line.strip()).split())
    if message:
      return message
  return ""


def describe(error: BaseException, limit: int = REASON_CHARS) -> str:
  """A one-line reason for a dead-letter record: the error's type and the first line of its own message.

  For a TensorFlow error that is the failing op's message (e.g. an assertion's text), not "Graph execution error:",
  followed by the node's name; digits are kept; the message is cut to `limit` characters.
  """
  text = str(error).strip()
  message = _own_message(text) or " ".join(text.splitlines()[0].split()) if text else ""
  node = _TF_NODE.search(text)
  if node and node.group(1) not in message:
    message += f" (node {node.group(1)})"
  if len(message) > limit:
    message = message[:limit - 1] + "…"
  return f"{type(error).__name__}: {message}"
