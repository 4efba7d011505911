"""Tests for the preprocessor SavedModel: tokenization, packing, trimming."""

import os

import hypothesis
from hypothesis import strategies as st
import pytest
import tensorflow as tf
import tensorflow_text  # pylint: disable=unused-import

from modeling import preprocessor as preprocessor_lib
from modeling import vocab as vocab_lib

CLS, SEP, PAD, MASK, UNK = 2, 3, 0, 4, 1
SEQ_LENGTH = 32  # tiny_model_dir's export seq_length


@pytest.fixture(scope="module")
def pre(tiny_model_dir):
  return tf.saved_model.load(os.path.join(tiny_model_dir, "preprocessor"))


@pytest.fixture(scope="module")
def token_id(tiny_vocab_file):
  tokens = vocab_lib.read_vocab(tiny_vocab_file)
  index = {t: i for i, t in enumerate(tokens)}
  return index.__getitem__


def brute_force_pack(segments, seq_length):
  """Reference packing of one example.

  Args:
    segments: list of 1 or 2 lists of piece ids.
    seq_length: output length.

  Returns:
    (word_ids, mask, type_ids) as lists of length seq_length.
  """
  budget = seq_length - (len(segments) + 1)
  kept = [0] * len(segments)
  progress = True
  while progress:
    progress = False
    for i, segment in enumerate(segments):
      if sum(kept) < budget and kept[i] < len(segment):
        kept[i] += 1
        progress = True
  ids, types = [CLS], [0]
  for i, segment in enumerate(segments):
    ids += list(segment[:kept[i]]) + [SEP]
    types += [i] * (kept[i] + 1)
  padding = seq_length - len(ids)
  return (ids + [PAD] * padding, [1] * len(ids) + [0] * padding,
          types + [0] * padding)


def _check_packed(packed, examples, seq_length):
  """examples: per example, list of segments, each a list of words (lists)."""
  assert set(packed) == {"input_word_ids", "input_mask", "input_type_ids"}
  for key, value in packed.items():
    assert value.dtype == tf.int32, key
    assert value.shape == (len(examples), seq_length), key
  for row, segments in enumerate(examples):
    flat = [[p for word in seg for p in word] for seg in segments]
    ids, mask, types = brute_force_pack(flat, seq_length)
    assert packed["input_word_ids"][row].numpy().tolist() == ids
    assert packed["input_mask"][row].numpy().tolist() == mask
    assert packed["input_type_ids"][row].numpy().tolist() == types


def test_special_tokens_dict(pre, tiny_vocab_file):
  special = {k: v.numpy() for k, v in
             pre.tokenize.get_special_tokens_dict().items()}
  assert special == {
      "vocab_size": len(vocab_lib.read_vocab(tiny_vocab_file)),
      "start_of_sequence_id": CLS, "end_of_segment_id": SEP,
      "padding_id": PAD, "mask_id": MASK}
  for value in pre.tokenize.get_special_tokens_dict().values():
    assert value.dtype == tf.int32 and value.shape == ()


def test_tokenize_returns_words_and_pieces(pre, token_id):
  tokens = pre.tokenize(tf.constant(["the cats sat.", "Hello, WORLD!", ""]))
  assert isinstance(tokens, tf.RaggedTensor)
  assert tokens.dtype == tf.int32
  assert tokens.shape.rank == 3 and tokens.ragged_rank == 2
  assert tokens.to_list() == [
      [[token_id("the")], [token_id("cat"), token_id("##s")],
       [token_id("sat")], [token_id(".")]],
      [[token_id("hello")], [token_id(",")], [token_id("world")],
       [token_id("!")]],
      []]


def test_unknown_words_become_unk(pre):
  assert pre.tokenize(tf.constant(["qqqq"])).to_list() == [[[UNK]]]


def test_uncased_strips_case_and_accents(pre, token_id):
  assert pre.tokenize(tf.constant(["CAFÉ Café"])).to_list() == [
      [[token_id("cafe")], [token_id("cafe")]]]


def test_root_call_packs_tokenize_output(pre):
  texts = ["the quick brown fox is over the lazy dog " * 6, "hello", ""]
  packed = pre(tf.constant(texts))
  tokens = pre.tokenize(tf.constant(texts)).to_list()
  _check_packed(packed, [[t] for t in tokens], SEQ_LENGTH)
  # The long text is trimmed to seq_length - 2 pieces, then [SEP].
  assert packed["input_mask"][0].numpy().sum() == SEQ_LENGTH
  assert packed["input_word_ids"][0, -1] == SEP


@pytest.mark.parametrize("seq_length", [5, 10, 64])
def test_seq_length_override(pre, seq_length):
  texts = tf.constant(["the cat sat on the mat", "a dog is good"])
  tokens = pre.tokenize(texts)
  for override in (seq_length, tf.constant(seq_length, tf.int32)):
    packed = pre.bert_pack_inputs([tokens, tokens], seq_length=override)
    _check_packed(packed, [[t, t] for t in tokens.to_list()], seq_length)


def test_default_seq_length_without_argument(pre):
  tokens = pre.tokenize(tf.constant(["the cat"]))
  packed = pre.bert_pack_inputs([tokens])
  assert packed["input_word_ids"].shape == (1, SEQ_LENGTH)


def test_seq_length_too_small_fails(pre):
  tokens = pre.tokenize(tf.constant(["the cat"]))
  with pytest.raises(tf.errors.InvalidArgumentError):
    pre.bert_pack_inputs([tokens, tokens], seq_length=2)


_WORD = st.lists(st.integers(5, 150), min_size=1, max_size=3)
_SEGMENT = st.lists(_WORD, max_size=8)


@hypothesis.settings(max_examples=40, deadline=None,
                     suppress_health_check=[
                         hypothesis.HealthCheck.function_scoped_fixture])
@hypothesis.given(
    examples=st.integers(1, 2).flatmap(
        lambda n: st.lists(st.lists(_SEGMENT, min_size=n, max_size=n),
                           min_size=1, max_size=4)),
    seq_length=st.integers(3, 24),
    word_level=st.lists(st.booleans(), min_size=2, max_size=2))
def test_pack_matches_brute_force(pre, examples, seq_length, word_level):
  segments = []
  for i in range(len(examples[0])):
    rows = [example[i] for example in examples]
    if word_level[i]:  # [B, (words), (pieces)], as tokenize returns
      segments.append(tf.ragged.constant(rows, dtype=tf.int32, ragged_rank=2,
                                         inner_shape=()))
    else:  # [B, (pieces)]
      segments.append(tf.ragged.constant(
          [[p for word in row for p in word] for row in rows],
          dtype=tf.int32, ragged_rank=1))
  packed = pre.bert_pack_inputs(segments, seq_length=seq_length)
  _check_packed(packed, examples, seq_length)


def test_round_robin_trimming_of_a_pair(pre):
  long, short = list(range(10, 110)), [7, 8, 9]
  a = tf.ragged.constant([long, short], dtype=tf.int32)
  b = tf.ragged.constant([short, long], dtype=tf.int32)
  packed = pre.bert_pack_inputs([a, b], seq_length=20)
  ids = packed["input_word_ids"].numpy().tolist()
  # Budget 17: the short segment keeps all 3 pieces, the long one 14.
  assert ids[0] == [CLS] + long[:14] + [SEP] + short + [SEP]
  assert ids[1] == [CLS] + short + [SEP] + long[:14] + [SEP]
  assert packed["input_type_ids"].numpy()[0].tolist() == [0] * 16 + [1] * 4


def _local_preprocessor(tmp_path, lower_case):
  tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "Hello", "hello",
            "Café", "café", "cafe", "HELLO", "!"]
  path = tmp_path / "vocab.txt"
  path.write_text("".join(t + "\n" for t in tokens), encoding="utf-8")
  special = vocab_lib.special_token_ids(tokens, str(path))
  module = preprocessor_lib.BertPreprocessor(
      str(path), lower_case, 8, special, len(tokens),
      trace_all_signatures=False)
  return module, {t: i for i, t in enumerate(tokens)}


@pytest.mark.parametrize("lower_case", [False, True])
def test_cased_keeps_case_and_accents(tmp_path, lower_case):
  module, ids = _local_preprocessor(tmp_path, lower_case)
  words = module.tokenize(tf.constant(["Hello HELLO hello Café café cafe!"]))
  got = [w[0] for w in words.to_list()[0]]
  if lower_case:
    expected = ["hello", "hello", "hello", "cafe", "cafe", "cafe", "!"]
  else:
    expected = ["Hello", "HELLO", "hello", "Café", "café", "cafe", "!"]
  assert got == [ids[t] for t in expected]


def test_packing_traces_are_small_and_hold_no_guarded_assertions(tiny_model_dir):
  """Packing runs on int32 row splits: TF's ragged checks then need no cond (an If and two branch functions) per
  check, so the SavedModel is smaller and loads faster. Only the tokenizer's own function (TF Text's int64 row
  splits) keeps Ifs; the 12 bert_pack_inputs traces and the root call hold none. test_pack_matches_brute_force
  checks the outputs."""
  from tensorflow.core.protobuf import saved_model_pb2  # pylint: disable=import-outside-toplevel
  saved = saved_model_pb2.SavedModel()
  with open(os.path.join(tiny_model_dir, "preprocessor", "saved_model.pb"), "rb") as f:
    saved.ParseFromString(f.read())
  library = saved.meta_graphs[0].graph_def.library.function
  with_ifs = [fn.signature.name for fn in library
              if fn.signature.name.startswith("__inference")
              and any(n.op in ("If", "StatelessIf") for n in fn.node_def)]
  traces = [fn for fn in library if fn.signature.name.startswith("__inference___call__")]
  assert len(traces) >= 13 and len(with_ifs) <= 1, with_ifs
  # Loading costs time per node: TF Text's trimmer, combine_segments and pad_model_inputs made ~800 per packing trace,
  # the packer's gathers and selects make fewer than 200 (benchmarks/RESULTS.md, "Start-up (issue 26 item 12)").
  assert max(len(fn.node_def) for fn in traces) < 250, sorted(len(fn.node_def) for fn in traces)
