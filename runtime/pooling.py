"""Pooling of encoder outputs into one vector per record (numpy, run inside the encoder's ModelHandler)."""
from __future__ import annotations

from typing import Mapping, NamedTuple, Optional, Sequence

import numpy as np

POOLINGS = ("pooled", "cls", "mean")


class PoolingSpec(NamedTuple):
  """How encode_batch turns one batch of encoder outputs into vectors (see `pool`)."""
  pooling: str = "pooled"
  normalize: bool = False
  layers: Optional[tuple[int, ...]] = None
  emit_tokens: bool = False  # also keep the token-level sequence_output of real tokens


def parse_layers(spec: Optional[str]) -> Optional[tuple[int, ...]]:
  """'-1,-2' -> (-1, -2). None or '' -> None (use sequence_output)."""
  if spec is None or not str(spec).strip():
    return None
  try:
    layers = tuple(int(x) for x in str(spec).split(","))
  except ValueError:
    raise ValueError(f"--layers must be comma-separated integers, got {spec!r}") from None
  if len(set(layers)) != len(layers):
    raise ValueError(f"--layers lists a layer twice: {spec!r}")
  return layers


def check_layers(layers: Optional[Sequence[int]], num_layers: int) -> None:
  """Raises ValueError when a layer index is out of range for a model with `num_layers` layers."""
  for i in layers or ():
    if not -num_layers <= i < num_layers:
      raise ValueError(f"--layers index {i} is out of range for an encoder with {num_layers} layers")


def hidden_states(outputs: Mapping[str, object], layers: Optional[Sequence[int]]) -> np.ndarray:
  """float32 [B, T, H]: sequence_output, or the mean of the chosen encoder_outputs."""
  if not layers:
    return np.asarray(outputs["sequence_output"], dtype=np.float32)
  per_layer = outputs["encoder_outputs"]
  stacked = np.stack([np.asarray(per_layer[i], dtype=np.float32) for i in layers])
  return stacked.mean(axis=0, dtype=np.float32)


def masked_mean(hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
  """[B, T, H], [B, T] -> [B, H]: mean over positions where mask == 1."""
  m = mask.astype(np.float32)[:, :, None]
  counts = np.maximum(m.sum(axis=1), 1.0)
  return (hidden * m).sum(axis=1) / counts


def l2_normalize(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
  norms = np.linalg.norm(x, axis=-1, keepdims=True)
  return x / np.maximum(norms, eps)


def pool(outputs: Mapping[str, object], mask: np.ndarray, pooling: str,
         layers: Optional[Sequence[int]] = None, normalize: bool = False) -> np.ndarray:
  """Turns one batch of encoder outputs into float32 [B, H] vectors.

  Args:
    outputs: the encoder's outputs as numpy (`pooled_output`, `sequence_output`, `encoder_outputs`).
    mask: int [B, T] input_mask (1 on real tokens).
    pooling: 'pooled' (the model's pooler output), 'cls' (hidden state at [CLS]) or 'mean' (masked mean).
    layers: encoder layers to average before cls/mean pooling (None: the last layer).
    normalize: L2-normalise each vector.
  """
  if pooling == "pooled":
    if layers:
      raise ValueError("--layers applies to cls and mean pooling, not to the model's pooled_output")
    vectors = np.asarray(outputs["pooled_output"], dtype=np.float32)
  elif pooling == "cls":
    vectors = hidden_states(outputs, layers)[:, 0, :]
  elif pooling == "mean":
    vectors = masked_mean(hidden_states(outputs, layers), mask)
  else:
    raise ValueError(f"unknown pooling {pooling!r}; expected one of {POOLINGS}")
  if normalize:
    vectors = l2_normalize(vectors)
  return np.ascontiguousarray(vectors, dtype=np.float32)
