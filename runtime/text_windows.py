"""Long documents: windows over a text's wordpieces that fill the sequence, with overlap, and their merge."""
from __future__ import annotations

from typing import NamedTuple, Optional

import numpy as np

LONG_TEXT_MODES = ("truncate", "chunk")
CHUNK_OUTPUTS = ("rows", "mean")


class ChunkInfo(NamedTuple):
  """Where a window sits in its parent text: pieces [start_piece, end_piece) of `num_windows`."""
  parent_id: str
  index: int
  start_piece: int
  end_piece: int
  num_windows: int


def window_bounds(num_pieces: int, window: int, stride: int) -> list[tuple[int, int]]:
  """[start, end) piece ranges of `window` pieces, consecutive windows sharing `stride` pieces; the last ends at n.

  A text that fits (num_pieces <= window) is one window. Requires 0 <= stride < window.
  """
  if window <= 0 or not 0 <= stride < window:
    raise ValueError(f"chunk stride must be in [0, {window}), got {stride}")
  if num_pieces <= window:
    return [(0, num_pieces)]
  step = window - stride
  bounds = []
  start = 0
  while True:
    end = min(start + window, num_pieces)
    bounds.append((start, end))
    if end == num_pieces:
      return bounds
    start += step


def weighted_mean(vectors: list[np.ndarray], weights: list[int], normalize: bool) -> np.ndarray:
  """Piece-count-weighted mean of window vectors, L2-normalised after averaging when asked."""
  w = np.asarray(weights, dtype=np.float64)
  mean = (np.stack(vectors).astype(np.float64) * w[:, None]).sum(axis=0) / max(w.sum(), 1.0)
  if normalize:
    mean /= max(np.linalg.norm(mean), 1e-12)
  return mean.astype(np.float32)


def window_id(parent_id: str, index: int) -> str:
  return f"{parent_id}#{index}"


def validate(long_text: str, chunk_stride: int, seq_length: int, text_pair_field: Optional[str]) -> None:
  """Raises ValueError for option combinations chunking cannot serve."""
  if long_text not in LONG_TEXT_MODES:
    raise ValueError(f"--long-text must be one of {LONG_TEXT_MODES}")
  if long_text == "chunk":
    if text_pair_field:
      raise ValueError("--long-text chunk does not split segment pairs: drop --text-pair-field or use truncate")
    if not 0 <= chunk_stride < seq_length - 2:
      raise ValueError(f"--chunk-stride must be in [0, {seq_length - 2}) for --seq-length {seq_length}")
