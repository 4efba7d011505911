"""The BERT preprocessor SavedModel: text -> packed int32 encoder inputs.

Loading it needs `import tensorflow_text` first (its ops are TF Text custom
ops). Interface, as in TF Hub `bert_*_preprocess`:
  preprocessor(strings [B]) -> {input_word_ids, input_mask, input_type_ids}
    int32 [B, seq_length];
  preprocessor.tokenize(strings [B]) -> int32 RaggedTensor [B, (words),
    (pieces)]; preprocessor.tokenize.get_special_tokens_dict() -> int32
    scalars;
  preprocessor.bert_pack_inputs([seg_a] or [seg_a, seg_b], seq_length=...)
    -> the same dict, int32 [B, seq_length].
"""

from typing import Dict, List, Optional, Sequence

import tensorflow as tf
import tensorflow_text as text

SUFFIX_INDICATOR = "##"
MAX_BYTES_PER_WORD = 100
UNKNOWN_TOKEN = "[UNK]"


class WordpieceTokenize(tf.Module):
  """Basic + WordPiece tokenization over a vocab asset.

  Call: strings [B] -> int32 RaggedTensor [B, (words), (pieces)].
  """

  def __init__(self, vocab_asset: tf.saved_model.Asset, lower_case: bool,
               special_ids: Dict[str, int], vocab_size: int):
    super().__init__(name="tokenize")
    initializer = tf.lookup.TextFileInitializer(
        vocab_asset, tf.string, tf.lookup.TextFileIndex.WHOLE_LINE,
        tf.int64, tf.lookup.TextFileIndex.LINE_NUMBER)
    self._vocab_table = tf.lookup.StaticHashTable(initializer,
                                                  default_value=-1)
    self._tokenizer = text.BertTokenizer(
        self._vocab_table, suffix_indicator=SUFFIX_INDICATOR,
        max_bytes_per_word=MAX_BYTES_PER_WORD, token_out_type=tf.int64,
        unknown_token=UNKNOWN_TOKEN, lower_case=lower_case)
    self._special = {
        "vocab_size": vocab_size,
        "start_of_sequence_id": special_ids["start_of_sequence_id"],
        "end_of_segment_id": special_ids["end_of_segment_id"],
        "padding_id": special_ids["padding_id"],
        "mask_id": special_ids["mask_id"],
    }

  @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
  def __call__(self, strings):
    return tf.cast(self._tokenizer.tokenize(strings), tf.int32)

  @tf.function(input_signature=[])
  def get_special_tokens_dict(self):
    """-> {vocab_size, start_of_sequence_id, end_of_segment_id, padding_id,
    mask_id}, int32 scalars."""
    return {k: tf.constant(v, tf.int32) for k, v in self._special.items()}


class BertPackInputs(tf.Module):
  """Trims segments round-robin, joins them with [CLS]/[SEP], pads.

  Call: list of 1 or 2 int32 RaggedTensors [B, (pieces)] or [B, (words),
  (pieces)], seq_length int32 scalar -> dict of int32 [B, seq_length].

  The same outputs as TF Text's RoundRobinTrimmer, combine_segments and
  pad_model_inputs, computed from each row's piece offsets with a few gathers
  and selects: their traces held ~800 nodes each (ragged checks, ragged
  concatenation), these ~100, and loading a SavedModel costs time per node
  (the 12 saved traces made the default model's preprocessor load in ~2.4 s;
  benchmarks/RESULTS.md, "Start-up (issue 26 item 12)").
  """

  def __init__(self, special_ids: Dict[str, int], default_seq_length: int):
    super().__init__(name="bert_pack_inputs")
    self._cls_id = special_ids["start_of_sequence_id"]
    self._sep_id = special_ids["end_of_segment_id"]
    self._pad_id = special_ids["padding_id"]
    self.default_seq_length = default_seq_length

  def __call__(self, segments: Sequence[tf.RaggedTensor],
               seq_length: Optional[tf.Tensor] = None) -> Dict[str, tf.Tensor]:
    static_length = None
    if seq_length is None:
      seq_length = static_length = self.default_seq_length
    seq_length = tf.cast(seq_length, tf.int32)
    pieces = [_flat_pieces(segment) for segment in segments]
    num_specials = len(pieces) + 1
    tf.debugging.assert_greater_equal(
        seq_length, num_specials,
        message="seq_length too small for [CLS] and one [SEP] per segment")
    kept = _round_robin([lengths for _, _, lengths in pieces],
                        seq_length - num_specials)
    positions = tf.range(seq_length)[tf.newaxis, :]  # [1, L]
    word_ids = tf.where(positions == 0, self._cls_id, self._pad_id)
    word_ids = tf.broadcast_to(word_ids, [tf.shape(kept[0])[0], seq_length])
    type_ids = tf.zeros_like(word_ids)
    offset = tf.ones_like(kept[0])[:, tf.newaxis]  # where the segment starts
    for i, ((values, starts, _), count) in enumerate(zip(pieces, kept)):
      count = count[:, tf.newaxis]
      inside = (positions >= offset) & (positions < offset + count)
      # One padding value after the pieces: indices stay valid when a batch
      # has no pieces; the selects below drop what it fills in.
      values = tf.concat([values, tf.zeros([1], tf.int32)], 0)
      index = tf.clip_by_value(starts[:, tf.newaxis] + positions - offset, 0,
                               tf.shape(values)[0] - 1)
      word_ids = tf.where(inside, tf.gather(values, index), word_ids)
      word_ids = tf.where(positions == offset + count, self._sep_id, word_ids)
      if i:
        type_ids = tf.where(
            (positions >= offset) & (positions <= offset + count), i, type_ids)
      offset += count + 1
    outputs = {
        "input_word_ids": word_ids,
        "input_mask": tf.cast(positions < offset, tf.int32),
        "input_type_ids": type_ids,
    }
    if static_length is not None:
      outputs = {k: tf.ensure_shape(v, [None, static_length])
                 for k, v in outputs.items()}
    return outputs


def _flat_pieces(segment):
  """(int32 piece values [N], each row's first piece [B], its piece count [B])
  of a segment [B, (pieces)] or [B, (words), (pieces)]."""
  if not isinstance(segment, tf.RaggedTensor):
    segment = tf.RaggedTensor.from_tensor(segment)
  splits = segment.row_splits
  for inner in segment.nested_row_splits[1:]:
    splits = tf.gather(inner, splits)
  splits = tf.cast(splits, tf.int32)
  return (tf.cast(segment.flat_values, tf.int32), splits[:-1],
          splits[1:] - splits[:-1])


def _round_robin(lengths, budget):
  """Pieces kept per row and segment when 1 or 2 segments take turns, the
  first one first, until `budget` pieces or all pieces are taken."""
  if len(lengths) == 1:
    return [tf.minimum(lengths[0], budget)]
  if len(lengths) != 2:
    raise ValueError(
        f"bert_pack_inputs packs 1 or 2 segments, not {len(lengths)}")
  first, second = lengths
  kept_first = tf.minimum(
      first, tf.maximum(budget - second, (budget + 1) // 2))
  return [kept_first, tf.minimum(second, budget - kept_first)]


def _ragged_spec(rank: int) -> tf.RaggedTensorSpec:
  return tf.RaggedTensorSpec([None] * rank, tf.int32, ragged_rank=rank - 1)


class BertPreprocessor(tf.Module):
  """Root of the preprocessor SavedModel (see the module docstring)."""

  def __init__(self, vocab_file: str, lower_case: bool, seq_length: int,
               special_ids: Dict[str, int], vocab_size: int,
               extra_assets: Sequence[str] = (),
               trace_all_signatures: bool = True):
    """Builds the module.

    Args:
      vocab_file: WordPiece vocab, shipped as an asset.
      lower_case: lower-case, NFD-normalise and strip accents (uncased).
      seq_length: default packed length.
      special_ids: from `modeling.vocab.special_token_ids`.
      vocab_size: number of vocab lines.
      extra_assets: further files to ship in `assets/`.
      trace_all_signatures: trace every `bert_pack_inputs` signature now (needed
        before saving; in-process use can skip it and trace on demand).
    """
    super().__init__(name="bert_preprocessor")
    self.vocab_file = tf.saved_model.Asset(vocab_file)
    self.extra_assets = [tf.saved_model.Asset(p) for p in extra_assets]
    self.seq_length = seq_length
    self.lower_case = lower_case
    self.tokenize = WordpieceTokenize(self.vocab_file, lower_case, special_ids,
                                      vocab_size)
    self._packer = BertPackInputs(special_ids, seq_length)
    self.bert_pack_inputs = tf.function(self._packer.__call__)
    if trace_all_signatures:
      self._trace_pack_signatures()

  def _trace_pack_signatures(self) -> None:
    """Creates the concrete functions saved with `bert_pack_inputs`: 1 or 2
    segments, each ragged rank 1 or 2, with and without `seq_length`."""
    combos: List[List[tf.RaggedTensorSpec]] = [[_ragged_spec(r)]
                                               for r in (2, 3)]
    combos += [[_ragged_spec(a), _ragged_spec(b)]
               for a in (2, 3) for b in (2, 3)]
    for specs in combos:
      self.bert_pack_inputs.get_concrete_function(specs)
      self.bert_pack_inputs.get_concrete_function(
          specs, seq_length=tf.TensorSpec([], tf.int32))

  @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
  def __call__(self, strings):
    return self._packer([self.tokenize(strings)])
