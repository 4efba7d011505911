"""Tests for modeling.importers: HF safetensors, TF1 checkpoints, random."""

import json
import os
import shutil

import numpy as np
import pytest
import safetensors.numpy

from modeling import checkpoint_writers
from modeling import encoder as encoder_lib
from modeling import weight_names as wn
from modeling.errors import ModelSourceError
from modeling.importers import load_source
from modeling.importers import random_init


@pytest.fixture(name="config", scope="module")
def _config(tiny_config):
  return tiny_config


@pytest.fixture(name="vocab_tokens", scope="module")
def _vocab_tokens(tiny_vocab_tokens):
  return tiny_vocab_tokens


def _copy(src, tmp_path, name=None):
  dst = tmp_path / (name or os.path.basename(src))
  shutil.copytree(src, dst)
  return dst


def _tensors(directory):
  return safetensors.numpy.load_file(str(directory / "model.safetensors"))


def _save_tensors(directory, tensors):
  safetensors.numpy.save_file(tensors, str(directory / "model.safetensors"))


def _inputs():
  ids = np.array([[2, 40, 41, 42, 3, 0], [2, 50, 3, 60, 61, 3]], np.int32)
  mask = (np.arange(6)[None] < np.array([[5], [6]])).astype(np.int32)
  types = np.array([[0] * 6, [0, 0, 0, 1, 1, 1]], np.int32)
  return {"input_word_ids": ids, "input_mask": mask, "input_type_ids": types}


# --- HF ---

def test_hf_mlm_checkpoint_import(tiny_hf_mlm_checkpoint, config):
  imported = load_source(f"hf:{tiny_hf_mlm_checkpoint}")
  tensors = safetensors.numpy.load_file(
      os.path.join(tiny_hf_mlm_checkpoint, "model.safetensors"))
  assert imported.has_mlm and not imported.has_pooler
  assert imported.recommended_pooling == "cls"
  assert not imported.recommended_normalize
  assert imported.lower_case is True
  assert imported.model_name == "tiny-bert-uncased-mlm"
  assert len(imported.warnings) == 1 and "no pooler" in imported.warnings[0]
  assert imported.config == config
  w = imported.weights
  np.testing.assert_array_equal(
      w["bert/encoder/layer_1/attention/self/key/kernel"],
      tensors["bert.encoder.layer.1.attention.self.key.weight"].T)
  np.testing.assert_array_equal(
      w["bert/encoder/layer_0/output/LayerNorm/gamma"],
      tensors["bert.encoder.layer.0.output.LayerNorm.weight"])
  np.testing.assert_array_equal(
      w["bert/embeddings/token_type_embeddings"],
      tensors["bert.embeddings.token_type_embeddings.weight"])
  np.testing.assert_array_equal(w[wn.MLM_OUTPUT_BIAS],
                                tensors["cls.predictions.bias"])
  np.testing.assert_array_equal(
      w["cls/predictions/transform/dense/kernel"],
      tensors["cls.predictions.transform.dense.weight"].T)
  expected = set(wn.backbone_shapes(config)) | set(wn.mlm_shapes(config))
  assert set(w) == expected


def test_hf_mlm_checkpoint_builds_encoder_with_mlm(tiny_hf_mlm_checkpoint,
                                                    config):
  imported = load_source(f"hf:{tiny_hf_mlm_checkpoint}")
  encoder = encoder_lib.build_encoder(imported.config, imported.weights)
  out = encoder.mlm(dict(_inputs(), masked_lm_positions=np.array(
      [[1, 2], [3, 4]], np.int32)))
  assert out["mlm_logits"].shape == (2, 2, config.vocab_size)
  np.testing.assert_array_equal(out["pooled_output"],
                                out["sequence_output"].numpy()[:, 0])


def test_hf_bertmodel_names_without_prefix_and_old_layer_norm_names(
    tmp_path, config, vocab_tokens):
  weights = random_init.random_weights(config, seed=2)
  backbone = {k: v for k, v in weights.items()
              if k not in wn.mlm_shapes(config)}
  directory = checkpoint_writers.write_hf_checkpoint(
      str(tmp_path / "plain"), config, backbone, vocab_tokens,
      bert_prefix=False, old_layer_norm_names=True, lower_case=False,
      extra_tensors={"cls.seq_relationship.weight": np.zeros((2, 32),
                                                             np.float32)})
  names = safetensors.numpy.load_file(directory + "/model.safetensors")
  assert "embeddings.LayerNorm.gamma" in names
  imported = load_source(f"hf:{directory}")
  assert imported.has_pooler and not imported.has_mlm
  assert imported.lower_case is False
  assert imported.recommended_pooling == "pooled"
  assert imported.warnings == []
  for name, value in backbone.items():
    np.testing.assert_array_equal(imported.weights[name], value)


def test_hf_unknown_tensors_warn(tiny_hf_mlm_checkpoint, tmp_path, caplog):
  directory = _copy(tiny_hf_mlm_checkpoint, tmp_path)
  tensors = _tensors(directory)
  tensors["bert.adapter.weight"] = np.ones((3,), np.float32)
  _save_tensors(directory, tensors)
  imported = load_source(f"hf:{directory}")
  assert any("bert.adapter.weight" in w for w in imported.warnings)
  assert "bert.adapter.weight" in caplog.text


def test_hf_tied_decoder_weight_is_accepted(tiny_hf_mlm_checkpoint, tmp_path):
  directory = _copy(tiny_hf_mlm_checkpoint, tmp_path)
  tensors = _tensors(directory)
  tensors["cls.predictions.decoder.weight"] = tensors[
      "bert.embeddings.word_embeddings.weight"].copy()
  tensors["cls.predictions.decoder.bias"] = tensors[
      "cls.predictions.bias"].copy()
  _save_tensors(directory, tensors)
  assert load_source(f"hf:{directory}").has_mlm


def test_hf_untied_decoder_weight_is_rejected(tiny_hf_mlm_checkpoint,
                                              tmp_path):
  directory = _copy(tiny_hf_mlm_checkpoint, tmp_path)
  tensors = _tensors(directory)
  tensors["cls.predictions.decoder.weight"] = tensors[
      "bert.embeddings.word_embeddings.weight"] + 1.0
  _save_tensors(directory, tensors)
  with pytest.raises(ModelSourceError,
                     match="model.safetensors.*decoder.weight.*not tied"):
    load_source(f"hf:{directory}")


def test_hf_sentence_transformers_pooling(tiny_hf_mlm_checkpoint, tmp_path):
  directory = _copy(tiny_hf_mlm_checkpoint, tmp_path)
  (directory / "1_Pooling").mkdir()
  (directory / "1_Pooling" / "config.json").write_text(json.dumps(
      {"pooling_mode_cls_token": True, "pooling_mode_mean_tokens": False}))
  imported = load_source(f"hf:{directory}")
  assert (imported.recommended_pooling, imported.recommended_normalize) == \
      ("cls", False)
  (directory / "1_Pooling" / "config.json").write_text(json.dumps(
      {"pooling_mode_cls_token": False, "pooling_mode_mean_tokens": True}))
  (directory / "modules.json").write_text(json.dumps([
      {"idx": 0, "name": "0", "path": "",
       "type": "sentence_transformers.models.Transformer"},
      {"idx": 1, "name": "1", "path": "1_Pooling",
       "type": "sentence_transformers.models.Pooling"},
      {"idx": 2, "name": "2", "path": "2_Normalize",
       "type": "sentence_transformers.models.Normalize"}]))
  imported = load_source(f"hf:{directory}")
  assert (imported.recommended_pooling, imported.recommended_normalize) == \
      ("mean", True)


def test_hf_casing(tiny_hf_mlm_checkpoint, tmp_path):
  directory = _copy(tiny_hf_mlm_checkpoint, tmp_path, "some-model")
  (directory / "tokenizer_config.json").write_text(
      json.dumps({"do_lower_case": False}))
  assert load_source(f"hf:{directory}").lower_case is False
  assert load_source(f"hf:{directory}", lower_case=True).lower_case is True
  os.remove(directory / "tokenizer_config.json")
  imported = load_source(f"hf:{directory}")
  assert imported.lower_case is True
  assert any("casing unknown" in w for w in imported.warnings)


# --- bad sources ---

@pytest.mark.parametrize("missing", ["config.json", "model.safetensors",
                                     "vocab.txt"])
def test_hf_missing_file(tiny_hf_mlm_checkpoint, tmp_path, missing):
  directory = _copy(tiny_hf_mlm_checkpoint, tmp_path)
  os.remove(directory / missing)
  with pytest.raises(ModelSourceError, match=f"{directory}/{missing}: "
                                             "required file not found"):
    load_source(f"hf:{directory}")


def test_hf_shape_mismatch_names_file_and_tensor(tiny_hf_mlm_checkpoint,
                                                 tmp_path):
  directory = _copy(tiny_hf_mlm_checkpoint, tmp_path)
  tensors = _tensors(directory)
  tensors["bert.encoder.layer.1.intermediate.dense.weight"] = np.zeros(
      (65, 32), np.float32)
  _save_tensors(directory, tensors)
  with pytest.raises(
      ModelSourceError,
      match=r"model\.safetensors: tensor 'bert\.encoder\.layer\.1\."
            r"intermediate\.dense\.weight'.*\(32, 65\).*\(32, 64\)"):
    load_source(f"hf:{directory}")


def test_hf_missing_tensor(tiny_hf_mlm_checkpoint, tmp_path):
  directory = _copy(tiny_hf_mlm_checkpoint, tmp_path)
  tensors = _tensors(directory)
  del tensors["bert.encoder.layer.0.attention.self.value.bias"]
  _save_tensors(directory, tensors)
  with pytest.raises(ModelSourceError,
                     match="model.safetensors: missing required tensors "
                           "'bert/encoder/layer_0/attention/self/value/bias'"):
    load_source(f"hf:{directory}")


def test_hf_incomplete_mlm_head(tiny_hf_mlm_checkpoint, tmp_path):
  directory = _copy(tiny_hf_mlm_checkpoint, tmp_path)
  tensors = _tensors(directory)
  del tensors["cls.predictions.transform.LayerNorm.bias"]
  _save_tensors(directory, tensors)
  with pytest.raises(ModelSourceError, match="MLM head is incomplete"):
    load_source(f"hf:{directory}")


def test_hf_more_layers_than_config(tiny_hf_mlm_checkpoint, tmp_path):
  directory = _copy(tiny_hf_mlm_checkpoint, tmp_path)
  config = json.loads((directory / "config.json").read_text())
  config["num_hidden_layers"] = 1
  (directory / "config.json").write_text(json.dumps(config))
  with pytest.raises(ModelSourceError,
                     match="layer 1 but the config has num_hidden_layers=1"):
    load_source(f"hf:{directory}")


def test_vocab_size_mismatch(tiny_hf_mlm_checkpoint, tmp_path, config):
  directory = _copy(tiny_hf_mlm_checkpoint, tmp_path)
  with open(directory / "vocab.txt", "a", encoding="utf-8") as f:
    f.write("extra\n")
  with pytest.raises(ModelSourceError,
                     match=f"{directory}/vocab.txt: vocab has "
                           f"{config.vocab_size + 1} tokens.*"
                           f"{config.vocab_size} word-embedding rows"):
    load_source(f"hf:{directory}")


def test_unsupported_activation(tiny_hf_mlm_checkpoint, tmp_path):
  directory = _copy(tiny_hf_mlm_checkpoint, tmp_path)
  config = json.loads((directory / "config.json").read_text())
  config["hidden_act"] = "silu"
  (directory / "config.json").write_text(json.dumps(config))
  with pytest.raises(ModelSourceError,
                     match=f"{directory}/config.json: .*'silu'"):
    load_source(f"hf:{directory}")


def test_vocab_without_special_tokens(tmp_path, tiny_config_file, config):
  vocab = tmp_path / "vocab.txt"
  tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"] + [
      f"w{i}" for i in range(config.vocab_size - 4)]
  vocab.write_text("".join(t + "\n" for t in tokens))
  with pytest.raises(ModelSourceError, match=r"vocab.txt: .*\[MASK\]"):
    load_source(f"random:{tiny_config_file}", vocab=str(vocab))


def test_bad_source_strings(tiny_config_file):
  for source in ("hf", "onnx:/x", "hf:", "/some/dir"):
    with pytest.raises(ModelSourceError, match="must look like"):
      load_source(source)
  with pytest.raises(ModelSourceError, match="vocab file is required"):
    load_source(f"random:{tiny_config_file}")


# --- random ---

def test_random_is_seeded_and_complete(tiny_config_file, tiny_vocab_file,
                                      config):
  a = load_source(f"random:{tiny_config_file}", vocab=tiny_vocab_file, seed=1)
  b = load_source(f"random:{tiny_config_file}", vocab=tiny_vocab_file, seed=1)
  c = load_source(f"random:{tiny_config_file}", vocab=tiny_vocab_file, seed=2)
  assert a.has_pooler and a.has_mlm and a.lower_case is True
  assert a.model_name == "tiny_bert"
  assert set(a.weights) == set(wn.all_shapes(config))
  for name in a.weights:
    np.testing.assert_array_equal(a.weights[name], b.weights[name])
  assert not np.array_equal(a.weights[wn.WORD_EMBEDDINGS],
                            c.weights[wn.WORD_EMBEDDINGS])
  table = a.weights[wn.WORD_EMBEDDINGS]
  assert np.abs(table).max() <= 0.04 + 1e-7
  assert 0.015 < table.std() < 0.025
  assert np.all(a.weights["bert/pooler/dense/bias"] != 0)
  np.testing.assert_array_equal(
      a.weights["bert/embeddings/LayerNorm/gamma"], 1.0)


# --- TF1 ---

def _write_tf1(directory, config, vocab_tokens, weights,
               with_junk=True):
  os.makedirs(directory, exist_ok=True)
  tensors = dict(weights)
  if with_junk:
    for name in list(weights)[:6]:
      tensors[f"{name}/adam_m"] = np.full_like(weights[name], 7.0)
      tensors[f"{name}/adam_v"] = np.full_like(weights[name], 9.0)
    tensors["global_step"] = np.array(1000, np.int64)
    tensors["cls/seq_relationship/output_weights"] = np.zeros((2, 32),
                                                              np.float32)
    tensors["cls/seq_relationship/output_bias"] = np.zeros((2,), np.float32)
  checkpoint_writers.write_tf1_checkpoint(
      os.path.join(directory, "bert_model.ckpt"), tensors)
  config = {k: v for k, v in config.to_dict().items()
            if k != "layer_norm_eps"}
  with open(os.path.join(directory, "bert_config.json"), "w") as f:
    json.dump(config, f)
  with open(os.path.join(directory, "vocab.txt"), "w") as f:
    f.write("".join(t + "\n" for t in vocab_tokens))
  return directory


def test_tf1_round_trip_equals_hf_import(tiny_hf_mlm_checkpoint, tmp_path,
                                         vocab_tokens):
  hf = load_source(f"hf:{tiny_hf_mlm_checkpoint}")
  directory = _write_tf1(str(tmp_path / "uncased_L-2_H-32_A-4"), hf.config,
                         vocab_tokens, hf.weights)
  tf1 = load_source(f"tf1:{directory}")
  # Adam slots, global_step and the NSP head are dropped silently.
  assert len(tf1.warnings) == 1 and "no pooler" in tf1.warnings[0]
  assert tf1.lower_case is True
  assert tf1.has_mlm and not tf1.has_pooler
  assert tf1.config == hf.config
  assert set(tf1.weights) == set(hf.weights)
  for name in hf.weights:
    np.testing.assert_array_equal(tf1.weights[name], hf.weights[name])
  inputs = _inputs()
  positions = np.array([[1, 4], [0, 5]], np.int32)
  out_hf = encoder_lib.build_encoder(hf.config, hf.weights).mlm(
      dict(inputs, masked_lm_positions=positions))
  out_tf1 = encoder_lib.build_encoder(tf1.config, tf1.weights).mlm(
      dict(inputs, masked_lm_positions=positions))
  for key in ("sequence_output", "pooled_output", "mlm_logits"):
    np.testing.assert_array_equal(out_hf[key], out_tf1[key])


def test_tf1_casing_from_dir_name(tmp_path, config, vocab_tokens):
  weights = random_init.random_weights(config, seed=4)
  cased = _write_tf1(str(tmp_path / "cased_L-2"), config, vocab_tokens,
                     weights, with_junk=False)
  assert load_source(f"tf1:{cased}").lower_case is False
  assert load_source(f"tf1:{cased}", lower_case=True).lower_case is True
  other = _write_tf1(str(tmp_path / "mybert"), config, vocab_tokens,
                     weights, with_junk=False)
  imported = load_source(f"tf1:{other}")
  assert imported.lower_case is True
  assert any("casing unknown" in w for w in imported.warnings)
  assert imported.has_pooler and imported.recommended_pooling == "pooled"


def test_tf1_errors(tmp_path, config, vocab_tokens):
  weights = random_init.random_weights(config, seed=4)
  directory = _write_tf1(str(tmp_path / "uncased"), config, vocab_tokens,
                     weights, with_junk=False)
  os.remove(os.path.join(directory, "bert_model.ckpt.index"))
  with pytest.raises(ModelSourceError, match="bert_model.ckpt.index: "
                                             "required file not found"):
    load_source(f"tf1:{directory}")
  bad = dict(weights)
  bad["bert/pooler/dense/kernel"] = np.zeros((32, 31), np.float32)
  directory = _write_tf1(str(tmp_path / "uncased2"), config, vocab_tokens,
                     bad, with_junk=False)
  with pytest.raises(ModelSourceError,
                     match=r"bert_model.ckpt: tensor 'bert/pooler/dense/"
                           r"kernel' has shape \(32, 31\)"):
    load_source(f"tf1:{directory}")
  os.remove(os.path.join(directory, "bert_config.json"))
  with pytest.raises(ModelSourceError, match="bert_config.json: required"):
    load_source(f"tf1:{directory}")
