"""Cosine similarity of embedding vectors."""
from __future__ import annotations

import numpy as np


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """Cosine similarity along the last axis, in float64 (rows of [N, H] arrays, or one [H] vector against each row
  of the other); 0 where a vector is all zeros."""
  a = np.asarray(a, np.float64)
  b = np.asarray(b, np.float64)
  denom = np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1)
  return np.sum(a * b, axis=-1) / np.maximum(denom, 1e-300)
