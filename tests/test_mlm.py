"""MLM scoring (runtime/mlm_*.py) against brute-force references written here.

The references mask one copy at a time, feed it at the full packed length and call the SavedModel's `.mlm` once
per copy; the whole-word reference takes word boundaries from the preprocessor's `.tokenize` ragged output, not
from the "##" table the implementation uses.
"""
import os

import hypothesis
import numpy as np
import pytest
import tensorflow as tf
from hypothesis import strategies as st

from runtime.tokenizer import Tokenizer
from runtime import mlm_scoring, mlm_plan, mlm_vocab
from transforms.embedding.embed_config import EmbedConfig, MlmSpec
from transforms.embedding.encode import BertEncoderModelHandler, EncodeError
from formats.records import EncoderInput, TextRecord
from runtime.saved_models import load_saved_model

RTOL = 1e-4
SEQ_LENGTH = 32
LONG = ("the big red dog sat under a green tree and the small cats walked over the blue car "
        "while the quick brown fox jumped over the lazy dogs at night")
TEXTS = (
    "the cat sat on the mat.",
    "Hello, world! The quick brown fox jumps over the lazy dog.",
    "dogs walked quickly; sitting runners played",
    "a",
    "zebra cafe",  # "zebra" is [UNK] in the tiny vocab
    LONG,  # more than SEQ_LENGTH pieces: truncated
)
PAIRS = (
    ("the cat sat", "where is the dog?"),
    (LONG, "who walked the dogs? the man with the red hats was walking them very slowly"),  # both trimmed
)
MODELS = ("tiny_model_dir", "hf_mlm_model_dir", "sharp_model_dir")


@pytest.fixture(scope="session")
def hf_mlm_model_dir(ref_tiny_mlm_export):
  """Export root of the tiny HF BertForMaskedLM checkpoint (tied decoder, no pooler).

  Reuses the parity tests' session export (`export_model("hf:" + tiny_hf_mlm_checkpoint)`), so a full run exports
  it once.
  """
  return ref_tiny_mlm_export.export_dir


class _Loaded:
  """Both SavedModels of an export, the special ids and the packed test records."""

  def __init__(self, root):
    self.root = root
    self.pre = load_saved_model(os.path.join(root, "preprocessor"))
    self.enc = load_saved_model(os.path.join(root, "encoder"))
    self.special = mlm_vocab.load_special_tokens(self.pre)
    tokenizer = Tokenizer(self.pre, SEQ_LENGTH)
    self.inputs = (tokenizer.pack([TextRecord(f"t{i}", t) for i, t in enumerate(TEXTS)])
                   + tokenizer.pack([TextRecord(f"p{i}", a, b) for i, (a, b) in enumerate(PAIRS)]))


@pytest.fixture(scope="session")
def loaded_exports():
  cache = {}

  def get(root):
    if root not in cache:
      cache[root] = _Loaded(root)
    return cache[root]
  return get


@pytest.fixture(params=MODELS)
def model(request, loaded_exports):
  return loaded_exports(request.getfixturevalue(request.param))


# --- brute-force references ---


def _log_softmax_at(logits, token):
  x = np.asarray(logits, np.float64)
  top = x.max()
  return float(x[token] - top - np.log(np.exp(x - top).sum()))


def _word_of_piece(loaded, element):
  """Word index of every packed position (-1 at [CLS]/[SEP]), from `.tokenize`'s ragged word structure."""
  ids = element.input_word_ids[:element.num_tokens]
  seps = [i for i in range(element.num_tokens) if ids[i] == loaded.special["end_of_segment_id"]]
  texts = [element.record.text] + ([element.record.text_pair] if element.record.text_pair is not None else [])
  words = [-1]
  start, offset = 1, 0
  for text, sep in zip(texts, seps):
    ragged = loaded.pre.tokenize(tf.constant([text])).to_list()[0]
    piece_words = [offset + w for w, pieces in enumerate(ragged) for _ in pieces]
    kept = sep - start  # the packer keeps a prefix of each segment
    words += piece_words[:kept] + [-1]
    start, offset = sep + 1, offset + len(ragged)
  assert len(words) == element.num_tokens
  return words


def _brute_force(loaded, element, whole_word=False):
  """float64 [num_tokens] scores (NaN at specials): one `.mlm` call per masked copy, at the full padded length."""
  special = loaded.special
  ids = element.input_word_ids
  words = _word_of_piece(loaded, element) if whole_word else None
  scores = np.full([element.num_tokens], np.nan)
  for i in range(1, element.num_tokens):
    if ids[i] == special["end_of_segment_id"]:
      continue
    copy = ids.copy()
    copy[i] = special["mask_id"]
    if whole_word:
      j = i + 1
      while j < element.num_tokens and words[j] == words[i]:
        copy[j] = special["mask_id"]
        j += 1
    out = loaded.enc.mlm({
        "input_word_ids": tf.constant(copy[None], tf.int32),
        "input_mask": tf.constant(element.input_mask[None], tf.int32),
        "input_type_ids": tf.constant(element.input_type_ids[None], tf.int32),
        "masked_lm_positions": tf.constant([[i]], tf.int32),
    })
    scores[i] = _log_softmax_at(out["mlm_logits"].numpy()[0, 0], int(ids[i]))
  return scores


def _continuation(loaded):
  return mlm_vocab.load_continuation_table(os.path.join(loaded.root, "preprocessor"),
                                           loaded.special["vocab_size"])


# --- scores vs the references ---


def test_fixture_records_cover_truncation_and_pairs(model):
  by_id = {e.record.id: e for e in model.inputs}
  assert by_id["t5"].truncated and by_id["t5"].num_tokens == SEQ_LENGTH
  assert by_id["p1"].truncated and by_id["p0"].input_type_ids.max() == 1
  assert by_id["t4"].input_word_ids[1] == 1  # [UNK]


@pytest.mark.parametrize("whole_word", [False, True], ids=["token", "whole_word"])
def test_scores_match_brute_force(model, whole_word):
  continuation = _continuation(model) if whole_word else None
  got = mlm_scoring.score_records(model.enc, model.inputs, model.special, whole_word=whole_word,
                          continuation=continuation, max_tokens=256, per_token=True)
  assert len(got) == len(model.inputs)
  for element, score in zip(model.inputs, got):
    want = _brute_force(model, element, whole_word)
    scored = ~np.isnan(want)
    assert score.scored_tokens == scored.sum() > 0
    np.testing.assert_allclose(score.pll, want[scored].sum(), rtol=RTOL, err_msg=element.record.id)
    np.testing.assert_allclose(score.pseudo_perplexity, np.exp(-want[scored].sum() / scored.sum()), rtol=RTOL)
    assert score.token_scores.dtype == np.float32 and score.token_scores.shape == (element.num_tokens,)
    np.testing.assert_array_equal(np.isnan(score.token_scores), ~scored)
    np.testing.assert_allclose(score.token_scores[scored], want[scored], rtol=RTOL, atol=1e-5)


def test_whole_word_differs_only_on_multi_piece_words(model):
  token = mlm_scoring.score_records(model.enc, model.inputs, model.special, per_token=True)
  word = mlm_scoring.score_records(model.enc, model.inputs, model.special, whole_word=True,
                           continuation=_continuation(model), per_token=True)
  continuation = _continuation(model)
  for element, a, b in zip(model.inputs, token, word):
    ids = element.input_word_ids[:element.num_tokens]
    next_continues = np.append(continuation[ids[1:]], False)  # position i+1 continues i's word
    same = ~next_continues & ~np.isnan(a.token_scores)
    np.testing.assert_allclose(a.token_scores[same], b.token_scores[same], rtol=1e-5, atol=1e-6)
  assert any(np.any(continuation[e.input_word_ids[:e.num_tokens]]) for e in model.inputs)


def test_sharp_model_tells_masks_apart(loaded_exports, sharp_model_dir):
  """On the sharp model, masking one more piece moves a score by far more than the tests' tolerance."""
  model = loaded_exports(sharp_model_dir)
  token = mlm_scoring.score_records(model.enc, model.inputs, model.special, per_token=True)
  word = mlm_scoring.score_records(model.enc, model.inputs, model.special, whole_word=True,
                           continuation=_continuation(model), per_token=True)
  moved = max(np.nanmax(np.abs(a.token_scores - b.token_scores) / np.abs(a.token_scores))
              for a, b in zip(token, word))
  assert moved > 100 * RTOL


def test_specials_are_nan_and_never_scored(model):
  sep = model.special["end_of_segment_id"]
  for element, score in zip(model.inputs, mlm_scoring.score_records(model.enc, model.inputs, model.special,
                                                            per_token=True)):
    ids = element.input_word_ids[:element.num_tokens]
    specials = np.zeros(element.num_tokens, bool)
    specials[0] = True
    specials[ids == sep] = True
    assert np.all(np.isnan(score.token_scores[specials]))
    assert np.all(np.isfinite(score.token_scores[~specials])) and np.all(score.token_scores[~specials] <= 0)
    assert score.scored_tokens == element.num_tokens - specials.sum()


def test_batching_does_not_change_scores(loaded_exports, tiny_model_dir):
  model = loaded_exports(tiny_model_dir)
  budgets = [(1, 512), (37, 512), (100_000, 3), (100_000, 512)]
  runs = [mlm_scoring.score_records(model.enc, model.inputs, model.special, max_tokens=t, max_copies=c, per_token=True)
          for t, c in budgets]
  for run in runs[1:]:
    for a, b in zip(runs[0], run):
      assert a.scored_tokens == b.scored_tokens
      np.testing.assert_allclose(a.pll, b.pll, rtol=1e-5)
      np.testing.assert_allclose(a.token_scores, b.token_scores, rtol=1e-5, atol=1e-6)
  alone = [mlm_scoring.score_records(model.enc, [e], model.special)[0] for e in model.inputs]
  np.testing.assert_allclose([s.pll for s in alone], [s.pll for s in runs[0]], rtol=1e-5)


def test_nothing_to_score_gives_no_perplexity(loaded_exports, tiny_model_dir):
  model = loaded_exports(tiny_model_dir)
  s = model.special
  ids = np.zeros(SEQ_LENGTH, np.int32)
  ids[:2] = [s["start_of_sequence_id"], s["end_of_segment_id"]]
  mask = (np.arange(SEQ_LENGTH) < 2).astype(np.int32)
  empty = EncoderInput(TextRecord("e", ""), ids, mask, np.zeros_like(ids), 2, False)
  got = mlm_scoring.score_records(model.enc, [empty, model.inputs[0]], s, per_token=True)
  assert got[0].pll == 0.0 and got[0].scored_tokens == 0 and got[0].pseudo_perplexity is None
  assert np.all(np.isnan(got[0].token_scores)) and got[1].scored_tokens > 0
  assert mlm_scoring.score_records(model.enc, [], s) == []
  without = mlm_scoring.score_records(model.enc, model.inputs[:1], s)[0]
  assert without.token_scores is None and without.pll == pytest.approx(got[1].pll, rel=1e-5)


def test_whole_word_needs_the_vocab(loaded_exports, tiny_model_dir):
  model = loaded_exports(tiny_model_dir)
  with pytest.raises(ValueError, match="continuation"):
    mlm_scoring.score_records(model.enc, model.inputs, model.special, whole_word=True)
  with pytest.raises(ValueError, match="vocab"):
    mlm_vocab.load_continuation_table(os.path.join(tiny_model_dir, "preprocessor"), vocab_size=7)


# --- the model handler and the early check ---


def test_handler_scores_and_isolates_a_failing_record(tiny_model_dir, loaded_exports):
  model = loaded_exports(tiny_model_dir)
  spec = MlmSpec(model.special, whole_word=True, continuation=_continuation(model), per_token=True)
  handler = BertEncoderModelHandler(os.path.join(tiny_model_dir, "encoder"),
                                    EmbedConfig(embeddings=False, mlm=spec))
  loaded = handler.load_model()
  bad_ids = model.inputs[1].input_word_ids.copy()
  bad_ids[2] = 10 ** 6  # outside the vocab
  bad = model.inputs[1]._replace(record=TextRecord("bad", "x"), input_word_ids=bad_ids)
  batch = list(model.inputs[:3]) + [bad] + list(model.inputs[3:])
  results = list(handler.run_inference(batch, loaded))
  assert [r.example.record.id for r in results] == [e.record.id for e in batch]
  assert isinstance(results[3].inference, EncodeError) and "vocab" in results[3].inference.reason
  expected = mlm_scoring.score_records(model.enc, model.inputs, model.special, whole_word=True,
                               continuation=_continuation(model))
  good = [r.inference.mlm for r in results if r.example.record.id != "bad"]
  np.testing.assert_allclose([g.pll for g in good], [e.pll for e in expected], rtol=1e-5)
  assert all(g.token_scores is not None for g in good)


def test_check_has_mlm(tiny_model_dir, hf_mlm_model_dir, minilm_model_dir):
  mlm_scoring.check_has_mlm(os.path.join(tiny_model_dir, "encoder"))
  mlm_scoring.check_has_mlm(os.path.join(hf_mlm_model_dir, "encoder"))
  minilm_encoder = os.path.join(minilm_model_dir, "encoder")
  with pytest.raises(mlm_scoring.MissingMlmHeadError, match="masked-LM head") as info:
    mlm_scoring.check_has_mlm(minilm_encoder)  # rejected from its export metadata
  assert isinstance(info.value, ValueError) and "MiniLM" in str(info.value)
  with pytest.raises(mlm_scoring.MissingMlmHeadError, match="no `.mlm` subobject"):
    mlm_scoring.check_has_mlm(load_saved_model(minilm_encoder))  # rejected by looking at the loaded model


# --- planning (numpy only) ---


def test_word_span_ends():
  continuation = np.array([False, False, False, True, False, True])  # ids 3 and 5 are "##" pieces
  ids = np.array([0, 1, 3, 3, 2, 5, 4, 1, 0])  # [CLS] w ## ## w ## [SEP] w [SEP]
  positions = np.array([1, 2, 3, 4, 5, 7])
  np.testing.assert_array_equal(mlm_plan.word_span_ends(ids, positions, 9, continuation), [4, 4, 4, 6, 6, 8])
  truncated = mlm_plan.word_span_ends(ids, np.array([1, 2]), 3, continuation)  # a word cut by the packer
  np.testing.assert_array_equal(truncated, [3, 3])


@hypothesis.settings(max_examples=60, deadline=None)
@hypothesis.given(lengths=st.lists(st.integers(1, 70), max_size=40), max_tokens=st.integers(1, 300),
                  max_copies=st.integers(1, 9))
def test_token_budget_batches_cover_every_copy_once(lengths, max_tokens, max_copies):
  lengths = np.array(lengths, np.int32)
  batches = list(mlm_plan.token_budget_batches(lengths, max_tokens, max_copies))
  seen = np.concatenate(batches) if batches else np.zeros([0], int)
  np.testing.assert_array_equal(np.sort(seen), np.arange(lengths.size))
  for batch in batches:
    assert 1 <= batch.size <= max_copies
    assert batch.size == 1 or batch.size * lengths[batch].max() <= max_tokens
