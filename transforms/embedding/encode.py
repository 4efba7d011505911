"""Stage 3-4: the encoder SavedModel behind Beam's RunInference, pooling each batch into one vector per record."""
from __future__ import annotations

from typing import Any, Iterable, NamedTuple, Optional, Sequence

import apache_beam as beam
from apache_beam.ml.inference.base import ModelHandler, PredictionResult

from transforms import progress_counts
from runtime.encoding import Encoded, encode_batch
from runtime import failure_isolation, mlm_scoring
from runtime import precision as precision_lib
from transforms.embedding.embed_config import EmbedConfig
from transforms.names import NAMESPACE
from formats.records import EncoderInput, TextRecord
from runtime.saved_models import LoadedModel, load_encoder, load_preprocessor
from runtime.tokenizer import Tokenizer


class EncodeError(NamedTuple):
  """The inference of a PredictionResult whose record failed to encode even alone."""
  reason: str


class BertEncoderModelHandler(ModelHandler[EncoderInput, PredictionResult, LoadedModel]):
  """Encodes packed BERT inputs with a TF Hub-form encoder SavedModel loaded by plain `tf.saved_model.load`.

  The model is loaded once per worker process (RunInference shares it across the process's threads through
  `apache_beam.utils.shared`) and placed on the GPU when the worker has one. A batch that fails is bisected so
  that only the records that fail alone come back as `EncodeError`s; a record that fails alone is tried once more
  first, so a transient failure (e.g. a device hiccup) does not dead-letter it. When several different records
  in a row have failed alone, the probe texts of runtime/precision.py are encoded one at a time: if each fails too,
  the fault is systemic (runtime/failure_isolation.py) and SystemicError is raised, so the runner retries the
  bundle and then fails the job instead of dead-lettering every record. The calls after a batch's first are
  counted in the `encoder_isolation_retries` metric.
  """

  def __init__(self, encoder_path: str, config: EmbedConfig = EmbedConfig(), *,
               preprocessor_path: Optional[str] = None, **kwargs):
    """See the class doc. `config` says how to pool (its pooling_spec), whether to compute vectors and MLM
    scores, the batch bounds, the length buckets (with them the input is already batched by
    transforms.embedding.batching.BucketBatches and each batch is padded to its bucket) and the precision, which is
    resolved on the worker at load by encoding probe texts packed by `preprocessor_path`. `kwargs` go to Beam's
    ModelHandler."""
    super().__init__(min_batch_size=config.min_batch_size, max_batch_size=config.batch_size, **kwargs)
    if config.precision != "fp32" and preprocessor_path is None:
      raise ValueError(f"precision {config.precision} needs preprocessor_path (probe texts are encoded at load)")
    self._path = encoder_path
    self._spec = config.pooling_spec
    self._embeddings = config.embeddings
    self._mlm = config.mlm
    self._buckets = config.bucket_spec
    self._precision = config.precision
    self._seq_length = config.seq_length  # the probe texts are packed to it
    self._preprocessor_path = preprocessor_path
    self._isolation: Optional[failure_isolation.FailureIsolation] = None  # made on the worker, at the first batch

  def _infer(self, model: LoadedModel, batch: Sequence[EncoderInput]) -> list[Encoded]:
    """Embeddings and/or MLM scores for one batch; raises on failure (the caller bisects)."""
    encoded = (encode_batch(model, batch, self._spec, self._buckets, getattr(model, "precision_runner", None))
               if self._embeddings else [Encoded(None)] * len(batch))
    if self._mlm is None:
      return encoded
    scores = mlm_scoring.score_records(model, batch, self._mlm.special, whole_word=self._mlm.whole_word,
                               continuation=self._mlm.continuation, max_tokens=self._mlm.max_tokens,
                               per_token=self._mlm.per_token)
    return [e._replace(mlm=score) for e, score in zip(encoded, scores)]

  def load_model(self) -> LoadedModel:
    model = load_encoder(self._path)
    probe = None
    if precision_lib.needs_probe(self._precision, model.device):
      probe = precision_lib.probe_inputs(load_preprocessor(self._preprocessor_path).obj, self._seq_length)
    model.precision_runner = precision_lib.resolve(model.obj, model.device, self._precision, probe)
    progress_counts.mark("encoder_ready")  # the summary's start-up ends here (pipeline/progress.py)
    return model

  def should_skip_batching(self) -> bool:
    return self._buckets is not None  # BucketBatches made the batches

  def run_inference(self, batch: Sequence[EncoderInput], model: LoadedModel,
                    inference_args: Optional[dict[str, Any]] = None) -> Iterable[PredictionResult]:
    if self._isolation is None:  # per handler copy, i.e. per RunInference DoFn instance; spans its batches
      retries = beam.metrics.Metrics.counter(NAMESPACE, "encoder_isolation_retries")
      self._isolation = failure_isolation.FailureIsolation(
          tries_alone=2, on_retry=retries.inc, key=lambda e: (e.input_word_ids.tobytes(), e.input_type_ids.tobytes()),
          probe=self._probe_inputs if self._preprocessor_path is not None else None, name="the encoder")
    results = []
    for element, encoded, error in self._isolation.run(batch, lambda part: self._infer(model, part)):
      inference = EncodeError(failure_isolation.describe(error)) if error is not None else encoded
      results.append(PredictionResult(element, inference, self._path))
    return results

  def _probe_inputs(self) -> list[EncoderInput]:
    """The probe texts, packed as the records are (asked for only when lone failures accumulate)."""
    tokenizer = Tokenizer(load_preprocessor(self._preprocessor_path).obj, self._seq_length)
    return tokenizer.pack([TextRecord(f"probe:{i}", text) for i, text in enumerate(precision_lib.PROBE_TEXTS)])

  def get_num_bytes(self, batch: Sequence[EncoderInput]) -> int:
    return sum(e.input_word_ids.nbytes * 3 for e in batch)

  def get_metrics_namespace(self) -> str:
    return NAMESPACE
