"""Parity of the exported `encoder.mlm` head (and pooler handling) with numpy.

Two BertForMaskedLM-shaped HF checkpoints are exported with `hf:`:
  * `tiny_hf_mlm_checkpoint` (conftest): no pooler, tied decoder;
  * `ref_cased_checkpoint` (reference fixtures): a pooler, tied decoder and
    hidden_act "gelu_new", so the tanh GELU path is checked as well.
"""

import numpy as np
import pytest
import tensorflow as tf

from modeling import export

ATOL = 1e-4

TEXTS = ("the quick brown fox", "hello world hello", "a", "",
         "jumps over the lazy dog again and again")


def _np(x):
  return x.numpy() if hasattr(x, "numpy") else np.asarray(x)


def _inputs(loaded):
  """Packed ids for TEXTS at the export's default seq_length."""
  out = loaded.preprocessor(tf.constant(TEXTS))
  return {k: _np(v) for k, v in out.items()}


def _random_inputs(vocab_size, batch, seq, seed):
  """Random ids (avoiding the 5 lowest) with ragged lengths and both types."""
  rng = np.random.default_rng(seed)
  ids = rng.integers(5, vocab_size, size=(batch, seq)).astype(np.int32)
  lengths = rng.integers(3, seq + 1, size=batch)
  lengths[0] = seq
  mask = (np.arange(seq)[None] < lengths[:, None]).astype(np.int32)
  types = ((np.arange(seq)[None] >= (lengths // 2)[:, None]) & (mask > 0))
  ids = np.where(mask > 0, ids, 0).astype(np.int32)
  return {"input_word_ids": ids, "input_mask": mask,
          "input_type_ids": types.astype(np.int32)}


def _positions(mask, per_row, seed):
  """per_row positions inside each row's real tokens (repeats allowed)."""
  rng = np.random.default_rng(seed)
  lengths = mask.sum(axis=1)
  return np.stack([rng.integers(0, n, size=per_row) for n in lengths]
                  ).astype(np.int32)


def _call_mlm(loaded, inputs, positions):
  feed = {k: tf.constant(v, tf.int32) for k, v in inputs.items()}
  feed["masked_lm_positions"] = tf.constant(positions, tf.int32)
  out = loaded.encoder.mlm(feed)
  return {k: ([_np(t) for t in v] if isinstance(v, (list, tuple)) else _np(v))
          for k, v in out.items()}


def _reference_rows(model, inputs):
  """Per-row unpadded reference forward passes."""
  rows = []
  for i in range(inputs["input_word_ids"].shape[0]):
    n = int(inputs["input_mask"][i].sum())
    rows.append(model.forward(inputs["input_word_ids"][i:i + 1, :n],
                              input_type_ids=inputs["input_type_ids"][i:i + 1,
                                                                      :n]))
  return rows


def _check_mlm(loaded, model, inputs, positions):
  out = _call_mlm(loaded, inputs, positions)
  batch, num = positions.shape
  vocab_size = model.w["embeddings.word_embeddings.weight"].shape[0]
  assert out["mlm_logits"].shape == (batch, num, vocab_size)
  assert out["mlm_logits"].dtype == np.float32
  refs = _reference_rows(model, inputs)
  worst_logit, worst_seq = 0.0, 0.0
  for i, ref in enumerate(refs):
    n = ref["sequence_output"].shape[1]
    want = model.mlm_logits(ref["sequence_output"], positions[i:i + 1])[0]
    assert np.ptp(want) > 100 * ATOL  # logits spread: the check is not vacuous
    worst_logit = max(worst_logit,
                      float(np.abs(out["mlm_logits"][i] - want).max()))
    worst_seq = max(worst_seq, float(np.abs(
        out["sequence_output"][i, :n] - ref["sequence_output"][0]).max()))
  print(f"max |mlm_logits - reference| = {worst_logit:.3g}, "
        f"max |sequence_output - reference| = {worst_seq:.3g}")
  assert worst_logit < ATOL
  assert worst_seq < ATOL
  return out, refs


# -- tiny_hf_mlm_checkpoint: no pooler ----------------------------------------


@pytest.fixture(scope="module")
def tiny_model(bert_reference, tiny_hf_mlm_checkpoint):
  model = bert_reference.BertReference.from_hf_dir(str(tiny_hf_mlm_checkpoint))
  assert model.has_mlm_head and not model.has_pooler
  return model


def test_tiny_mlm_logits_match_reference_on_text(ref_tiny_mlm_export,
                                                 tiny_model):
  inputs = _inputs(ref_tiny_mlm_export)
  positions = _positions(inputs["input_mask"], 4, seed=0)
  positions[:, 0] = 0  # the [CLS] position
  _check_mlm(ref_tiny_mlm_export, tiny_model, inputs, positions)


def test_tiny_mlm_logits_match_reference_on_random_ids(ref_tiny_mlm_export,
                                                       tiny_model):
  vocab_size = tiny_model.w["embeddings.word_embeddings.weight"].shape[0]
  inputs = _random_inputs(vocab_size, batch=4, seq=24, seed=1)
  positions = _positions(inputs["input_mask"], 6, seed=2)
  _check_mlm(ref_tiny_mlm_export, tiny_model, inputs, positions)


def test_tiny_mlm_outputs_agree_with_plain_call(ref_tiny_mlm_export):
  inputs = _inputs(ref_tiny_mlm_export)
  positions = _positions(inputs["input_mask"], 3, seed=3)
  mlm = _call_mlm(ref_tiny_mlm_export, inputs, positions)
  plain = ref_tiny_mlm_export.encoder(
      {k: tf.constant(v, tf.int32) for k, v in inputs.items()})
  for key in ("sequence_output", "pooled_output"):
    np.testing.assert_allclose(mlm[key], _np(plain[key]), atol=1e-6)


def test_tiny_without_pooler_pools_cls(ref_tiny_mlm_export, tiny_model):
  inputs = _inputs(ref_tiny_mlm_export)
  out = ref_tiny_mlm_export.encoder(
      {k: tf.constant(v, tf.int32) for k, v in inputs.items()})
  seq, pooled = _np(out["sequence_output"]), _np(out["pooled_output"])
  np.testing.assert_allclose(pooled, seq[:, 0], atol=1e-6)
  np.testing.assert_allclose(_np(out["default"]), pooled, atol=0)
  refs = _reference_rows(tiny_model, inputs)
  want = np.stack([r["sequence_output"][0, 0] for r in refs])
  assert np.abs(pooled - want).max() < ATOL


def test_tiny_metadata_says_no_pooler(ref_tiny_mlm_export):
  for metadata in (ref_tiny_mlm_export.metadata,
                   export.read_export_metadata(
                       ref_tiny_mlm_export.export_dir + "/encoder")):
    assert metadata["has_pooler"] is False
    assert metadata["has_mlm"] is True
    assert metadata["recommended_pooling"] == "cls"


# -- cased gelu_new checkpoint with a pooler -----------------------------------


@pytest.fixture(scope="module")
def cased_model(bert_reference, ref_cased_checkpoint):
  model = bert_reference.BertReference.from_hf_dir(ref_cased_checkpoint)
  assert model.has_mlm_head and model.has_pooler
  assert model.config["hidden_act"] == "gelu_new"
  return model


def test_cased_gelu_new_mlm_and_pooler_match_reference(ref_cased_export,
                                                       cased_model):
  vocab_size = cased_model.w["embeddings.word_embeddings.weight"].shape[0]
  inputs = _random_inputs(vocab_size, batch=5, seq=32, seed=4)
  positions = _positions(inputs["input_mask"], 5, seed=5)
  out, refs = _check_mlm(ref_cased_export, cased_model, inputs, positions)
  want = np.concatenate([r["pooled_output"] for r in refs])
  diff = float(np.abs(out["pooled_output"] - want).max())
  print(f"max |pooled_output - reference| = {diff:.3g}")
  assert diff < ATOL
  # The pooler is a tanh dense layer, not the raw [CLS] vector.
  assert np.abs(out["pooled_output"] - out["sequence_output"][:, 0]).max() > 0.1


def test_cased_parity_test_tells_gelu_variants_apart(bert_reference,
                                                     cased_model):
  """With exact-erf GELU the reference would miss by far more than ATOL.

  This makes the gelu_new test above a real check of the activation in use.
  """
  config = dict(cased_model.config, hidden_act="gelu")
  erf_model = bert_reference.BertReference(config, cased_model.w)
  vocab_size = cased_model.w["embeddings.word_embeddings.weight"].shape[0]
  inputs = _random_inputs(vocab_size, batch=2, seq=16, seed=6)
  a = cased_model.forward(**inputs)["sequence_output"]
  b = erf_model.forward(**inputs)["sequence_output"]
  assert np.abs(a - b).max() > 20 * ATOL


def test_cased_metadata_says_pooler(ref_cased_export):
  metadata = export.read_export_metadata(ref_cased_export.export_dir +
                                         "/encoder")
  assert metadata["has_pooler"] is True
  assert metadata["has_mlm"] is True
  assert metadata["lower_case"] is False
