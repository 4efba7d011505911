"""Progress while a job runs: `bert-embed: progress ...` lines on stderr every ~10 s.

Beam's metrics cannot be queried while the DirectRunner runs, so local runs use a side channel:

  workers    the pipeline's counting steps tally what they see (transforms/progress_counts.py); when
             BERT_EMBED_PROGRESS_DIR names a directory, each process rewrites `<dir>/<pid>.json` with its totals.
  launcher   `Reporter`, a thread of the launcher, sums the files every `interval` seconds and prints a line.

Every tally also increments a Beam counter in the `bert_embed` namespace (progress_records_read,
progress_records_encoded, progress_records_written, progress_input_bytes_read), so on Dataflow the job's counters
carry the same figures; there the variable is unset and no file is written.

The ETA: input bytes are known when the run is built (the matched files' sizes) for formats whose records map to
bytes (uncompressed text, JSON lines, CSV). Each read record adds the bytes it took in its file (exact for text
lines, approximate for JSON and CSV), so `records read * total bytes / bytes read` estimates the job's records, and
the encoding rate gives the time left.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import threading
import time
from typing import Callable, NamedTuple, Optional, TextIO

from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics.metric import MetricsFilter

from transforms.names import NAMESPACE
from transforms.progress_counts import COUNTER_NAMES, ENV, KINDS, flush, zero

INTERVAL_SECONDS = 10.0
INTERVAL_ENV = "BERT_EMBED_PROGRESS_SECONDS"  # overrides INTERVAL_SECONDS (tests of the command line)
ETA_FORMATS = ("text", "jsonl", "csv")
_COMPRESSED = (".gz", ".bz2", ".xz", ".zst", ".deflate", ".zip", ".snappy")


def input_bytes(paths, input_format: str) -> Optional[int]:
  """Total size of the matched files when an ETA can be estimated from it (see the module docstring)."""
  if input_format not in ETA_FORMATS or any(p.lower().endswith(_COMPRESSED) for p in paths):
    return None
  try:
    total = sum(m.size_in_bytes for result in FileSystems.match(list(paths)) for m in result.metadata_list)
  except Exception:  # pylint: disable=broad-except  (an ETA is a nicety)
    return None
  return total or None


class Snapshot(NamedTuple):
  seconds: float  # since the reporter started
  counts: dict


def read_totals(directory: str) -> dict:
  """The sum of the per-process files in `directory`."""
  totals = zero()
  try:
    names = os.listdir(directory)
  except OSError:
    return totals
  for name in names:
    if not name.endswith(".json"):
      continue
    try:
      with open(os.path.join(directory, name), encoding="utf-8") as f:
        counts = json.load(f)
    except (OSError, ValueError):
      continue
    for kind in KINDS:
      totals[kind] += int(counts.get(kind, 0))
    for key, pick in (("encoder_ready", min), ("first_encoded_at", min), ("last_encoded_at", max)):
      value = float(counts.get(key) or 0.0)
      if value:
        totals[key] = pick(totals[key], value) if totals[key] else value
  return totals


def metrics_totals(result) -> Optional[dict]:
  """The same totals from a running job's Beam counters (runners whose metrics can be queried while running)."""
  try:
    counters = result.metrics().query(MetricsFilter().with_namespace(NAMESPACE))["counters"]
  except Exception:  # pylint: disable=broad-except
    return None
  kinds = {name: kind for kind, name in COUNTER_NAMES.items()}
  totals = zero()
  for counter in counters:
    kind = kinds.get(counter.key.metric.name)
    if kind:
      totals[kind] += int(counter.committed or counter.attempted or 0)
  return totals


def _duration(seconds: float) -> str:
  seconds = int(round(seconds))
  hours, rest = divmod(seconds, 3600)
  return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


def progress_line(now: Snapshot, first_encoded: Optional[Snapshot], total_bytes: Optional[int]) -> str:
  """One progress line. The rate: encoded records over the time from the first worker's model load to the last
  encoded record (side channel), else between the first snapshot that saw encoded records and `now`."""
  c = now.counts
  line = f"bert-embed: progress: {c['read']} read, {c['encoded']} encoded, {c['written']} written"
  rate = None
  ready, last = c.get("encoder_ready") or 0.0, c.get("last_encoded_at") or 0.0
  if ready and last > ready:  # the side channel's clock: the summary's definition, and no decay while writing
    rate = c["encoded"] / (last - ready)
  elif first_encoded is not None and now.seconds > first_encoded.seconds:
    rate = (c["encoded"] - first_encoded.counts["encoded"]) / (now.seconds - first_encoded.seconds)
  if rate is not None:
    line += f"; {rate:.1f} records/s"
  elif not c["encoded"]:
    line += "; nothing encoded yet"
  if total_bytes and c["input_bytes"] and c["read"]:
    fraction = min(1.0, c["input_bytes"] / total_bytes)
    line += f"; {100 * fraction:.0f}% of the input read"
    if rate:
      expected = c["read"] / fraction
      line += f", ETA {_duration(max(0.0, expected - c['encoded']) / rate)}"
  return line


class Reporter:
  """Prints a progress line every `interval` seconds until `stop()`.

  Without `source` it reads the local side channel: it makes the run's directory and points BERT_EMBED_PROGRESS_DIR
  at it while it runs. With `source` (e.g. `lambda: metrics_totals(result)` for a remote runner) it prints what
  that returns. `print_lines=False` (--quiet) keeps the side channel for the summary's timings but prints nothing.
  """

  def __init__(self, interval: Optional[float] = None, total_bytes: Optional[int] = None,
               stream: Optional[TextIO] = None, source: Optional[Callable[[], Optional[dict]]] = None,
               print_lines: bool = True):
    if interval is None:
      interval = float(os.environ.get(INTERVAL_ENV) or INTERVAL_SECONDS)
    self.interval = interval
    self.total_bytes = total_bytes
    self._stream = stream
    self._print = print_lines
    self.directory = None if source is not None else tempfile.mkdtemp(prefix="bert-embed-progress-")
    self._source = source or (lambda: read_totals(self.directory))
    self._previous_env = os.environ.get(ENV)
    self._stop = threading.Event()
    self._thread = threading.Thread(target=self._loop, name="bert-embed-progress", daemon=True)
    self._start = 0.0
    self._first_encoded: Optional[Snapshot] = None
    self.lines: list[str] = []

  def start(self) -> "Reporter":
    if self.directory is not None:
      os.environ[ENV] = self.directory
    self._start = time.monotonic()
    if self._print:
      self._thread.start()
    return self

  def totals(self) -> Optional[dict]:
    """The totals now (in-process workers' last counts flushed first)."""
    flush()
    return self._source()

  def _loop(self) -> None:
    while not self._stop.wait(self.interval):
      counts = self._source()
      if counts is None:
        continue
      now = Snapshot(time.monotonic() - self._start, counts)
      if self._first_encoded is None and counts["encoded"]:
        self._first_encoded = now
      line = progress_line(now, self._first_encoded, self.total_bytes)
      self.lines.append(line)
      try:
        print(line, file=self._stream or sys.stderr, flush=True)
      except (OSError, ValueError):  # a closed stream must not take the job down
        pass

  def stop(self) -> Optional[dict]:
    """Stops the thread; returns the final totals (None when the source has none)."""
    self._stop.set()
    if self._thread.is_alive():
      self._thread.join(timeout=5)
    totals = self.totals()
    if self.directory is not None:
      if self._previous_env is None:
        os.environ.pop(ENV, None)
      else:
        os.environ[ENV] = self._previous_env
      shutil.rmtree(self.directory, ignore_errors=True)
    return totals


def process_start() -> float:
  """time.time() of this process's start (now where it cannot be told)."""
  return time.time() - (process_age() or 0.0)


def process_age() -> Optional[float]:
  """Seconds since this process started (Linux /proc), so a summary's wall time includes the imports."""
  try:
    with open("/proc/self/stat", encoding="ascii") as f:
      start_ticks = int(f.read().rsplit(")", 1)[1].split()[19])
    with open("/proc/uptime", encoding="ascii") as f:
      uptime = float(f.read().split()[0])
    return max(0.0, uptime - start_ticks / os.sysconf("SC_CLK_TCK"))
  except (OSError, ValueError, IndexError):
    return None
