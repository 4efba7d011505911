"""Numerical parity of the exported MiniLM (all-MiniLM-L6-v2) with numpy.

The exported preprocessor turns each text into ids; those SAME ids are fed to
the independent float64 reference in bert_reference.py (which reads the HF
safetensors directly) and to the exported encoder. Outputs must agree to 1e-4
absolute on every real token.
"""

import numpy as np
import pytest
import tensorflow as tf

ATOL = 1e-4
SEQ = 128

LONG_TEXT = " ".join(
    f"Sentence number {i} talks about embeddings, tokenizers and pipelines."
    for i in range(30))

TEXTS = (
    "The quick brown fox jumps over the lazy dog.",
    "A man is eating food.",
    "A man is eating a piece of bread.",
    "The girl is carrying a baby.",
    "Embeddings map text to vectors.",
    "I'd like a café au lait, naïve as that sounds, in Zürich.",
    "ÅNGSTRÖM, Ærøskøbing and São Paulo are spelled with accents.",
    "東京は日本の首都です",
    "北京欢迎你，上海也欢迎你。",
    "Ich möchte ein Bier bitte!",
    "Привет, как дела?",
    "I love pizza 🍕 and tacos 🌮!!! 😀",
    "Visit https://example.com/path?q=bert&lang=en#top for details.",
    "Mail me at first.last+tag@sub.example.org, thanks.",
    "Pi is 3.14159, e is 2.71828 and 1,000,000 is a million.",
    "Prices: $5.99, €12,50, ¥1000 (tax incl.) - 20% off!!!",
    "What?!?! No way...... Really???",
    "---***+++===<<<>>>",
    "MiXeD CaSe TeXt WiTh ODD capitalisation",
    "ALL CAPS SENTENCE SHOUTING AT YOU",
    "tabs\tand\nnewlines\r\nand   multiple    spaces",
    "don't can't won't it's O'Neill's rock'n'roll",
    "C++ and C# are languages; so is F#.",
    "He said \"hello\" and she said 'goodbye'.",
    "x",
    "",
    "antidisestablishmentarianism supercalifragilisticexpialidocious",
    "The year 2024 had 366 days; 2023 had 365.",
    "email@domain.com @mention #hashtag",
    "Naïve résumé coöperate façade jalapeño",
    LONG_TEXT,
)

PAIR = ("How many people live in Berlin?",
        "Berlin has a population of about 3.7 million registered inhabitants.")


def _np(x):
  return x.numpy() if hasattr(x, "numpy") else np.asarray(x)


def _encode(export, inputs):
  out = export.encoder({k: tf.constant(v, tf.int32) for k, v in inputs.items()})
  return {k: ([_np(t) for t in v] if isinstance(v, (list, tuple)) else _np(v))
          for k, v in out.items()}


@pytest.fixture(scope="module")
def packed(ref_minilm_export):
  """Preprocessor output for TEXTS, as numpy."""
  out = ref_minilm_export.preprocessor(tf.constant(TEXTS))
  return {k: _np(v) for k, v in out.items()}


@pytest.fixture(scope="module")
def encoded(ref_minilm_export, packed):
  return _encode(ref_minilm_export, packed)


@pytest.fixture(scope="module")
def reference(ref_minilm_model, packed):
  """Reference outputs, one unpadded forward per text (no mask needed)."""
  outs = []
  for i in range(len(TEXTS)):
    n = int(packed["input_mask"][i].sum())
    outs.append(ref_minilm_model.forward(
        packed["input_word_ids"][i:i + 1, :n],
        input_type_ids=packed["input_type_ids"][i:i + 1, :n]))
  return outs


def _lengths(packed):
  return packed["input_mask"].sum(axis=1).astype(int)


def test_preprocessor_output_shapes(packed):
  for key in ("input_word_ids", "input_mask", "input_type_ids"):
    assert packed[key].shape == (len(TEXTS), SEQ), key
    assert packed[key].dtype == np.int32, key
  lengths = _lengths(packed)
  assert lengths.max() == SEQ  # LONG_TEXT is trimmed to 128.
  assert lengths[TEXTS.index("")] == 2  # [CLS] [SEP]


def test_sequence_output_matches_reference(encoded, reference, packed):
  worst = 0.0
  for i, n in enumerate(_lengths(packed)):
    got = encoded["sequence_output"][i, :n]
    want = reference[i]["sequence_output"][0]
    diff = float(np.abs(got - want).max())
    worst = max(worst, diff)
    assert diff < ATOL, (TEXTS[i], diff)
  print(f"max |sequence_output - reference| = {worst:.3g}")


def test_pooled_output_matches_reference(encoded, reference):
  assert encoded["pooled_output"].shape == (len(TEXTS), 384)
  want = np.concatenate([r["pooled_output"] for r in reference])
  diff = float(np.abs(encoded["pooled_output"] - want).max())
  print(f"max |pooled_output - reference| = {diff:.3g}")
  assert diff < ATOL


def test_default_is_pooled_output(encoded):
  np.testing.assert_array_equal(encoded["default"], encoded["pooled_output"])


def test_encoder_outputs_match_reference_layer_by_layer(encoded, reference,
                                                       packed):
  layers = encoded["encoder_outputs"]
  assert len(layers) == 6
  np.testing.assert_array_equal(layers[-1], encoded["sequence_output"])
  for i, n in enumerate(_lengths(packed)):
    for j, layer in enumerate(layers):
      want = reference[i]["encoder_outputs"][j][0]
      diff = float(np.abs(layer[i, :n] - want).max())
      assert diff < ATOL, (TEXTS[i], j, diff)


def test_mean_pooled_normalised_matches_reference(bert_reference, encoded,
                                                  reference, packed):
  """What sentence-transformers returns: mean over real tokens, then L2."""
  got = bert_reference.l2_normalize(bert_reference.masked_mean(
      encoded["sequence_output"], packed["input_mask"]))
  want = bert_reference.l2_normalize(np.stack(
      [r["sequence_output"][0].mean(axis=0) for r in reference]))
  diff = float(np.abs(got - want).max())
  print(f"max |normalised mean - reference| = {diff:.3g}")
  assert diff < ATOL
  np.testing.assert_allclose(np.sum(got * want, axis=1), 1.0, atol=1e-6)


def test_padding_invariance_shorter_sequence(ref_minilm_export, encoded,
                                             packed):
  """Cutting the batch to its longest real row leaves every vector unchanged."""
  short = [i for i, n in enumerate(_lengths(packed)) if n < 40]
  cut = int(_lengths(packed)[short].max())
  sub = {k: v[short, :cut] for k, v in packed.items()}
  out = _encode(ref_minilm_export, sub)
  for row, i in enumerate(short):
    n = int(packed["input_mask"][i].sum())
    np.testing.assert_allclose(out["sequence_output"][row, :n],
                               encoded["sequence_output"][i, :n], atol=1e-5)
  np.testing.assert_allclose(out["pooled_output"],
                             encoded["pooled_output"][short], atol=1e-5)


def test_padding_invariance_single_unpadded_rows(ref_minilm_export, encoded,
                                                 packed):
  """Batch 1 with no padding at all equals the padded batch of 31 rows."""
  for i in (0, TEXTS.index("東京は日本の首都です"), len(TEXTS) - 1):
    n = int(packed["input_mask"][i].sum())
    sub = {k: v[i:i + 1, :n] for k, v in packed.items()}
    out = _encode(ref_minilm_export, sub)
    np.testing.assert_allclose(out["sequence_output"][0],
                               encoded["sequence_output"][i, :n], atol=1e-5)
    np.testing.assert_allclose(out["pooled_output"][0],
                               encoded["pooled_output"][i], atol=1e-5)


def test_padding_content_is_ignored(ref_minilm_export, encoded, packed):
  """Garbage ids under input_mask == 0 must not leak into real tokens."""
  rows = [0, 1, 2]
  sub = {k: v[rows].copy() for k, v in packed.items()}
  pad = sub["input_mask"] == 0
  rng = np.random.default_rng(0)
  sub["input_word_ids"][pad] = rng.integers(1000, 30000, size=int(pad.sum()))
  sub["input_type_ids"][pad] = 1
  out = _encode(ref_minilm_export, sub)
  for row, i in enumerate(rows):
    n = int(packed["input_mask"][i].sum())
    np.testing.assert_allclose(out["sequence_output"][row, :n],
                               encoded["sequence_output"][i, :n], atol=1e-5)
  np.testing.assert_allclose(out["pooled_output"],
                             encoded["pooled_output"][rows], atol=1e-5)


def test_sentence_pair_matches_reference(ref_minilm_export, ref_minilm_model):
  pre = ref_minilm_export.preprocessor
  segments = [pre.tokenize(tf.constant([text])) for text in PAIR]
  inputs = pre.bert_pack_inputs(segments, seq_length=tf.constant(SEQ))
  inputs = {k: _np(v) for k, v in inputs.items()}
  types = inputs["input_type_ids"][0]
  n = int(inputs["input_mask"][0].sum())
  assert types[:n].min() == 0 and types[:n].max() == 1
  out = _encode(ref_minilm_export, inputs)
  ref = ref_minilm_model.forward(inputs["input_word_ids"][:, :n],
                                 input_type_ids=inputs["input_type_ids"][:, :n])
  diff = float(np.abs(out["sequence_output"][0, :n] -
                      ref["sequence_output"][0]).max())
  assert diff < ATOL, diff
  np.testing.assert_allclose(out["pooled_output"], ref["pooled_output"],
                             atol=ATOL)
  # Segment ids matter: all-zero types would give a different encoding.
  zero_types = ref_minilm_model.forward(inputs["input_word_ids"][:, :n])
  assert np.abs(zero_types["sequence_output"] -
                ref["sequence_output"]).max() > 1e-2


def test_long_text_is_trimmed_and_matches(packed, encoded, reference):
  i = TEXTS.index(LONG_TEXT)
  assert int(packed["input_mask"][i].sum()) == SEQ
  assert packed["input_word_ids"][i, 0] == 101  # [CLS]
  assert packed["input_word_ids"][i, SEQ - 1] == 102  # [SEP]
  diff = np.abs(encoded["sequence_output"][i] -
                reference[i]["sequence_output"][0]).max()
  assert diff < ATOL


def test_full_512_positions_match_reference(ref_minilm_export,
                                            ref_minilm_model):
  """seq_length is a call-time choice: 512 uses the whole position table."""
  pre = ref_minilm_export.preprocessor
  text = " ".join([LONG_TEXT] * 2)
  inputs = pre.bert_pack_inputs([pre.tokenize(tf.constant([text]))],
                                seq_length=tf.constant(512))
  inputs = {k: _np(v) for k, v in inputs.items()}
  assert inputs["input_word_ids"].shape == (1, 512)
  assert int(inputs["input_mask"].sum()) == 512
  out = _encode(ref_minilm_export, inputs)
  ref = ref_minilm_model.forward(inputs["input_word_ids"])
  diff = float(np.abs(out["sequence_output"] - ref["sequence_output"]).max())
  print(f"max |sequence_output - reference| at seq 512 = {diff:.3g}")
  assert diff < ATOL
  np.testing.assert_allclose(out["pooled_output"], ref["pooled_output"],
                             atol=ATOL)


# -- checks of the reference itself, independent of the export ----------------


def test_reference_gelu_is_exact(bert_reference):
  # Phi(1) = 0.8413447460685429..., Phi(-2) = 0.022750131948179195...
  got = bert_reference.gelu_exact(np.array([1.0, -2.0, 0.0]))
  np.testing.assert_allclose(got, [0.8413447460685429, -0.04550026389635839,
                                   0.0], rtol=0, atol=1e-15)
  tanh = bert_reference.gelu_tanh(np.array([1.0, -2.0]))
  assert 1e-5 < np.abs(tanh - got[:2]).max() < 1e-3


def test_reference_mask_equals_unpadded(ref_minilm_model, packed, reference):
  """The reference's masked attention matches its own unpadded run."""
  rows = [0, TEXTS.index("東京は日本の首都です")]
  n = int(_lengths(packed)[rows].max()) + 3
  out = ref_minilm_model.forward(packed["input_word_ids"][rows, :n],
                                 packed["input_mask"][rows, :n],
                                 packed["input_type_ids"][rows, :n])
  for row, i in enumerate(rows):
    m = int(packed["input_mask"][i].sum())
    np.testing.assert_allclose(out["sequence_output"][row, :m],
                               reference[i]["sequence_output"][0], atol=1e-12)


def test_reference_is_semantically_sane(bert_reference, reference):
  """Reads the weights right: paraphrases are closer than unrelated text."""
  def vec(text):
    return bert_reference.l2_normalize(
        reference[TEXTS.index(text)]["sequence_output"][0].mean(axis=0))
  food = vec("A man is eating food.")
  bread = vec("A man is eating a piece of bread.")
  baby = vec("The girl is carrying a baby.")
  assert food @ bread > 0.6
  assert food @ bread > food @ baby + 0.4
