"""Token-id parity of the exported preprocessors with the `tokenizers` package.

The reference is Hugging Face `tokenizers`' BERT WordPiece pipeline built from
the same vocab.txt. Where TF Text's BertTokenizer (which the TF Hub
preprocessor uses) knowingly behaves differently, the difference is asserted
explicitly, both sides spelled out, instead of being skipped.
"""

import os

import numpy as np
import pytest
import tensorflow as tf
from tokenizers import BertWordPieceTokenizer
from tokenizers import Tokenizer

SEQ = 128

LONG_TEXT = " ".join(
    f"Paragraph {i}: tokenizers split words into word pieces, e.g. unaffable."
    for i in range(25))

# Texts on which TF Text and `tokenizers` must give identical ids.
AGREE_TEXTS = (
    "The quick brown fox jumps over the lazy dog.",
    "Hello, World! HELLO world hello.",
    "I'd like a café au lait, naïve as that sounds, in Zürich.",
    "Naïve résumé coöperate façade jalapeño Ærøskøbing ÅNGSTRÖM",
    "Crème brûlée à la française",
    "東京は日本の首都です",
    "北京欢迎你。上海也欢迎你「東京」",
    "한국어 텍스트도 있습니다",
    "Привет, как дела? Ёлка!",
    "Ελληνικά: ΑΒΓ αβγ",
    "I love pizza 🍕 and tacos 🌮!!! 😀👍🏽",
    "Visit https://example.com/path?q=bert&lang=en#top for details.",
    "Mail me at first.last+tag@sub.example.org, thanks.",
    "Pi is 3.14159, e is 2.71828 and 1,000,000 is a million.",
    "Prices: $5.99, €12,50, ¥1000 (tax incl.) - 20% off!!!",
    "What?!?! No way...... Really???",
    "---***+++===<<<>>>",
    "MiXeD CaSe TeXt WiTh ODD capitalisation",
    "tabs\tand\nnewlines\r\nand   multiple    spaces  ",
    "don't can't won't it's O'Neill's rock'n'roll",
    "C++ and C# are languages; so is F#.",
    "He said \"hello\" and she said 'goodbye' — “quoted” «guillemets».",
    "x",
    "",
    "   ",
    "antidisestablishmentarianism supercalifragilisticexpialidocious",
    "unaffable unbelievably tokenization",
    "İstanbul and ΣΊΣΥΦΟΣ in capitals",
    "nbsp\u00a0and\u3000ideographic space",
    "zero\u200bwidth and soft\u00adhyphen",
    "@mention #hashtag $TICKER ~tilde `backtick` ^caret |pipe| \\slash",
    "e\u0301 decomposed accent",
    "x" * 100,
    "x" * 101,
    "ж" * 50,
    LONG_TEXT,
)

# Uncased (lower_case=True): TF Text case-folds with NFKC (ICU
# NFKC_Casefold) before NFD + dropping Mn marks, and replaces control
# characters by spaces; `tokenizers` lower-cases without NFKC and drops
# control characters and U+FFFD. Each entry: text -> (TF Text tokens,
# `tokenizers` tokens).
UNCASED_DIFFERENCES = {
    # NFKC compatibility decompositions.
    "ﬁne": (["fine"], ["ﬁ", "##ne"]),
    "ﬀ": (["ff"], ["[UNK]"]),
    "Ｆｕｌｌ width": (["full", "width"], ["[UNK]", "width"]),
    "北京，上海！": (["北", "京", ",", "上", "海", "!"],
                ["北", "京", "，", "上", "海", "！"]),  # fullwidth punctuation
    "…": ([".", ".", "."], ["…"]),
    "½ ™ ²": (["1", "##⁄", "##2", "t", "##m", "2"], ["½", "™", "²"]),
    "①": (["1"], ["[UNK]"]),
    "Ǆ": (["d", "##z"], ["[UNK]"]),
    "µ": (["μ"], ["µ"]),  # MICRO SIGN -> GREEK SMALL LETTER MU.
    # Full case folding, not lower-casing.
    "Straße": (["st", "##ras", "##se"], ["st", "##raße"]),
    "ẞ": (["ss"], ["ß"]),
    "ς": (["σ"], ["ς"]),  # final sigma folds to sigma.
    # Control characters: TF splits the word, `tokenizers` deletes them.
    "ctl\x07bell": (["ct", "##l", "bell"], ["ct", "##lb", "##ell"]),
    "a\x00b": (["a", "b"], ["ab"]),
    # U+FFFD is kept (unknown word) by TF, deleted by `tokenizers`.
    "a\ufffdb": (["[UNK]"], ["ab"]),
}

# Words longer than 100 BYTES are [UNK] in TF Text (max_bytes_per_word=100);
# `tokenizers` counts 100 CHARACTERS. 51 Cyrillic letters = 102 bytes.
BYTE_LIMIT_TEXT = "ж" * 51

# Cased texts on which both agree with lower_case=False / strip_accents=False.
CASED_AGREE_TEXTS = (
    "Hello World",
    "hello world HELLO",
    "Café café cafe",
    "Zürich zurich naïve naive",
    "Straße strasse Ünïcode",
    "The quick brown fox jumps over the lazy dog.",
    "New York, new york; Paris/paris!",
    "HELLOing worlded Foxes",
    "Ñandú Çà",
    "tab\there\nnewline",
    "x" * 101,
    "",
)

# Cased (lower_case=False): no normalization at all in TF Text, so
#  - only ASCII whitespace splits words (RE2's \s); Unicode spaces such as
#    NBSP, U+3000, U+2009, U+2028 do not, while `tokenizers` splits on them;
#  - control (Cc) and format (Cf) characters become spaces in TF Text, while
#    `tokenizers` deletes them (no NFKC here to remove U+200B first).
CASED_DIFFERENCES = {
    "Hello\u00a0World": (["[UNK]"], ["Hello", "World"]),
    "Hello\u3000World": (["[UNK]"], ["Hello", "World"]),
    "Hello\u2009World": (["[UNK]"], ["Hello", "World"]),
    "Hello\u2028World": (["[UNK]"], ["Hello", "World"]),
    "Hello\u200bWorld": (["Hello", "World"], ["Hello", "##W", "##o", "##r",
                                              "##l", "##d"]),
    "dog\x0bfox": (["dog", "fox"], ["dog", "##f", "##o", "##x"]),
    "a\ufffdb": (["[UNK]"], ["a", "##b"]),
}


def _np(x):
  return x.numpy() if hasattr(x, "numpy") else np.asarray(x)


def _flat_ids(preprocessor, text):
  ragged = preprocessor.tokenize(tf.constant([text]))
  return [int(i) for i in ragged.flat_values.numpy()]


@pytest.fixture(scope="module")
def vocab(bert_reference, minilm_source_dir):
  return bert_reference.read_vocab(
      os.path.join(minilm_source_dir, "vocab.txt"))


@pytest.fixture(scope="module")
def hf_uncased(minilm_source_dir):
  return BertWordPieceTokenizer(
      os.path.join(minilm_source_dir, "vocab.txt"), lowercase=True,
      strip_accents=True, clean_text=True, handle_chinese_chars=True)


@pytest.fixture(scope="module")
def hf_cased(ref_cased_checkpoint):
  return BertWordPieceTokenizer(
      os.path.join(ref_cased_checkpoint, "vocab.txt"), lowercase=False,
      strip_accents=False, clean_text=True, handle_chinese_chars=True)


@pytest.fixture(scope="module")
def cased_vocab(bert_reference, ref_cased_checkpoint):
  return bert_reference.read_vocab(
      os.path.join(ref_cased_checkpoint, "vocab.txt"))


@pytest.fixture(scope="module")
def minilm_pre(ref_minilm_export):
  return ref_minilm_export.preprocessor


@pytest.fixture(scope="module")
def special(minilm_pre):
  return {k: int(_np(v)) for k, v in
          minilm_pre.tokenize.get_special_tokens_dict().items()}


def _hf_ids(hf, text):
  return hf.encode(text, add_special_tokens=False).ids


# -- uncased (MiniLM vocab) ---------------------------------------------------


def test_hf_reference_equals_shipped_tokenizer_json(minilm_source_dir,
                                                   hf_uncased):
  """The hand-built reference is the one sentence-transformers ships."""
  shipped = Tokenizer.from_file(
      os.path.join(minilm_source_dir, "tokenizer.json"))
  shipped.no_padding()
  shipped.no_truncation()
  for text in AGREE_TEXTS + tuple(UNCASED_DIFFERENCES):
    assert (shipped.encode(text, add_special_tokens=False).ids ==
            _hf_ids(hf_uncased, text)), text


def test_special_tokens_dict(special, vocab):
  assert special["vocab_size"] == len(vocab) == 30522
  assert vocab[special["start_of_sequence_id"]] == "[CLS]"
  assert vocab[special["end_of_segment_id"]] == "[SEP]"
  assert vocab[special["padding_id"]] == "[PAD]"
  assert vocab[special["mask_id"]] == "[MASK]"


@pytest.mark.parametrize("text", AGREE_TEXTS, ids=range(len(AGREE_TEXTS)))
def test_tokenize_matches_hf(minilm_pre, hf_uncased, vocab, text):
  got = _flat_ids(minilm_pre, text)
  want = _hf_ids(hf_uncased, text)
  assert [vocab[i] for i in got] == [vocab[i] for i in want]


def test_tokenize_word_grouping_matches_hf(minilm_pre, hf_uncased):
  """.tokenize is [batch, words, pieces]; words are the pre-tokenizer's."""
  ragged = minilm_pre.tokenize(tf.constant(AGREE_TEXTS))
  assert ragged.shape.rank == 3
  for text, words in zip(AGREE_TEXTS, ragged.to_list()):
    enc = hf_uncased.encode(text, add_special_tokens=False)
    grouped = {}
    for token_id, word in zip(enc.ids, enc.word_ids):
      grouped.setdefault(word, []).append(token_id)
    assert words == [grouped[w] for w in sorted(grouped)], text


def test_packed_inputs_match_hf(minilm_pre, hf_uncased):
  """The root call equals `tokenizers` + [CLS]/[SEP], trimmed/padded to 128."""
  hf_uncased.enable_truncation(SEQ)
  hf_uncased.enable_padding(length=SEQ)
  try:
    encodings = hf_uncased.encode_batch(list(AGREE_TEXTS))
  finally:
    hf_uncased.no_truncation()
    hf_uncased.no_padding()
  out = {k: _np(v) for k, v in minilm_pre(tf.constant(AGREE_TEXTS)).items()}
  np.testing.assert_array_equal(out["input_word_ids"],
                                [e.ids for e in encodings])
  np.testing.assert_array_equal(out["input_mask"],
                                [e.attention_mask for e in encodings])
  np.testing.assert_array_equal(out["input_type_ids"],
                                [e.type_ids for e in encodings])
  assert out["input_mask"][AGREE_TEXTS.index(LONG_TEXT)].sum() == SEQ


@pytest.mark.parametrize("text", sorted(UNCASED_DIFFERENCES))
def test_uncased_documented_differences(minilm_pre, hf_uncased, vocab, text):
  tf_tokens, hf_tokens = UNCASED_DIFFERENCES[text]
  assert [vocab[i] for i in _flat_ids(minilm_pre, text)] == tf_tokens
  assert [vocab[i] for i in _hf_ids(hf_uncased, text)] == hf_tokens


def test_word_length_limit_is_100_bytes(minilm_pre, hf_uncased, special,
                                        vocab):
  unk = vocab.index("[UNK]")
  assert _flat_ids(minilm_pre, "x" * 101) == [unk]
  assert unk not in _flat_ids(minilm_pre, "x" * 100)
  assert unk not in _flat_ids(minilm_pre, "ж" * 50)  # exactly 100 bytes
  assert len(BYTE_LIMIT_TEXT.encode("utf-8")) == 102
  assert _flat_ids(minilm_pre, BYTE_LIMIT_TEXT) == [unk]
  # `tokenizers` counts characters (51 <= 100) and splits the word.
  hf_ids = _hf_ids(hf_uncased, BYTE_LIMIT_TEXT)
  assert unk not in hf_ids and len(hf_ids) > 1
  assert special["vocab_size"] == len(vocab)


# -- bert_pack_inputs ---------------------------------------------------------

PACK_SEGMENTS_A = ("The quick brown fox jumps over the lazy dog.",
                   "unaffable unbelievably tokenization " * 6, "", "x",
                   "東京は日本の首都です")
PACK_SEGMENTS_B = ("A short answer.", "Another one, much longer: " * 8,
                   "nothing here?", "", "北京欢迎你")


@pytest.mark.parametrize("seq_length", [5, 8, 16, 37, 128])
@pytest.mark.parametrize("num_segments", [1, 2])
@pytest.mark.parametrize("merge_first", [False, True])
def test_bert_pack_inputs_matches_reference_packer(minilm_pre, special,
                                                   bert_reference, seq_length,
                                                   num_segments, merge_first):
  texts = [PACK_SEGMENTS_A, PACK_SEGMENTS_B][:num_segments]
  segments = [minilm_pre.tokenize(tf.constant(t)) for t in texts]
  flat = [seg.merge_dims(1, 2).to_list() for seg in segments]
  if merge_first:  # rank-1 ragged input must work as well as rank 2.
    segments = [seg.merge_dims(1, 2) for seg in segments]
  out = minilm_pre.bert_pack_inputs(segments,
                                    seq_length=tf.constant(seq_length))
  out = {k: _np(v) for k, v in out.items()}
  want = bert_reference.pack_batch(
      [list(row) for row in zip(*flat)], seq_length,
      special["start_of_sequence_id"], special["end_of_segment_id"],
      special["padding_id"])
  np.testing.assert_array_equal(out["input_word_ids"], want[0])
  np.testing.assert_array_equal(out["input_mask"], want[1])
  np.testing.assert_array_equal(out["input_type_ids"], want[2])


def test_pair_packing_matches_hf_without_trimming(minilm_pre, hf_uncased):
  pairs = list(zip(PACK_SEGMENTS_A, PACK_SEGMENTS_B))
  segments = [minilm_pre.tokenize(tf.constant(list(col)))
              for col in zip(*pairs)]
  out = {k: _np(v) for k, v in minilm_pre.bert_pack_inputs(
      segments, seq_length=tf.constant(SEQ)).items()}
  hf_uncased.enable_padding(length=SEQ)
  try:
    encodings = hf_uncased.encode_batch(pairs)
  finally:
    hf_uncased.no_padding()
  np.testing.assert_array_equal(out["input_word_ids"],
                                [e.ids for e in encodings])
  np.testing.assert_array_equal(out["input_type_ids"],
                                [e.type_ids for e in encodings])
  np.testing.assert_array_equal(out["input_mask"],
                                [e.attention_mask for e in encodings])


def test_pair_trimming_is_round_robin_not_longest_first(minilm_pre,
                                                       hf_uncased, vocab):
  """Equal-length pair, 13-piece budget: TF keeps 7 + 6, HF keeps 6 + 7."""
  a, b = " ".join(["cat"] * 10), " ".join(["dog"] * 10)
  out = minilm_pre.bert_pack_inputs(
      [minilm_pre.tokenize(tf.constant([a])),
       minilm_pre.tokenize(tf.constant([b]))], seq_length=tf.constant(16))
  tf_tokens = [vocab[i] for i in _np(out["input_word_ids"])[0]]
  assert tf_tokens == (["[CLS]"] + ["cat"] * 7 + ["[SEP]"] + ["dog"] * 6 +
                       ["[SEP]"])
  hf_uncased.enable_truncation(16)  # default strategy: longest_first
  try:
    hf_tokens = [vocab[i] for i in hf_uncased.encode(a, b).ids]
  finally:
    hf_uncased.no_truncation()
  assert hf_tokens == (["[CLS]"] + ["cat"] * 6 + ["[SEP]"] + ["dog"] * 7 +
                       ["[SEP]"])


def test_bert_pack_inputs_default_seq_length(minilm_pre):
  seg = minilm_pre.tokenize(tf.constant(["hello world"]))
  out = minilm_pre.bert_pack_inputs([seg])
  assert _np(out["input_word_ids"]).shape == (1, SEQ)


# -- cased --------------------------------------------------------------------


@pytest.fixture(scope="module")
def cased_pre(ref_cased_export):
  return ref_cased_export.preprocessor


@pytest.mark.parametrize("text", CASED_AGREE_TEXTS,
                         ids=range(len(CASED_AGREE_TEXTS)))
def test_cased_tokenize_matches_hf(cased_pre, hf_cased, cased_vocab, text):
  got = [cased_vocab[i] for i in _flat_ids(cased_pre, text)]
  want = [cased_vocab[i] for i in _hf_ids(hf_cased, text)]
  assert got == want


def test_cased_keeps_case_and_accents(cased_pre, cased_vocab):
  tokens = [cased_vocab[i] for i in
            _flat_ids(cased_pre, "Hello hello HELLO Café café cafe Zürich")]
  assert tokens == ["Hello", "hello", "HELLO", "Café", "café", "cafe",
                    "Zürich"]


def test_uncased_folds_what_cased_keeps(minilm_pre):
  ids = [_flat_ids(minilm_pre, t) for t in ("Café", "café", "cafe", "CAFE")]
  assert ids[0] == ids[1] == ids[2] == ids[3]


@pytest.mark.parametrize("text", sorted(CASED_DIFFERENCES))
def test_cased_documented_differences(cased_pre, hf_cased, cased_vocab, text):
  tf_tokens, hf_tokens = CASED_DIFFERENCES[text]
  assert [cased_vocab[i] for i in _flat_ids(cased_pre, text)] == tf_tokens
  assert [cased_vocab[i] for i in _hf_ids(hf_cased, text)] == hf_tokens


def test_cased_packed_inputs_match_hf(cased_pre, hf_cased):
  seq = 32  # the cased export's seq_length
  hf_cased.enable_truncation(seq)
  hf_cased.enable_padding(length=seq)
  try:
    encodings = hf_cased.encode_batch(list(CASED_AGREE_TEXTS))
  finally:
    hf_cased.no_truncation()
    hf_cased.no_padding()
  out = cased_pre(tf.constant(CASED_AGREE_TEXTS))
  out = {k: _np(v) for k, v in out.items()}
  np.testing.assert_array_equal(out["input_word_ids"],
                                [e.ids for e in encodings])
  np.testing.assert_array_equal(out["input_mask"],
                                [e.attention_mask for e in encodings])
