"""Text -> packed BERT inputs with the preprocessor SavedModel's own tokenizer and packer (CPU, TensorFlow)."""
from __future__ import annotations

from typing import Sequence

import numpy as np

from runtime import text_windows
from formats.records import EncoderInput, TextRecord


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

    The batch is padded with empty texts to a power of two: a loaded packer pays time and memory for every new
    batch size it sees, and the last batch of each bundle and the halves of a bisected batch come in every size
    (benchmarks/RESULTS.md, "Scale").
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
      bounds = text_windows.window_bounds(int(lengths[i]), window, stride)
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
      info = text_windows.ChunkInfo(r.id, k, a, b, n)
      r = r._replace(id=text_windows.window_id(r.id, k))
      out[i].append(EncoderInput(record=r, input_word_ids=word_ids[j], input_mask=mask[j], input_type_ids=type_ids[j],
                                 num_tokens=int(mask[j].sum()), truncated=bool(records[i].truncated), chunk=info))
    return out
