"""Tests for modeling.config.BertConfig."""

import dataclasses
import json

import pytest

from modeling.config import BertConfig
from modeling.errors import ModelSourceError

_BASE = {"vocab_size": 100, "hidden_size": 32, "num_hidden_layers": 2,
         "num_attention_heads": 4, "intermediate_size": 64}


def test_from_dict_reads_hf_keys_and_ignores_unknown_ones():
  config = BertConfig.from_dict({
      **_BASE, "hidden_act": "gelu_new", "layer_norm_eps": 1e-5,
      "max_position_embeddings": 128, "type_vocab_size": 3,
      "hidden_dropout_prob": 0.1, "architectures": ["BertModel"],
      "model_type": "bert", "position_embedding_type": "absolute"})
  assert config.hidden_act == "gelu_new"
  assert config.layer_norm_eps == 1e-5
  assert config.max_position_embeddings == 128
  assert config.type_vocab_size == 3
  assert config.head_size == 8


def test_from_dict_tf1_keys_get_defaults():
  config = BertConfig.from_dict({**_BASE, "initializer_range": 0.02})
  assert config.hidden_act == "gelu"
  assert config.layer_norm_eps == 1e-12
  assert config.max_position_embeddings == 512
  assert config.type_vocab_size == 2


def test_to_dict_round_trips():
  config = BertConfig.from_dict({**_BASE, "hidden_act": "relu"})
  assert BertConfig.from_dict(config.to_dict()) == config
  assert json.loads(json.dumps(config.to_dict())) == config.to_dict()


@pytest.mark.parametrize("act", ["gelu", "gelu_new", "gelu_pytorch_tanh",
                                 "relu", "GELU"])
def test_supported_activations(act):
  assert BertConfig.from_dict({**_BASE, "hidden_act": act}).hidden_act == \
      act.lower()


@pytest.mark.parametrize("changes, fragment", [
    ({"hidden_act": "swish"}, "'swish' is not supported"),
    ({"hidden_act": "gelu_fast"}, "'gelu_fast' is not supported"),
    ({"num_attention_heads": 5}, "not a multiple of num_attention_heads"),
    ({"hidden_size": 0}, "hidden_size must be a positive integer"),
    ({"model_type": "roberta"}, "model_type 'roberta'"),
    ({"position_embedding_type": "relative_key"}, "relative_key"),
])
def test_invalid_configs_raise(changes, fragment):
  with pytest.raises(ModelSourceError, match=fragment):
    BertConfig.from_dict({**_BASE, **changes})


def test_missing_keys_raise():
  with pytest.raises(ModelSourceError, match="intermediate_size"):
    BertConfig.from_dict({k: v for k, v in _BASE.items()
                          if k != "intermediate_size"})


def test_from_json_file_names_the_file(tmp_path):
  path = tmp_path / "config.json"
  path.write_text(json.dumps({**_BASE, "hidden_act": "tanh"}))
  with pytest.raises(ModelSourceError, match=f"{path}.*'tanh'"):
    BertConfig.from_json_file(str(path))
  path.write_text("{not json")
  with pytest.raises(ModelSourceError, match=f"{path}: not valid JSON"):
    BertConfig.from_json_file(str(path))
  with pytest.raises(ModelSourceError, match="missing.json: config file"):
    BertConfig.from_json_file(str(tmp_path / "missing.json"))


def test_config_is_frozen():
  config = BertConfig.from_dict(_BASE)
  with pytest.raises(dataclasses.FrozenInstanceError, match="cannot assign to field 'hidden_size'"):
    config.hidden_size = 64  # pytype: disable=not-writable
  assert config.hidden_size == _BASE["hidden_size"]
