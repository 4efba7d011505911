"""A text progress bar on stderr for long in-process calls (`embed(..., show_progress_bar=True)`), no dependency."""
from __future__ import annotations

import sys
import time
from typing import Optional, TextIO

WIDTH = 30
MIN_INTERVAL_SECONDS = 0.1  # redraws at most this often, and always at the end


class ProgressBar:
  """`with ProgressBar(total, "texts") as bar: ... bar.advance(n)` draws `label: 40%|############      | 4/10`,
  redrawn in place on a terminal and one line per redraw elsewhere; nothing at all when not `enabled`."""

  def __init__(self, total: int, label: str, enabled: bool = True, stream: Optional[TextIO] = None):
    self.total = total
    self.done = 0
    self._label = label
    self._enabled = enabled and total > 0
    self._stream = stream
    self._drawn_at: Optional[float] = None

  def __enter__(self) -> "ProgressBar":
    self._draw(force=True)
    return self

  def __exit__(self, *exc) -> None:
    if not self._enabled:
      return
    self._draw(force=True)
    stream = self._out()
    if stream.isatty():
      stream.write("\n")
    stream.flush()

  def advance(self, n: int) -> None:
    self.done = min(self.total, self.done + n)
    self._draw(force=False)

  def line(self) -> str:
    fraction = self.done / self.total if self.total else 1.0
    filled = int(fraction * WIDTH)
    return f"{self._label}: {fraction:4.0%}|{'#' * filled}{' ' * (WIDTH - filled)}| {self.done}/{self.total}"

  def _out(self) -> TextIO:
    return self._stream if self._stream is not None else sys.stderr  # looked up late: a redirected stderr counts

  def _draw(self, force: bool) -> None:
    if not self._enabled:
      return
    now = time.monotonic()
    if not force and self._drawn_at is not None and now - self._drawn_at < MIN_INTERVAL_SECONDS:
      return
    if not force and self.done == self.total:
      return  # drawn by __exit__
    self._drawn_at = now
    stream = self._out()
    stream.write(("\r" if stream.isatty() else "") + self.line() + ("" if stream.isatty() else "\n"))
    stream.flush()
