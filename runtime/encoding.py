"""One encoder batch -> one pooled vector (and optional token vectors) per record (TensorFlow, numpy)."""
from __future__ import annotations

from typing import Any, NamedTuple, Optional, Sequence

import numpy as np

from runtime import pooling
from runtime.buckets import BucketSpec, padded_length
from runtime.pooling import PoolingSpec
from runtime.saved_models import LoadedModel
from formats.records import EncoderInput


class Encoded(NamedTuple):
  """The inference of a PredictionResult for one record."""
  embedding: Optional[np.ndarray]  # float32 [H]; None when only MLM scores are asked for
  sequence_output: Optional[np.ndarray] = None  # float32 [num_tokens, H], with emit_tokens
  mlm: Optional[Any] = None  # runtime.mlm_scoring.MlmScore, with MLM scoring
  precision: Optional[str] = None  # the precision the vector was computed in (runtime/precision.py)


def stack_inputs(batch: Sequence[EncoderInput], length: Optional[int] = None) -> dict[str, np.ndarray]:
  """Stacks a batch into int32 [B, T] arrays, T = `length` (a bucket length, at least the longest record and at
  most the packed length) or else the longest record in the batch (padding past T is dropped)."""
  length = length or max(e.num_tokens for e in batch)
  return {
      "input_word_ids": np.stack([e.input_word_ids[:length] for e in batch]).astype(np.int32),
      "input_mask": np.stack([e.input_mask[:length] for e in batch]).astype(np.int32),
      "input_type_ids": np.stack([e.input_type_ids[:length] for e in batch]).astype(np.int32),
  }


def encode_batch(model: LoadedModel, batch: Sequence[EncoderInput], spec: PoolingSpec,
                 buckets: Optional[BucketSpec] = None, runner=None) -> list[Encoded]:
  """Runs the encoder on one batch and pools it. Raises on failure (callers bisect).

  With `buckets` the batch is padded to its bucket's length; with `runner` (a runtime.precision.PrecisionRunner)
  the encoder runs in the worker's resolved precision.
  """
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  inputs = stack_inputs(batch, padded_length(buckets, max(e.num_tokens for e in batch)))

  def fetch(outputs) -> dict:
    needed = {}
    if spec.pooling == "pooled":
      needed["pooled_output"] = outputs["pooled_output"].numpy()
    if spec.pooling != "pooled" or spec.emit_tokens:
      needed["sequence_output"] = outputs["sequence_output"].numpy()
    if spec.layers:
      needed["encoder_outputs"] = [outputs["encoder_outputs"][i].numpy()
                                   for i in range(len(outputs["encoder_outputs"]))]
    return needed

  if runner is None:
    with tf.device(model.device):
      needed, precision = fetch(model.obj({k: tf.constant(v) for k, v in inputs.items()})), "fp32"
  else:
    needed, precision = runner.call(inputs, fetch, check=lambda n: _finite_rows(n, inputs["input_mask"]))
  vectors = pooling.pool(needed, inputs["input_mask"], spec.pooling, spec.layers, spec.normalize)
  results = []
  for i, element in enumerate(batch):
    tokens = needed["sequence_output"][i, :element.num_tokens].astype(np.float32) if spec.emit_tokens else None
    results.append(Encoded(vectors[i], tokens, precision=precision))
  return results


def _finite_rows(needed: dict, mask: np.ndarray) -> bool:
  """True when every output of every real token is finite (padded positions may be anything)."""
  for name, value in needed.items():
    for array in (value if isinstance(value, list) else [value]):
      if array.ndim == 3:
        array = array[mask.astype(bool)]
      if not np.all(np.isfinite(array)):
        return False
  return True
