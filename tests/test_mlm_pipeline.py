"""--mlm-scores end to end: scores in the output equal a brute-force one-mask-per-call computation."""
import math
import os

import numpy as np
import pyarrow.parquet as pq
import pytest
import tensorflow as tf
import tensorflow_text  # noqa: F401
from apache_beam.testing.test_pipeline import TestPipeline

from formats.usage import UsageError
from pipeline.run import run

SEQ = 32
TEXTS = ["the cat sat on the mat.", "hello world!", "is the dog sitting on the mat?",
         " ".join(["the dog sat on the mat"] * 8)]


def _brute_force_pll(model_dir, text, whole_word=False):
  """Masks each real token alone (whole_word: with the later pieces of its word) and calls the SavedModel's .mlm
  once per copy."""
  pre = tf.saved_model.load(os.path.join(model_dir, "preprocessor"))
  enc = tf.saved_model.load(os.path.join(model_dir, "encoder"))
  special = {k: int(v) for k, v in pre.tokenize.get_special_tokens_dict().items()}
  inputs = pre.bert_pack_inputs([pre.tokenize(tf.constant([text]))], seq_length=tf.constant(SEQ))
  ids = inputs["input_word_ids"].numpy()[0]
  n = int(inputs["input_mask"].numpy()[0].sum())
  # The word of each packed position, from .tokenize's [words, pieces] structure (-1 at [CLS] and [SEP]).
  words = [-1] + [w for w, pieces in enumerate(pre.tokenize(tf.constant([text])).to_list()[0]) for _ in pieces]
  words = words[:n - 1] + [-1]
  scores = [float("nan")] * n
  for i in range(1, n - 1):
    masked = ids.copy()
    masked[i] = special["mask_id"]
    j = i + 1
    while whole_word and words[j] == words[i]:
      masked[j] = special["mask_id"]
      j += 1
    out = enc.mlm({"input_word_ids": tf.constant(masked[None]), "input_mask": inputs["input_mask"],
                   "input_type_ids": inputs["input_type_ids"],
                   "masked_lm_positions": tf.constant([[i]], tf.int32)})
    logits = out["mlm_logits"].numpy()[0, 0].astype(np.float64)
    log_probs = logits - (logits.max() + math.log(np.exp(logits - logits.max()).sum()))
    scores[i] = float(log_probs[ids[i]])
  return sum(s for s in scores if not math.isnan(s)), n - 2, scores


def test_mlm_scores_equal_brute_force_and_embeddings_stay_exact(tmp_path, tiny_model_dir):
  (tmp_path / "in.txt").write_text("\n".join(TEXTS) + "\n", encoding="utf-8")
  argv = ["--model", tiny_model_dir, "--input", str(tmp_path / "in.txt"), "--output", str(tmp_path / "emb"),
          "--seq-length", str(SEQ), "--keep-text", "--mlm-scores", "--mlm-per-token", "--pooling", "cls"]
  outcome = run(argv, test_pipeline=TestPipeline(argv=argv))
  table = pq.read_table(outcome.manifest["output_files"])
  assert table.schema.field("mlm_pll").type == "double"
  rows = table.to_pylist()
  assert len(rows) == len(TEXTS)
  for r in rows:
    pll, scored, per_token = _brute_force_pll(tiny_model_dir, r["text"])
    assert r["mlm_scored_tokens"] == scored
    assert r["mlm_pll"] == pytest.approx(pll, rel=1e-4)
    assert r["mlm_pseudo_perplexity"] == pytest.approx(math.exp(-pll / scored), rel=1e-4)
    assert r["mlm_token_scores"][0] is None and r["mlm_token_scores"][-1] is None
    np.testing.assert_allclose(r["mlm_token_scores"][1:-1], per_token[1:-1], rtol=1e-4)
    assert len(r["embedding"]) == 32
  assert [r["truncated"] for r in rows if r["text"] == TEXTS[3]] == [True]
  # --mlm-max-tokens only batches the masked copies: a rerun with another value carries every row over.
  again = ["--model", tiny_model_dir, "--input", str(tmp_path / "in.txt"), "--output", str(tmp_path / "again"),
           "--seq-length", str(SEQ), "--keep-text", "--mlm-scores", "--mlm-per-token", "--pooling", "cls",
           "--mlm-max-tokens", "64", "--previous", str(tmp_path / "emb")]
  carried = run(again, test_pipeline=TestPipeline(argv=again))
  assert carried.manifest["incremental"]["mode"] == "incremental", carried.manifest["incremental"]["reason"]
  c = carried.manifest["counts"]
  assert (c["unchanged"], c["encoded"], c["written"]) == (len(TEXTS), 0, len(TEXTS))
  by_text = {r["text"]: r for r in rows}
  for r in pq.read_table(carried.manifest["output_files"]).to_pylist():
    assert r["mlm_pll"] == by_text[r["text"]]["mlm_pll"] and r["embedding"] == by_text[r["text"]]["embedding"]


def test_whole_word_scores_only_to_tfrecord_equal_brute_force(tmp_path, sharp_model_dir):
  """On the sharp model (conftest.py), where a wrong mask moves a score far beyond the tolerance."""
  texts = [TEXTS[1], "the dogs were sitting and jumping"]  # the second has words of several pieces
  (tmp_path / "in.txt").write_text("\n".join(texts) + "\n", encoding="utf-8")
  argv = ["--model", sharp_model_dir, "--input", str(tmp_path / "in.txt"), "--output", str(tmp_path / "emb"),
          "--seq-length", str(SEQ), "--mlm-scores", "--no-embeddings", "--format", "tfrecord", "--mlm-whole-word",
          "--keep-text"]
  outcome = run(argv, test_pipeline=TestPipeline(argv=argv))
  examples = [tf.train.Example.FromString(r.numpy())
              for f in outcome.manifest["output_files"] for r in tf.data.TFRecordDataset(f)]
  assert len(examples) == 2
  for ex in examples:
    feature = ex.features.feature
    assert "embedding" not in feature
    text = feature["text"].bytes_list.value[0].decode("utf-8")
    pll, scored, _ = _brute_force_pll(sharp_model_dir, text, whole_word=True)
    assert feature["mlm_scored_tokens"].int64_list.value[0] == scored
    assert feature["mlm_pll"].float_list.value[0] == pytest.approx(pll, rel=1e-4)
    if text == texts[1]:  # token-level masking scores it differently, by far more than the tolerance above
      assert abs(_brute_force_pll(sharp_model_dir, text)[0] - pll) > 10 * 1e-4 * abs(pll)
  assert outcome.manifest["options"]["mlm_whole_word"] is True


def test_mlm_without_a_head_fails_before_the_job(tmp_path, minilm_model_dir):
  (tmp_path / "in.txt").write_text("hello\n", encoding="utf-8")
  with pytest.raises(UsageError, match="masked-LM head"):
    run(["--model", minilm_model_dir, "--input", str(tmp_path / "in.txt"), "--output", str(tmp_path / "e"),
         "--mlm-scores"])
  with pytest.raises(UsageError, match="need.*--mlm-scores"):
    run(["--model", minilm_model_dir, "--input", str(tmp_path / "in.txt"), "--output", str(tmp_path / "e"),
         "--no-embeddings"])
