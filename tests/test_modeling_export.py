"""Tests for modeling.export: metadata, SavedModel loading without project code,
atomic writes."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_text  # pylint: disable=unused-import

from modeling import encoder as encoder_lib
from modeling import export
from modeling import preprocessor as preprocessor_lib
from modeling.errors import ModelSourceError
from modeling.importers import load_source

_METADATA_KEYS = {
    "format_version", "source", "model_name", "config", "lower_case",
    "seq_length", "vocab_size", "has_pooler", "has_mlm", "recommended_pooling",
    "recommended_normalize", "warnings"}

_TEXTS = ["the cat sat on the mat.", "Hello, world!", "",
          "a quick brown fox is very lazy " * 8]

# Run in a fresh interpreter whose cwd is a temp dir, with PYTHONPATH cleared
# and an import hook refusing the project's packages (the venv installs them
# in editable mode, so clearing the path alone would not hide them).
_LOADER_SCRIPT = textwrap.dedent("""
    import importlib.abc, sys

    class _Refuse(importlib.abc.MetaPathFinder):
      def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("modeling", "transforms", "pipeline"):
          raise ImportError("project code must not be needed: " + name)
        return None

    sys.meta_path.insert(0, _Refuse())
    import numpy as np
    import tensorflow as tf
    import tensorflow_text  # registers the TF Text ops
    root, out = sys.argv[1], sys.argv[2]
    pre = tf.saved_model.load(root + "/preprocessor")
    enc = tf.saved_model.load(root + "/encoder")
    texts = tf.constant(%r)
    inputs = pre(texts)
    outputs = enc(inputs)
    positions = tf.constant([[1, 2], [0, 3], [0, 1], [5, 30]], tf.int32)
    mlm = enc.mlm(dict(inputs, masked_lm_positions=positions))
    pair = pre.bert_pack_inputs([pre.tokenize(texts), pre.tokenize(texts)],
                                seq_length=tf.constant(12))
    special = pre.tokenize.get_special_tokens_dict()
    serving = enc.signatures["serving_default"](**inputs)
    arrays = {"pooled": outputs["pooled_output"],
              "sequence": outputs["sequence_output"],
              "layer0": outputs["encoder_outputs"][0],
              "mlm_logits": mlm["mlm_logits"],
              "serving_pooled": serving["pooled_output"],
              "pair_ids": pair["input_word_ids"],
              "mask_id": special["mask_id"]}
    arrays.update({"in_" + k: v for k, v in inputs.items()})
    assert not [m for m in sys.modules if m.split(".")[0] == "modeling"]
    np.savez(out, **{k: np.asarray(v) for k, v in arrays.items()})
""") % (_TEXTS,)


def test_metadata(tiny_model_dir, tiny_config_file, tiny_config):
  for sub in ("preprocessor", "encoder"):
    metadata = export.read_export_metadata(os.path.join(tiny_model_dir, sub))
    assert set(metadata) == _METADATA_KEYS
    assert metadata == {
        "format_version": 1, "source": f"random:{tiny_config_file}",
        "model_name": "tiny_bert", "config": tiny_config.to_dict(),
        "lower_case": True, "seq_length": 32,
        "vocab_size": tiny_config.vocab_size, "has_pooler": True,
        "has_mlm": True, "recommended_pooling": "pooled",
        "recommended_normalize": False, "warnings": []}
  assert export.read_export_metadata(tiny_model_dir) == metadata
  with open(os.path.join(tiny_model_dir, "encoder", "assets",
                         export.METADATA_FILENAME)) as f:
    assert json.load(f) == metadata


def test_read_export_metadata_absent(tmp_path):
  assert export.read_export_metadata(str(tmp_path)) is None


def test_fresh_process_load_matches_in_process(tiny_model_dir, tmp_path,
                                               tiny_config_file,
                                               tiny_vocab_file):
  script = tmp_path / "load.py"
  script.write_text(_LOADER_SCRIPT)
  out = tmp_path / "out.npz"
  env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
  env["TF_CPP_MIN_LOG_LEVEL"] = "2"
  result = subprocess.run(
      [sys.executable, str(script), tiny_model_dir, str(out)],
      cwd=str(tmp_path), env=env, capture_output=True, text=True,
      timeout=300, check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  got = dict(np.load(out))

  # In-process: the same source rebuilt in memory, fed the same packed inputs.
  imported = load_source(f"random:{tiny_config_file}", vocab=tiny_vocab_file,
                         seed=1)
  encoder = encoder_lib.build_encoder(imported.config, imported.weights)
  inputs = {k: got["in_" + k] for k in ("input_word_ids", "input_mask",
                                        "input_type_ids")}
  assert inputs["input_word_ids"].shape == (len(_TEXTS), 32)
  outputs = encoder(inputs)
  np.testing.assert_allclose(got["pooled"], outputs["pooled_output"],
                             atol=1e-6)
  np.testing.assert_allclose(got["serving_pooled"], outputs["pooled_output"],
                             atol=1e-6)
  np.testing.assert_allclose(got["sequence"], outputs["sequence_output"],
                             atol=1e-6)
  np.testing.assert_allclose(got["layer0"], outputs["encoder_outputs"][0],
                             atol=1e-6)
  positions = np.array([[1, 2], [0, 3], [0, 1], [5, 30]], np.int32)
  mlm = encoder.mlm(dict(inputs, masked_lm_positions=positions))
  np.testing.assert_allclose(got["mlm_logits"], mlm["mlm_logits"], atol=1e-5)

  pre = tf.saved_model.load(os.path.join(tiny_model_dir, "preprocessor"))
  packed = pre(tf.constant(_TEXTS))
  for key, value in packed.items():
    np.testing.assert_array_equal(got["in_" + key], value)
  assert got["pair_ids"].shape == (len(_TEXTS), 12)
  assert got["mask_id"] == 4


def test_loaded_encoder_interface(tiny_model_dir):
  enc = tf.saved_model.load(os.path.join(tiny_model_dir, "encoder"))
  for batch, length in [(1, 3), (3, 17), (2, 64)]:
    inputs = {k: tf.ones([batch, length], tf.int32) for k in
              ("input_word_ids", "input_mask", "input_type_ids")}
    outputs = enc(inputs)
    assert outputs["sequence_output"].shape == (batch, length, 32)
    assert outputs["pooled_output"].shape == (batch, 32)
    assert len(outputs["encoder_outputs"]) == 2
  # The MLM decoder is tied: the same restored variable as the embeddings.
  assert enc.mlm.head.word_embeddings.embeddings is \
      enc.network.word_embeddings.embeddings


def test_minilm_export(minilm_model_dir):
  metadata = export.read_export_metadata(
      os.path.join(minilm_model_dir, "encoder"))
  assert metadata["recommended_pooling"] == "mean"
  assert metadata["recommended_normalize"] is True
  assert metadata["has_pooler"] is True and metadata["has_mlm"] is False
  assert metadata["lower_case"] is True
  assert metadata["seq_length"] == 128 and metadata["vocab_size"] == 30522
  assert metadata["config"]["hidden_size"] == 384
  assert metadata["model_name"] == "model"
  enc = tf.saved_model.load(os.path.join(minilm_model_dir, "encoder"))
  pre = tf.saved_model.load(os.path.join(minilm_model_dir, "preprocessor"))
  assert not hasattr(enc, "mlm")
  special = {k: int(v) for k, v in
             pre.tokenize.get_special_tokens_dict().items()}
  assert special == {"vocab_size": 30522, "start_of_sequence_id": 101,
                     "end_of_segment_id": 102, "padding_id": 0,
                     "mask_id": 103}
  outputs = enc(pre(tf.constant(["Hello world"])))
  assert outputs["sequence_output"].shape == (1, 128, 384)
  assert len(outputs["encoder_outputs"]) == 6


def test_existing_destination(tmp_path, tiny_config_file, tiny_vocab_file):
  target = tmp_path / "taken"
  target.mkdir()
  (target / "keep.txt").write_text("x")
  with pytest.raises(FileExistsError):
    export.export_model(f"random:{tiny_config_file}", str(target),
                        vocab=tiny_vocab_file)
  assert os.listdir(target) == ["keep.txt"]


@pytest.mark.parametrize("seq_length", [1, 65])
def test_seq_length_out_of_range(tmp_path, tiny_config_file, tiny_vocab_file,
                                 seq_length):
  with pytest.raises(ValueError, match="seq_length"):
    export.export_model(f"random:{tiny_config_file}", str(tmp_path / "o"),
                        vocab=tiny_vocab_file, seq_length=seq_length)
  assert os.listdir(tmp_path) == []


def test_bad_source_leaves_nothing(tmp_path):
  with pytest.raises(ModelSourceError):
    export.export_model(f"hf:{tmp_path / 'nowhere'}", str(tmp_path / "out"))
  assert os.listdir(tmp_path) == []


def test_crash_while_saving_leaves_no_partial_model(
    tmp_path, monkeypatch, tiny_config_file, tiny_vocab_file):
  calls = []
  real_save = tf.saved_model.save

  def failing_save(obj, path, **kwargs):
    calls.append(path)
    if path.endswith("encoder"):
      raise RuntimeError("disk full")
    return real_save(obj, path, **kwargs)

  class _QuickPreprocessor(tf.Module):  # saving the real one is slow
    def __init__(self, *args, **kwargs):
      super().__init__()
      del args, kwargs

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
    def __call__(self, strings):
      return {"n": tf.size(strings)}

  monkeypatch.setattr(tf.saved_model, "save", failing_save)
  monkeypatch.setattr(preprocessor_lib, "BertPreprocessor",
                      _QuickPreprocessor)
  out = tmp_path / "out"
  with pytest.raises(RuntimeError, match="disk full"):
    export.export_model(f"random:{tiny_config_file}", str(out),
                        vocab=tiny_vocab_file, seq_length=8)
  assert len(calls) == 2  # the preprocessor was written, then the crash
  assert os.listdir(tmp_path) == []
