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
    flat = []
    for segment in segments:
      if isinstance(segment, tf.RaggedTensor):
        # int32 row splits, before any ragged op: TF guards an assertion on int64 tensors with a cond (two
        # functions per check), not one on int32 ones; with TF Text's ragged checks this keeps the saved
        # preprocessor to a tenth of the functions, smaller and faster to load (benchmarks/RESULTS.md), with the
        # same outputs.
        segment = segment.with_row_splits_dtype(tf.int32)
        if segment.ragged_rank > 1:
          segment = segment.merge_dims(1, -1)
      flat.append(tf.cast(segment, tf.int32))
    num_specials = len(flat) + 1
    tf.debugging.assert_greater_equal(
        seq_length, num_specials,
        message="seq_length too small for [CLS] and one [SEP] per segment")
    trimmed = text.RoundRobinTrimmer(seq_length - num_specials).trim(flat)
    word_ids, type_ids = text.combine_segments(
        trimmed, start_of_sequence_id=self._cls_id,
        end_of_segment_id=self._sep_id)
    padded_ids, mask = text.pad_model_inputs(word_ids, seq_length,
                                             pad_value=self._pad_id)
    padded_types, _ = text.pad_model_inputs(type_ids, seq_length,
                                            pad_value=0)
    outputs = {
        "input_word_ids": tf.cast(padded_ids, tf.int32),
        "input_mask": tf.cast(mask, tf.int32),
        "input_type_ids": tf.cast(padded_types, tf.int32),
    }
    if static_length is not None:
      outputs = {k: tf.ensure_shape(v, [None, static_length])
                 for k, v in outputs.items()}
    return outputs


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
