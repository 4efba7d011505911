"""Stage 2: text -> packed BERT inputs, with the preprocessor SavedModel's own tokenizer and packer (CPU)."""
from __future__ import annotations

import time
from typing import Iterable, Sequence

import apache_beam as beam
import numpy as np
from apache_beam.utils import shared

from transforms import bisect, chunking
from transforms.embed_config import EmbedConfig
from transforms.names import DEAD_LETTER, NAMESPACE
from transforms.records import DeadLetter, EncoderInput, TextRecord
from transforms.saved_models import load_preprocessor


def padded_batch_size(n: int) -> int:
  """The smallest power of two >= n (>= 1): the few batch shapes the packer is called with."""
  return 1 << max(0, n - 1).bit_length()


class Tokenizer:
  """Tokenizes and packs lists of records with a loaded TF Hub-form preprocessor."""

  def __init__(self, preprocessor, seq_length: int):
    self._pre = preprocessor
    self._seq_length = seq_length

  def pack(self, records: Sequence[TextRecord]) -> list[EncoderInput]:
    """Packs records that all have, or all lack, a text pair. Raises on failure (callers bisect).

    The batch is padded with empty texts to a power of two: a loaded packer pays ~0.1 s and some MB for every new
    batch size it sees, and the last batch of each bundle and the halves of a bisected batch come in every size
    (measured with adaptive batches of every size: 10x slower and +0.5 GB RSS).
    """
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    padding = [""] * (padded_batch_size(len(records)) - len(records))
    with tf.device("/CPU:0"):
      segments = [self._pre.tokenize(tf.constant([r.text for r in records] + padding))]
      if records[0].text_pair is not None:
        segments.append(self._pre.tokenize(tf.constant([r.text_pair for r in records] + padding)))
      packed = self._pre.bert_pack_inputs(segments, seq_length=tf.constant(self._seq_length, tf.int32))
      pieces = sum(s.merge_dims(-2, -1).row_lengths().numpy() for s in segments)
    budget = self._seq_length - (len(segments) + 1)
    word_ids = packed["input_word_ids"].numpy().astype(np.int32)
    mask = packed["input_mask"].numpy().astype(np.int32)
    type_ids = packed["input_type_ids"].numpy().astype(np.int32)
    out = []
    for i, r in enumerate(records):
      out.append(EncoderInput(record=r, input_word_ids=word_ids[i], input_mask=mask[i],
                              input_type_ids=type_ids[i], num_tokens=int(mask[i].sum()),
                              truncated=bool(r.truncated or pieces[i] > budget)))
    return out


  def pack_windows(self, records: Sequence[TextRecord], stride: int) -> list[list[EncoderInput]]:
    """Single-segment records -> their windows (ids <id>#<k>, with ChunkInfo): a text that fits is one window,
    packed exactly as `pack` packs it; a longer one is split into windows of seq_length - 2 wordpieces sharing
    `stride` pieces. Raises on failure."""
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    window = self._seq_length - 2
    with tf.device("/CPU:0"):
      pieces = self._pre.tokenize(tf.constant([r.text for r in records])).merge_dims(-2, -1)
      lengths = pieces.row_lengths().numpy()
      flat = pieces.flat_values.numpy()
    starts = np.concatenate([[0], np.cumsum(lengths)])
    spans, owners = [], []
    for i, r in enumerate(records):
      bounds = chunking.window_bounds(int(lengths[i]), window, stride)
      for k, (a, b) in enumerate(bounds):
        spans.append((starts[i] + a, starts[i] + b))
        owners.append((i, k, a, b, len(bounds)))
    with tf.device("/CPU:0"):
      values = np.concatenate([flat[a:b] for a, b in spans]) if spans else np.zeros([0], flat.dtype)
      ragged = tf.RaggedTensor.from_row_lengths(tf.constant(values, tf.int32), [b - a for a, b in spans])
      packed = self._pre.bert_pack_inputs([ragged], seq_length=tf.constant(self._seq_length, tf.int32))
    word_ids = packed["input_word_ids"].numpy().astype(np.int32)
    mask = packed["input_mask"].numpy().astype(np.int32)
    type_ids = packed["input_type_ids"].numpy().astype(np.int32)
    out = [[] for _ in records]
    for j, (i, k, a, b, n) in enumerate(owners):
      r = records[i]
      info = chunking.ChunkInfo(r.id, k, a, b, n)
      r = r._replace(id=chunking.window_id(r.id, k))
      out[i].append(EncoderInput(record=r, input_word_ids=word_ids[j], input_mask=mask[j], input_type_ids=type_ids[j],
                                 num_tokens=int(mask[j].sum()), truncated=bool(records[i].truncated), chunk=info))
    return out


class _PreprocessBatchFn(beam.DoFn):
  """Packs a batch of TextRecords; a record that fails alone, or has no tokens, is dead-lettered."""

  def __init__(self, preprocessor_path: str, config: EmbedConfig):
    self._path = preprocessor_path
    self._seq_length = config.seq_length
    self._chunk_stride = config.window_stride  # None: truncate long texts; else split them into windows
    self._shared = shared.Shared()
    self._tokenizer = None
    self._packed = beam.metrics.Metrics.counter(NAMESPACE, "records_preprocessed")
    self._truncated = beam.metrics.Metrics.counter(NAMESPACE, "records_truncated")
    self._failed = beam.metrics.Metrics.counter(NAMESPACE, "records_dead_lettered_preprocess")
    self._latency = beam.metrics.Metrics.distribution(NAMESPACE, "preprocess_batch_latency_micro_secs")
    self._windows = beam.metrics.Metrics.counter(NAMESPACE, "windows_packed")

  def setup(self):
    model = self._shared.acquire(lambda: load_preprocessor(self._path), tag=self._path)
    self._model = model  # keep the shared object alive while this DoFn lives
    self._tokenizer = Tokenizer(model.obj, self._seq_length)

  def process(self, batch: Sequence[TextRecord]) -> Iterable:
    # Outputs are collected first: a generator's downstream (fused bucketing and encoding) would run inside the
    # timed span and make the latency metric mostly encoder time.
    start = time.perf_counter()
    outputs = list(self._pack_batch(batch))
    self._latency.update(int((time.perf_counter() - start) * 1e6))
    return outputs

  def _pack_batch(self, batch: Sequence[TextRecord]) -> Iterable:
    with_pair = [r for r in batch if r.text_pair is not None]
    without = [r for r in batch if r.text_pair is None]
    for group in (without, with_pair):
      if not group:
        continue
      if self._chunk_stride is not None and group is without:
        pack = lambda rs: self._tokenizer.pack_windows(rs, self._chunk_stride)  # pylint: disable=cell-var-from-loop
      else:
        pack = lambda rs: [[p] for p in self._tokenizer.pack(rs)]
      for record, windows, error in bisect.run_isolating_failures(group, pack):
        if error is not None:
          self._failed.inc()
          yield beam.pvalue.TaggedOutput(DEAD_LETTER, DeadLetter.make(
              record.id, record.source, "preprocess", bisect.describe(error), record.text))
        elif windows[0].num_tokens <= (2 if record.text_pair is None else 3):  # only [CLS]/[SEP]: no text left
          self._failed.inc()
          yield beam.pvalue.TaggedOutput(DEAD_LETTER, DeadLetter.make(
              record.id, record.source, "preprocess", "text has no tokens after tokenizing", record.text))
        else:
          self._packed.inc()
          if windows[0].truncated:
            self._truncated.inc()
          if windows[0].chunk is not None:
            self._windows.inc(len(windows))
          yield from windows


class Preprocess(beam.PTransform):
  """PCollection[TextRecord] -> (PCollection[EncoderInput], PCollection[DeadLetter]), packed as `config` says
  (seq_length, preprocess_batch_size, long_text)."""

  def __init__(self, preprocessor_path: str, config: EmbedConfig = EmbedConfig()):
    super().__init__()
    self._path = preprocessor_path
    self._config = config

  def expand(self, records):
    size = self._config.preprocess_batch_size
    results = (
        records
        # Fixed-size batches (the last of a bundle is smaller). Adaptive sizing would time each batch together with
        # the encoder fused after it, judge large batches slow and shrink them to ~13 texts, where each call's fixed
        # cost (~15 ms) made tokenizing ~15% of the job instead of ~1%.
        | "BatchForTokenizer" >> beam.BatchElements(min_batch_size=size, max_batch_size=size)
        | "TokenizeAndPack" >> beam.ParDo(_PreprocessBatchFn(self._path, self._config)).with_outputs(
            DEAD_LETTER, main="packed"))
    return results.packed, results[DEAD_LETTER]
