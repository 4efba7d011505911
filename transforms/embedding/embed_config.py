"""EmbedConfig: how EmbedTexts and its steps (preprocessing, the encoder's ModelHandler) embed, in one value.

A frozen dataclass of small picklable values with defaults, so `EmbedTexts(pre, enc)` and
`EmbedTexts(pre, enc, EmbedConfig(pooling="mean", normalize=True))` read well; `bert-embed run` builds it from its
options in one place (pipeline/config.py, JobConfig.embed_config). Settings that cannot work together are refused
here, when the value is made, rather than on a worker.
"""
from __future__ import annotations

import dataclasses
from typing import NamedTuple, Optional

import numpy as np

from runtime import buckets

from runtime import text_windows
from runtime import defaults
from runtime.pooling import POOLINGS, PoolingSpec


class MlmSpec(NamedTuple):
  """MLM scoring settings (see runtime/mlm_scoring.py); all small and picklable."""
  special: dict  # the preprocessor's special token ids
  whole_word: bool = False
  continuation: Optional[np.ndarray] = None  # bool [vocab]: True for '##' pieces; needed with whole_word
  per_token: bool = False
  max_tokens: int = defaults.DEFAULT_MLM_MAX_TOKENS


@dataclasses.dataclass(frozen=True)
class EmbedConfig:
  """Everything about embedding a record except the two model paths.

  Attributes:
    pooling: 'pooled', 'cls' or 'mean'.
    normalize: L2-normalise vectors.
    layers: encoder layers to average before cls/mean pooling (negative from the end); None: the last layer.
    seq_length: packed length (the preprocessor trims longer texts round-robin).
    emit_tokens: also return token ids and the token-level sequence_output of real tokens.
    keep_text: carry the text into the output records.
    embeddings: compute vectors (False: MLM scores only).
    mlm: MLM pseudo-log-likelihood scoring settings, or None.
    long_text: 'truncate' (the packer trims) or 'chunk' (windows of seq_length - 2 pieces, `chunk_stride` shared).
    chunk_output: with chunk, 'rows' (one row per window, id <id>#<k>) or 'mean' (piece-weighted mean per record).
    precision: fp32 | bf16 | fp16 | auto, resolved on each worker (runtime/precision.py).
    batch_size / min_batch_size: RunInference batching bounds; preprocess_batch_size: texts tokenized per call.
    bucket_lengths / max_batch_tokens: length buckets (capped at seq_length) and the padded-token budget of an
      encoder batch (runtime/buckets.py); bucket_lengths=None batches with RunInference's BatchElements and
      pads each batch to its longest record instead. batch_size still caps the records of a batch.
  """
  pooling: str = "pooled"
  normalize: bool = False
  layers: Optional[tuple[int, ...]] = None
  seq_length: int = defaults.DEFAULT_SEQ_LENGTH
  emit_tokens: bool = False
  keep_text: bool = False
  embeddings: bool = True
  mlm: Optional[MlmSpec] = None
  long_text: str = "truncate"
  chunk_stride: int = 0
  chunk_output: str = "rows"
  precision: str = "fp32"
  batch_size: int = defaults.DEFAULT_BATCH_SIZE
  min_batch_size: int = 1
  preprocess_batch_size: int = defaults.DEFAULT_PREPROCESS_BATCH_SIZE
  bucket_lengths: Optional[tuple[int, ...]] = buckets.DEFAULT_BUCKET_LENGTHS
  max_batch_tokens: int = buckets.DEFAULT_MAX_BATCH_TOKENS

  def __post_init__(self):
    object.__setattr__(self, "layers", tuple(self.layers) if self.layers else None)
    if self.bucket_lengths is not None:
      object.__setattr__(self, "bucket_lengths", tuple(self.bucket_lengths))
    if self.pooling not in POOLINGS:
      raise ValueError(f"unknown pooling {self.pooling!r}; expected one of {POOLINGS}")
    if not self.embeddings and self.mlm is None:
      raise ValueError("nothing to compute: embeddings are off and MLM scoring is not on")
    text_windows.validate(self.long_text, self.chunk_stride, self.seq_length, None)
    if self.chunk_output not in text_windows.CHUNK_OUTPUTS:
      raise ValueError(f"chunk_output must be one of {text_windows.CHUNK_OUTPUTS}, got {self.chunk_output!r}")

  @property
  def window_stride(self) -> Optional[int]:
    """The pieces consecutive windows share with long_text='chunk'; None: long texts are truncated."""
    return self.chunk_stride if self.long_text == "chunk" else None

  @property
  def merges_windows(self) -> bool:
    """Windows are averaged into one vector per record (long_text='chunk', chunk_output='mean')."""
    return self.window_stride is not None and self.chunk_output == "mean"

  @property
  def pooling_spec(self) -> PoolingSpec:
    """How the encoder pools each record. Windows that are averaged afterwards are not normalised one by one:
    MergeWindows normalises their mean."""
    return PoolingSpec(self.pooling, self.normalize and not self.merges_windows, self.layers, self.emit_tokens)

  @property
  def bucket_spec(self) -> Optional[buckets.BucketSpec]:
    """The encoder batches' length buckets, or None (RunInference's own batching)."""
    if self.bucket_lengths is None:
      return None
    return buckets.make_spec(self.seq_length, self.bucket_lengths, self.max_batch_tokens, self.batch_size)
