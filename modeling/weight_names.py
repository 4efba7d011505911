"""Canonical weight names (the original TF1 BERT checkpoint names) and shapes.

Every importer produces a dict {canonical name: float32 numpy array}; kernels are
[in, out]. The encoder builds its variables from such a dict.
"""

import re
from typing import Dict, Mapping, Optional, Tuple

import numpy as np

from modeling.config import BertConfig
from modeling.errors import ModelSourceError

Shape = Tuple[int, ...]

WORD_EMBEDDINGS = "bert/embeddings/word_embeddings"
POSITION_EMBEDDINGS = "bert/embeddings/position_embeddings"
TOKEN_TYPE_EMBEDDINGS = "bert/embeddings/token_type_embeddings"
EMBEDDINGS_LAYER_NORM = "bert/embeddings/LayerNorm"
POOLER_DENSE = "bert/pooler/dense"
MLM_TRANSFORM_DENSE = "cls/predictions/transform/dense"
MLM_TRANSFORM_LAYER_NORM = "cls/predictions/transform/LayerNorm"
MLM_OUTPUT_BIAS = "cls/predictions/output_bias"


def layer_prefix(index: int) -> str:
  return f"bert/encoder/layer_{index}"


def _dense(prefix: str, n_in: int, n_out: int) -> Dict[str, Shape]:
  return {f"{prefix}/kernel": (n_in, n_out), f"{prefix}/bias": (n_out,)}


def _layer_norm(prefix: str, width: int) -> Dict[str, Shape]:
  return {f"{prefix}/gamma": (width,), f"{prefix}/beta": (width,)}


def backbone_shapes(config: BertConfig) -> Dict[str, Shape]:
  """Shapes of the weights every BERT encoder needs (no pooler, no MLM head)."""
  h, i = config.hidden_size, config.intermediate_size
  shapes = {
      WORD_EMBEDDINGS: (config.vocab_size, h),
      POSITION_EMBEDDINGS: (config.max_position_embeddings, h),
      TOKEN_TYPE_EMBEDDINGS: (config.type_vocab_size, h),
      **_layer_norm(EMBEDDINGS_LAYER_NORM, h),
  }
  for n in range(config.num_hidden_layers):
    p = layer_prefix(n)
    for part in ("query", "key", "value"):
      shapes.update(_dense(f"{p}/attention/self/{part}", h, h))
    shapes.update(_dense(f"{p}/attention/output/dense", h, h))
    shapes.update(_layer_norm(f"{p}/attention/output/LayerNorm", h))
    shapes.update(_dense(f"{p}/intermediate/dense", h, i))
    shapes.update(_dense(f"{p}/output/dense", i, h))
    shapes.update(_layer_norm(f"{p}/output/LayerNorm", h))
  return shapes


def pooler_shapes(config: BertConfig) -> Dict[str, Shape]:
  """Shapes of the optional pooler (tanh dense on [CLS])."""
  return _dense(POOLER_DENSE, config.hidden_size, config.hidden_size)


def mlm_shapes(config: BertConfig) -> Dict[str, Shape]:
  """Shapes of the optional masked-LM head (decoder tied to word embeddings)."""
  h = config.hidden_size
  return {
      **_dense(MLM_TRANSFORM_DENSE, h, h),
      **_layer_norm(MLM_TRANSFORM_LAYER_NORM, h),
      MLM_OUTPUT_BIAS: (config.vocab_size,),
  }


def all_shapes(config: BertConfig) -> Dict[str, Shape]:
  return {**backbone_shapes(config), **pooler_shapes(config),
          **mlm_shapes(config)}


def validate(weights: Mapping[str, np.ndarray], config: BertConfig,
             source_file: str,
             source_names: Optional[Mapping[str, str]] = None
            ) -> Tuple[bool, bool]:
  """Checks names and shapes of canonical weights against a config.

  Args:
    weights: {canonical name: array}; only known names may appear.
    config: the config the weights must match.
    source_file: file named in error messages.
    source_names: optional {canonical name: name in the source file}, so that
      messages use the names the user sees in their checkpoint.

  Returns:
    (has_pooler, has_mlm).

  Raises:
    ModelSourceError: a required weight is missing, a pooler / MLM head is only
      partly present, or a shape disagrees with the config.
  """
  source_names = source_names or {}

  def shown(name):
    src = source_names.get(name)
    return f"{src!r} ({name})" if src and src != name else repr(name)

  known = all_shapes(config)
  for name, array in weights.items():
    expected = known.get(name)
    if expected is None:
      raise ModelSourceError(f"{source_file}: unexpected tensor {shown(name)}")
    if tuple(array.shape) != expected:
      layout = " (kernels as [in, out])" if name.endswith("/kernel") else ""
      raise ModelSourceError(
          f"{source_file}: tensor {shown(name)} has shape {tuple(array.shape)}"
          f" but the config implies {expected}{layout}")
  missing = [n for n in backbone_shapes(config) if n not in weights]
  if missing:
    more = f" (and {len(missing) - 5} more)" if len(missing) > 5 else ""
    raise ModelSourceError(
        f"{source_file}: missing required tensors "
        f"{', '.join(shown(n) for n in missing[:5])}{more}")
  optional = []
  for part, shapes in (("pooler", pooler_shapes(config)),
                       ("MLM head", mlm_shapes(config))):
    present = [n for n in shapes if n in weights]
    if present and len(present) != len(shapes):
      absent = [shown(n) for n in shapes if n not in weights]
      raise ModelSourceError(
          f"{source_file}: the {part} is incomplete, missing "
          f"{', '.join(absent)}")
    optional.append(bool(present))
  return optional[0], optional[1]


def check_layer_index(name: str, config: BertConfig, source_file: str,
                      source_name: str) -> None:
  """Rejects a transformer-layer tensor beyond `config.num_hidden_layers`.

  Raises:
    ModelSourceError: `name` belongs to layer N >= num_hidden_layers.
  """
  match = re.match(r"^bert/encoder/layer_(\d+)/", name)
  if match and int(match.group(1)) >= config.num_hidden_layers:
    raise ModelSourceError(
        f"{source_file}: tensor {source_name!r} belongs to layer "
        f"{match.group(1)} but the config has num_hidden_layers="
        f"{config.num_hidden_layers}")
