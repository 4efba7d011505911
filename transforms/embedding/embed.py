"""EmbedTexts: the composable PTransform at the heart of the pipeline (preprocess -> RunInference -> records)."""
from __future__ import annotations

from typing import NamedTuple, Optional

import apache_beam as beam
from apache_beam.ml.inference.base import PredictionResult, RunInference

from transforms.embedding import batching
from transforms.embedding.embed_config import EmbedConfig
from transforms.embedding.encode import BertEncoderModelHandler, EncodeError
from transforms.names import DEAD_LETTER, NAMESPACE
from transforms.embedding.preprocess import Preprocess
from formats.records import DeadLetter, EmbeddingRecord, EncoderInput, TextRecord, text_sha256
from transforms.embedding.merge_windows import WINDOW_FAILED, MergeWindows


class EmbedResult(NamedTuple):
  embeddings: beam.PCollection  # EmbeddingRecord, one per input record that succeeded
  dead_letters: beam.PCollection  # DeadLetter
  encoded: Optional[beam.PCollection] = None  # EmbeddingRecord, one per encoder call result (differs with dedupe)
  precision_used: Optional[beam.PCollection] = None  # str per encoded record: the precision its vector came from


class _ToEmbeddingRecord(beam.DoFn):
  """PredictionResult -> EmbeddingRecord, or a dead letter when the record failed to encode."""

  def __init__(self, keep_text: bool, emit_tokens: bool):
    self._keep_text = keep_text
    self._emit_tokens = emit_tokens
    self._encoded = beam.metrics.Metrics.counter(NAMESPACE, "records_encoded")
    self._tokens = beam.metrics.Metrics.counter(NAMESPACE, "tokens_encoded")
    self._failed = beam.metrics.Metrics.counter(NAMESPACE, "records_dead_lettered_encode")

  def process(self, result: PredictionResult):
    element: EncoderInput = result.example
    record = element.record
    if isinstance(result.inference, EncodeError):
      self._failed.inc()
      yield _encode_dead_letter(element, result.inference.reason)
      return
    self._encoded.inc()
    self._tokens.inc(element.num_tokens)
    score = result.inference.mlm
    yield EmbeddingRecord(
        id=record.id,
        embedding=result.inference.embedding,
        num_tokens=element.num_tokens,
        truncated=element.truncated,
        text_sha256=text_sha256(record.text, record.text_pair),
        text=record.text if self._keep_text else None,
        source=record.source,
        token_ids=element.input_word_ids[:element.num_tokens].copy() if self._emit_tokens else None,
        sequence_output=result.inference.sequence_output if self._emit_tokens else None,
        mlm_pll=None if score is None else float(score.pll),
        mlm_scored_tokens=None if score is None else int(score.scored_tokens),
        mlm_pseudo_perplexity=None if score is None else score.pseudo_perplexity,
        mlm_token_scores=None if score is None else score.token_scores,
        **_chunk_fields(element))


def _chunk_fields(element: EncoderInput) -> dict:
  info = element.chunk
  if info is None:
    return {}
  return {"parent_id": info.parent_id, "chunk_index": info.index, "chunk_start_piece": info.start_piece,
          "chunk_end_piece": info.end_piece, "num_windows": info.num_windows}


def _encode_dead_letter(element: EncoderInput, reason: str):
  """A record that failed to encode; a window of a long text goes to MergeWindows, keyed by its parent."""
  record, chunk = element.record, element.chunk
  if chunk is not None and chunk.num_windows == 1:  # the whole text: dead-letter it under its own id
    return beam.pvalue.TaggedOutput(DEAD_LETTER, DeadLetter.make(
        chunk.parent_id, record.source, "encode", reason, record.text))
  dead = DeadLetter.make(record.id, record.source, "encode", reason, record.text)
  if chunk is not None:
    return beam.pvalue.TaggedOutput(WINDOW_FAILED, (chunk.parent_id, dead))
  return beam.pvalue.TaggedOutput(DEAD_LETTER, dead)


def _as_text_record(element):
  """Accepts a TextRecord, an (id, text) or (id, text, pair) tuple, or a dict with id, text and optional text_pair."""
  if isinstance(element, TextRecord):
    record = element
  elif isinstance(element, dict):
    record = TextRecord(id=element.get("id"), text=element.get("text"), text_pair=element.get("text_pair"))
  elif isinstance(element, (tuple, list)) and len(element) in (2, 3):
    record = TextRecord(id=element[0], text=element[1], text_pair=element[2] if len(element) == 3 else None)
  else:
    yield beam.pvalue.TaggedOutput(DEAD_LETTER, DeadLetter.make(
        "", "", "parse", f"expected a TextRecord, (id, text[, pair]) or dict, got {type(element).__name__}",
        repr(element)))
    return
  problems = [f"{name} must be a string" for name, value in (("text", record.text), ("text_pair", record.text_pair))
              if value is not None and not isinstance(value, str)]
  if record.text is None:
    problems.append("missing text")
  if record.id is None or str(record.id) == "":
    problems.append("missing id")
  if problems:
    yield beam.pvalue.TaggedOutput(DEAD_LETTER, DeadLetter.make(
        str(record.id or ""), record.source, "parse", "; ".join(problems), repr(record.text)))
  else:
    yield record._replace(id=str(record.id))


class EmbedTexts(beam.PTransform):
  """Embeds texts inside any Beam pipeline; `bert-embed run` is built on it.

  Input: a PCollection of TextRecord, (id, text), (id, text, pair) or {"id", "text", "text_pair"} dicts.
  Output: EmbedResult(embeddings=PCollection[EmbeddingRecord], dead_letters=PCollection[DeadLetter]); an input that
  is malformed, has no tokens or fails to encode even alone becomes a dead letter with the reason.

  Args:
    preprocessor: path of a TF Hub-form BERT preprocessor SavedModel (local or gs://).
    encoder: path of the matching encoder SavedModel.
    config: pooling, lengths, batching, precision, MLM scoring and long-text handling
      (transforms/embedding/embed_config.py); the defaults pool with the model's pooler and truncate at 128 tokens.
  """

  def __init__(self, preprocessor: str, encoder: str, config: EmbedConfig = EmbedConfig()):
    super().__init__()
    self._preprocessor = preprocessor
    self._config = config
    self._handler = BertEncoderModelHandler(encoder, config, preprocessor_path=preprocessor)

  def expand(self, inputs) -> EmbedResult:
    checked = inputs | "AsTextRecords" >> beam.FlatMap(_as_text_record).with_outputs(DEAD_LETTER, main="records")
    records, invalid = checked.records, checked[DEAD_LETTER]
    config = self._config
    packed, preprocess_failed = records | "Preprocess" >> Preprocess(self._preprocessor, config)
    if config.bucket_spec is not None:
      packed = packed | "BucketBatches" >> batching.BucketBatches(config.bucket_spec)
    # No RunInference dead-letter output: the handler dead-letters records that fail alone, and an error that
    # escapes it (a systemic fault) must fail the bundle so that the runner retries it, not dead-letter a batch.
    predictions = packed | "Encode" >> RunInference(self._handler)
    precision_used = predictions | "PrecisionUsed" >> beam.FlatMap(
        lambda r: [r.inference.precision] if getattr(r.inference, "precision", None) else [])
    converted = predictions | "ToEmbeddingRecords" >> beam.ParDo(
        _ToEmbeddingRecord(config.keep_text, config.emit_tokens)).with_outputs(
            DEAD_LETTER, WINDOW_FAILED, main="embeddings")
    dead_letters = [invalid, preprocess_failed, converted[DEAD_LETTER]]
    embeddings = converted.embeddings
    if config.window_stride is not None:
      embeddings, window_dead = (embeddings, converted[WINDOW_FAILED]) | "MergeWindows" >> MergeWindows(
          config.chunk_output, config.normalize)
      dead_letters.append(window_dead)
    dead = tuple(dead_letters) | "FlattenDeadLetters" >> beam.Flatten()
    return EmbedResult(embeddings, dead, converted.embeddings, precision_used)
