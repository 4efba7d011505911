"""The workers' side of the progress lines (pipeline/progress.py): running totals and their side channel.

The pipeline's counting steps (pipeline/run.py: CountRecords, CountEncoded, CountWritten, ...) call `tally(kind, n)`.
When BERT_EMBED_PROGRESS_DIR names a directory (a local run: the launcher's Reporter made it), each process keeps
its running totals and rewrites `<dir>/<pid>.json` (atomically) at most every FLUSH_SECONDS; worker processes of
the DirectRunner's multi_processing mode inherit the variable. Every tally also increments a Beam counter in the
`bert_embed` namespace (COUNTER_NAMES), which is what carries the figures on Dataflow, where the variable is unset.
"""
from __future__ import annotations

import json
import os
import threading
import time
from typing import Callable, NamedTuple, Optional, Sequence

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.transforms.window import GlobalWindows

from transforms.manifest_facts import COUNT
from transforms.names import NAMESPACE

ENV = "BERT_EMBED_PROGRESS_DIR"
KINDS = ("read", "encoded", "written", "input_bytes")
EVENTS = ("encoder_ready",)
TIMES = ("encoder_ready", "first_encoded_at", "last_encoded_at")  # wall-clock seconds (time.time()), 0: not yet
FLUSH_SECONDS = 0.5
COUNTER_NAMES = {"read": "progress_records_read", "encoded": "progress_records_encoded",
                 "written": "progress_records_written", "input_bytes": "progress_input_bytes_read"}
_COUNTERS = {kind: Metrics.counter(NAMESPACE, name) for kind, name in COUNTER_NAMES.items()}


class _Totals:
  """This process's running totals for the run whose directory is in the environment."""

  def __init__(self):
    self.lock = threading.Lock()
    self.directory: Optional[str] = None
    self.counts = zero()
    self.flushed = 0.0

  def _current(self) -> Optional[str]:
    """The run's directory (None outside a local run); resets the totals when a new run started."""
    directory = os.environ.get(ENV)
    if directory and directory != self.directory:
      self.directory, self.counts, self.flushed = directory, zero(), 0.0
    return directory

  def add(self, kind: str, n: int) -> None:
    with self.lock:
      directory = self._current()
      if not directory:
        return
      self.counts[kind] += n
      now = time.time()
      if kind == "encoded":
        self.counts["first_encoded_at"] = self.counts["first_encoded_at"] or now
        self.counts["last_encoded_at"] = now
      self._maybe_write(directory, now)

  def mark(self, event: str) -> None:
    """Records the first time `event` (one of EVENTS) happened in this process."""
    with self.lock:
      directory = self._current()
      if directory and not self.counts[event]:
        self.counts[event] = time.time()
        self._maybe_write(directory, 0.0)

  def _maybe_write(self, directory: str, now: float) -> None:
    if not now or now - self.flushed >= FLUSH_SECONDS:
      self.flushed = now or time.time()
      self._write(directory, dict(self.counts))

  def flush(self) -> None:
    with self.lock:
      if self.directory and os.environ.get(ENV) == self.directory:
        self._write(self.directory, dict(self.counts))

  @staticmethod
  def _write(directory: str, counts: dict) -> None:
    path = os.path.join(directory, f"{os.getpid()}.json")
    tmp = f"{path}.{threading.get_ident()}.tmp"
    try:
      with open(tmp, "w", encoding="utf-8") as f:
        json.dump(counts, f)
      os.replace(tmp, path)
    except OSError:  # the run ended and removed its directory; progress is best effort
      pass


def zero() -> dict:
  return {**dict.fromkeys(KINDS, 0), **dict.fromkeys(TIMES, 0.0)}


_TOTALS = _Totals()


def tally(kind: str, n: int = 1) -> None:
  """Counts `n` of `kind` (see KINDS) for the progress lines and the matching Beam counter."""
  if n:
    _COUNTERS[kind].inc(n)
    _TOTALS.add(kind, n)


def mark(event: str) -> None:
  """Notes when `event` happened first in this process (EVENTS: encoder_ready, when a worker's model is loaded)."""
  _TOTALS.mark(event)


def flush() -> None:
  """Writes this process's totals now (end of a bundle; the launcher before its summary)."""
  _TOTALS.flush()


class Measure(NamedTuple):
  """One count of CountPerBundle: `value(element)` (None: 1 per element) added to the manifest count `name`, and
  tallied as the progress kind `progress` (KINDS) when set."""
  name: str
  value: Optional[Callable] = None
  progress: Optional[str] = None


class CountPerBundle(beam.DoFn):
  """A counting step of pipeline/run.py: elements -> one manifest count fact (COUNT, name, sum) per measure and
  bundle (transforms/manifest_facts.py; a sum of 0 emits nothing), each element also tallied for the progress lines.

  One step measures what several counts need of one PCollection (written rows: written, rows, tokens, truncated):
  each step of a graph costs the launcher and every bundle's set-up, whatever it holds (benchmarks/RESULTS.md,
  "Start-up"). Each bundle ends with a flush, so that the launcher's summary sees every tally, also from worker
  processes, which may exit right after their last bundle. `input_format`: set on the step counting read records,
  whose input bytes it also tallies.
  """

  def __init__(self, measures: Sequence[Measure], input_format: Optional[str] = None):
    super().__init__()
    self._measures = tuple(measures)
    self._input_format = input_format
    self._sums = [0] * len(self._measures)

  def start_bundle(self):
    self._sums = [0] * len(self._measures)

  def process(self, element):
    for i, measure in enumerate(self._measures):
      value = 1 if measure.value is None else int(measure.value(element))
      self._sums[i] += value
      if measure.progress is not None:
        tally(measure.progress, value)
    if self._input_format is not None:
      tally("input_bytes", record_bytes(element, self._input_format))
    return ()

  def finish_bundle(self):
    flush()
    for measure, total in zip(self._measures, self._sums):
      if total:
        yield GlobalWindows.windowed_value((COUNT, measure.name, total))


def record_bytes(record, input_format: str) -> int:
  """The bytes a TextRecord took in its input file: exact for text lines, approximate for JSON lines and CSV."""
  text = record.text or ""
  size = len(text.encode("utf-8")) + 1
  if input_format == "text":
    return size
  pair = record.text_pair
  size += len(str(record.id).encode("utf-8")) + (len(pair.encode("utf-8")) if pair else 0)
  if input_format == "jsonl":
    size += 24 + (16 if pair else 0)  # keys, quotes, braces
  else:
    size += 2 + (1 if pair else 0)  # separators
  return size
