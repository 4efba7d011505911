"""Stage 3-4: the encoder SavedModel behind Beam's RunInference, pooling each batch into one vector per record."""
from __future__ import annotations

from typing import Any, Iterable, NamedTuple, Optional, Sequence

import numpy as np
from apache_beam.ml.inference.base import ModelHandler, PredictionResult

from transforms import batching, bisect, pooling
from transforms.records import EncoderInput
from transforms.saved_models import LoadedModel, load_encoder

NAMESPACE = "bert_embed"


class EncodeError(NamedTuple):
  """The inference of a PredictionResult whose record failed to encode even alone."""
  reason: str


class Encoded(NamedTuple):
  """The inference of a PredictionResult for one record."""
  embedding: Optional[np.ndarray]  # float32 [H]; None when only MLM scores are asked for
  sequence_output: Optional[np.ndarray] = None  # float32 [num_tokens, H], with emit_tokens
  mlm: Optional[Any] = None  # transforms.mlm.MlmScore, with MLM scoring
  precision: Optional[str] = None  # the precision the vector was computed in (transforms/precision.py)


class MlmSpec(NamedTuple):
  """MLM scoring settings (see transforms/mlm.py); all small and picklable."""
  special: dict  # the preprocessor's special token ids
  whole_word: bool = False
  continuation: Optional[np.ndarray] = None  # bool [vocab]: True for '##' pieces; needed with whole_word
  per_token: bool = False
  max_tokens: int = 8192


class PoolingSpec(NamedTuple):
  pooling: str = "pooled"
  normalize: bool = False
  layers: Optional[tuple[int, ...]] = None
  emit_tokens: bool = False


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
                 buckets: Optional[batching.BucketSpec] = None, runner=None) -> list[Encoded]:
  """Runs the encoder on one batch and pools it. Raises on failure (callers bisect).

  With `buckets` the batch is padded to its bucket's length; with `runner` (a transforms.precision.PrecisionRunner)
  the encoder runs in the worker's resolved precision.
  """
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  inputs = stack_inputs(batch, batching.padded_length(buckets, max(e.num_tokens for e in batch)))

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


class BertEncoderModelHandler(ModelHandler[EncoderInput, PredictionResult, LoadedModel]):
  """Encodes packed BERT inputs with a TF Hub-form encoder SavedModel loaded by plain `tf.saved_model.load`.

  The model is loaded once per worker process (RunInference shares it across the process's threads through
  `apache_beam.utils.shared`) and placed on the GPU when the worker has one. A batch that fails is bisected so
  that only the records that fail alone come back as `EncodeError`s; a record that fails alone is tried once more
  first, so a transient failure (e.g. a device hiccup) does not dead-letter it.
  """

  def __init__(self, encoder_path: str, spec: PoolingSpec, *, min_batch_size: int = 1, max_batch_size: int = 64,
               embeddings: bool = True, mlm: Optional[MlmSpec] = None,
               buckets: Optional[batching.BucketSpec] = None, precision: str = "fp32",
               preprocessor_path: Optional[str] = None, **kwargs):
    """See the class doc. With `buckets`, the input is already batched (transforms.batching.BucketBatches) and
    each batch is padded to its bucket; `precision` (fp32 | bf16 | fp16 | auto, see transforms/precision.py) is
    resolved on the worker at load by encoding probe texts packed by `preprocessor_path`."""
    super().__init__(min_batch_size=min_batch_size, max_batch_size=max_batch_size, **kwargs)
    if not embeddings and mlm is None:
      raise ValueError("nothing to compute: embeddings are off and MLM scoring is not on")
    if precision != "fp32" and preprocessor_path is None:
      raise ValueError(f"precision {precision} needs preprocessor_path (probe texts are encoded at load)")
    self._path = encoder_path
    self._spec = spec
    self._embeddings = embeddings
    self._mlm = mlm
    self._buckets = buckets
    self._precision = precision
    self._preprocessor_path = preprocessor_path

  def _infer(self, model: LoadedModel, batch: Sequence[EncoderInput]) -> list[Encoded]:
    """Embeddings and/or MLM scores for one batch; raises on failure (the caller bisects)."""
    encoded = (encode_batch(model, batch, self._spec, self._buckets, getattr(model, "precision_runner", None))
               if self._embeddings else [Encoded(None)] * len(batch))
    if self._mlm is None:
      return encoded
    from transforms import mlm  # pylint: disable=import-outside-toplevel  (mlm imports this module)
    scores = mlm.score_records(model, batch, self._mlm.special, whole_word=self._mlm.whole_word,
                               continuation=self._mlm.continuation, max_tokens=self._mlm.max_tokens,
                               per_token=self._mlm.per_token)
    return [e._replace(mlm=score) for e, score in zip(encoded, scores)]

  def load_model(self) -> LoadedModel:
    from transforms import precision as precision_lib  # pylint: disable=import-outside-toplevel
    model = load_encoder(self._path)
    probe = None
    if precision_lib.needs_probe(self._precision, model.device):
      from transforms.saved_models import load_preprocessor  # pylint: disable=import-outside-toplevel
      seq_length = self._buckets.lengths[-1] if self._buckets else 128
      probe = precision_lib.probe_inputs(load_preprocessor(self._preprocessor_path).obj, seq_length)
    model.precision_runner = precision_lib.resolve(model.obj, model.device, self._precision, probe)
    from pipeline import progress  # pylint: disable=import-outside-toplevel
    progress.mark("encoder_ready")  # the summary's start-up ends here (pipeline/progress.py)
    return model

  def should_skip_batching(self) -> bool:
    return self._buckets is not None  # BucketBatches made the batches

  def run_inference(self, batch: Sequence[EncoderInput], model: LoadedModel,
                    inference_args: Optional[dict[str, Any]] = None) -> Iterable[PredictionResult]:
    results = []
    for element, encoded, error in bisect.run_isolating_failures(
        batch, lambda part: self._infer(model, part)):
      if error is not None:
        try:
          (encoded,), error = self._infer(model, [element]), None
        except Exception as retry_error:  # pylint: disable=broad-except
          error = retry_error
      inference = EncodeError(bisect.describe(error)) if error is not None else encoded
      results.append(PredictionResult(element, inference, self._path))
    return results

  def get_num_bytes(self, batch: Sequence[EncoderInput]) -> int:
    return sum(e.input_word_ids.nbytes * 3 for e in batch)

  def get_metrics_namespace(self) -> str:
    return NAMESPACE
