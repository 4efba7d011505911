"""The BERT architecture hyper-parameters, read from HF or TF1 config files."""

import dataclasses
import json
from typing import Any, Mapping

from modeling.errors import ModelSourceError

# hidden_act values we can reproduce exactly. "gelu" is the exact (erf) GELU.
SUPPORTED_ACTIVATIONS = ("gelu", "gelu_new", "gelu_pytorch_tanh", "relu")

_REQUIRED_KEYS = ("vocab_size", "hidden_size", "num_hidden_layers",
                  "num_attention_heads", "intermediate_size")


@dataclasses.dataclass(frozen=True)
class BertConfig:
  """Hyper-parameters of a BERT encoder.

  Attributes:
    vocab_size: rows V of the word-embedding table.
    hidden_size: width H of every layer.
    num_hidden_layers: number L of transformer layers.
    num_attention_heads: heads N per layer; H % N == 0, head size H / N.
    intermediate_size: width of the feed-forward inner layer.
    hidden_act: activation of the feed-forward layer and the MLM transform.
    max_position_embeddings: rows of the position-embedding table, i.e. the
      longest sequence the encoder accepts.
    type_vocab_size: rows of the token-type (segment) embedding table.
    layer_norm_eps: epsilon of every LayerNorm.
  """
  vocab_size: int
  hidden_size: int
  num_hidden_layers: int
  num_attention_heads: int
  intermediate_size: int
  hidden_act: str = "gelu"
  max_position_embeddings: int = 512
  type_vocab_size: int = 2
  layer_norm_eps: float = 1e-12

  def __post_init__(self):
    for name in _REQUIRED_KEYS + ("max_position_embeddings", "type_vocab_size"):
      value = getattr(self, name)
      if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ModelSourceError(
            f"BertConfig.{name} must be a positive integer, got {value!r}")
    if self.hidden_size % self.num_attention_heads:
      raise ModelSourceError(
          f"BertConfig.hidden_size ({self.hidden_size}) is not a multiple of "
          f"num_attention_heads ({self.num_attention_heads})")
    if self.hidden_act not in SUPPORTED_ACTIVATIONS:
      raise ModelSourceError(
          f"BertConfig.hidden_act {self.hidden_act!r} is not supported; "
          f"supported: {', '.join(SUPPORTED_ACTIVATIONS)}")
    if not self.layer_norm_eps > 0:
      raise ModelSourceError(
          f"BertConfig.layer_norm_eps must be > 0, got {self.layer_norm_eps!r}")

  @property
  def head_size(self) -> int:
    return self.hidden_size // self.num_attention_heads

  @classmethod
  def from_dict(cls, d: Mapping[str, Any]) -> "BertConfig":
    """Builds a config from HF `config.json` or TF1 `bert_config.json` keys.

    Unknown keys are ignored, except those that would silently change the math
    (a non-BERT `model_type`, a non-absolute `position_embedding_type`).

    Raises:
      ModelSourceError: missing or invalid values, unsupported activation.
    """
    missing = [k for k in _REQUIRED_KEYS if k not in d]
    if missing:
      raise ModelSourceError(f"BERT config lacks required keys: {missing}")
    model_type = d.get("model_type")
    if model_type not in (None, "bert"):
      raise ModelSourceError(
          f"model_type {model_type!r} is not supported (only 'bert')")
    position_type = d.get("position_embedding_type", "absolute")
    if position_type != "absolute":
      raise ModelSourceError(
          f"position_embedding_type {position_type!r} is not supported "
          "(only 'absolute')")
    act = d.get("hidden_act", "gelu")
    if not isinstance(act, str):
      raise ModelSourceError(f"hidden_act must be a string, got {act!r}")
    kwargs = {f.name: d[f.name] for f in dataclasses.fields(cls) if f.name in d}
    kwargs["hidden_act"] = act.lower()
    if "layer_norm_eps" in kwargs:
      kwargs["layer_norm_eps"] = float(kwargs["layer_norm_eps"])
    return cls(**kwargs)

  @classmethod
  def from_json_file(cls, path: str) -> "BertConfig":
    """Reads a config JSON file (local or any tf.io.gfile path)."""
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    if not tf.io.gfile.exists(path):
      raise ModelSourceError(f"{path}: config file not found")
    try:
      with tf.io.gfile.GFile(path, "r") as f:
        d = json.load(f)
    except json.JSONDecodeError as e:
      raise ModelSourceError(f"{path}: not valid JSON ({e})") from e
    if not isinstance(d, dict):
      raise ModelSourceError(f"{path}: expected a JSON object")
    try:
      return cls.from_dict(d)
    except ModelSourceError as e:
      raise ModelSourceError(f"{path}: {e}") from e

  def to_dict(self) -> dict:
    return dataclasses.asdict(self)
