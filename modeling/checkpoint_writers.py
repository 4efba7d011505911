"""Writes canonical weights as HF or TF1 checkpoints (for tests and tools).

These are the inverses of `modeling.importers.hf` and `.tf1`: they let tests
build small checkpoints in the layouts real releases use.
"""

import json
import os
import re
from typing import Dict, Iterable, Mapping, Optional

import numpy as np
import safetensors.numpy
import tensorflow as tf

from modeling import weight_names as wn
from modeling.config import BertConfig


def hf_name(canonical: str) -> str:
  """Canonical TF1 name -> HF `BertModel` tensor name (no "bert." prefix)."""
  if canonical == wn.MLM_OUTPUT_BIAS:
    return "cls.predictions.bias"
  path = canonical[len("bert/"):] if canonical.startswith("bert/") else \
      canonical
  path = re.sub(r"^encoder/layer_(\d+)/", r"encoder/layer/\1/", path)
  parts = path.split("/")
  leaf = parts[-1]
  if leaf in ("word_embeddings", "position_embeddings",
              "token_type_embeddings"):
    parts.append("weight")
  elif leaf in ("kernel", "gamma"):
    parts[-1] = "weight"
  elif leaf == "beta":
    parts[-1] = "bias"
  return ".".join(parts)


def hf_tensors(weights: Mapping[str, np.ndarray], *, bert_prefix: bool,
               old_layer_norm_names: bool = False) -> Dict[str, np.ndarray]:
  """Canonical weights -> {HF name: array}; kernels transposed to [out, in].

  Args:
    bert_prefix: prefix encoder names with "bert." (as `BertForMaskedLM`).
    old_layer_norm_names: name LayerNorm parameters gamma/beta (old HF).
  """
  tensors = {}
  for name, array in weights.items():
    out = hf_name(name)
    if old_layer_norm_names and ".LayerNorm." in out:
      out = re.sub(r"\.weight$", ".gamma", re.sub(r"\.bias$", ".beta", out))
    if bert_prefix and not out.startswith("cls."):
      out = "bert." + out
    value = np.asarray(array, np.float32)
    if name.endswith("/kernel"):
      value = value.T
    tensors[out] = np.ascontiguousarray(value)
  return tensors


def write_hf_checkpoint(directory: str, config: BertConfig,
                        weights: Mapping[str, np.ndarray],
                        vocab_tokens: Iterable[str], *,
                        bert_prefix: bool = True,
                        lower_case: Optional[bool] = True,
                        extra_tensors: Optional[Mapping[str, np.ndarray]] = None,
                        old_layer_norm_names: bool = False) -> str:
  """Writes config.json, model.safetensors, vocab.txt, tokenizer_config.json.

  Args:
    lower_case: `do_lower_case` for tokenizer_config.json; None writes no
      tokenizer_config.json.
    extra_tensors: added verbatim (e.g. buffers, NSP head).

  Returns:
    `directory`.
  """
  os.makedirs(directory, exist_ok=True)
  hf_config = dict(config.to_dict(), model_type="bert",
                   architectures=["BertForMaskedLM" if bert_prefix
                                  else "BertModel"])
  with open(os.path.join(directory, "config.json"), "w") as f:
    json.dump(hf_config, f, indent=2)
  tensors = hf_tensors(weights, bert_prefix=bert_prefix,
                       old_layer_norm_names=old_layer_norm_names)
  tensors.update(extra_tensors or {})
  safetensors.numpy.save_file(tensors,
                              os.path.join(directory, "model.safetensors"))
  with open(os.path.join(directory, "vocab.txt"), "w", encoding="utf-8") as f:
    f.write("".join(t + "\n" for t in vocab_tokens))
  if lower_case is not None:
    with open(os.path.join(directory, "tokenizer_config.json"), "w") as f:
      json.dump({"do_lower_case": lower_case,
                 "tokenizer_class": "BertTokenizer"}, f)
  return directory


def write_tf1_checkpoint(prefix: str,
                         tensors: Mapping[str, np.ndarray]) -> str:
  """Writes raw-named tensors as a TF1-style checkpoint (`prefix.index`,
  `prefix.data-*`) with `SaveV2`, i.e. without object-graph names.

  Returns:
    `prefix`.
  """
  os.makedirs(os.path.dirname(prefix) or ".", exist_ok=True)
  names = sorted(tensors)
  tf.raw_ops.SaveV2(
      prefix=tf.constant(prefix), tensor_names=tf.constant(names),
      shape_and_slices=tf.constant([""] * len(names)),
      tensors=[tf.constant(tensors[n]) for n in names])
  return prefix
