"""Imports a Hugging Face BERT directory (`BertModel` or `BertForMaskedLM`).

Files: config.json, model.safetensors (read with safetensors' numpy API, no
PyTorch), vocab.txt (or the `vocab` override), tokenizer_config.json (casing).

Name mapping: an optional "bert." prefix is dropped; dots become slashes and
"layer.N" becomes "layer_N"; Linear ".weight" [out, in] becomes "/kernel"
[in, out]; LayerNorm ".weight"/".bias" (or old ".gamma"/".beta") become
"/gamma"/"/beta"; embedding ".weight" becomes the table itself;
"cls.predictions.bias" becomes "cls/predictions/output_bias". Buffers
(`embeddings.position_ids`) and the NSP head (`cls.seq_relationship.*`) are
ignored. A `cls.predictions.decoder.weight` must equal the word embeddings
(the exported MLM head is tied): an untied decoder is rejected, because the
TF Hub interface has no place for it.
"""

import json
import re
from typing import Dict, List, Optional, Tuple

import numpy as np
import safetensors
import safetensors.numpy
import tensorflow as tf

from modeling.config import BertConfig
from modeling.errors import ModelSourceError
from modeling import weight_names as wn
from modeling.importers import imported_model as im
from modeling.importers import sentence_transformers

WEIGHTS_FILE = "model.safetensors"
_EMBEDDING_TABLES = ("word_embeddings", "position_embeddings",
                     "token_type_embeddings")
_IGNORED = re.compile(r"^(embeddings\.position_ids|cls\.seq_relationship\..*)$")
_DECODER_WEIGHT = "cls.predictions.decoder.weight"
_DECODER_BIAS = "cls.predictions.decoder.bias"


def canonical_name(hf_name: str) -> Tuple[Optional[str], bool]:
  """Maps an HF tensor name (without "bert.") to (canonical name, transpose).

  Returns (None, False) for names with no canonical counterpart.
  """
  if hf_name == "cls.predictions.bias":
    return wn.MLM_OUTPUT_BIAS, False
  path = re.sub(r"^encoder\.layer\.(\d+)\.", r"encoder.layer_\1.", hf_name)
  parts = path.split(".")
  if len(parts) < 2:
    return None, False
  parent, leaf = parts[-2], parts[-1]
  transpose = False
  if parent == "LayerNorm":
    leaf = {"weight": "gamma", "bias": "beta"}.get(leaf, leaf)
    if leaf not in ("gamma", "beta"):
      return None, False
  elif parent in _EMBEDDING_TABLES:
    if leaf != "weight":
      return None, False
    parts = parts[:-1]
  elif leaf == "weight":
    leaf, transpose = "kernel", True
  if parent not in _EMBEDDING_TABLES:
    parts = parts[:-1] + [leaf]
  name = "/".join(parts)
  if not name.startswith("cls/"):
    name = "bert/" + name
  return name, transpose


def _read_safetensors(path: str) -> Dict[str, np.ndarray]:
  """Reads all tensors; remote files (gs://...) are read into memory first."""
  try:
    if "://" not in path:
      return safetensors.numpy.load_file(path)
    with tf.io.gfile.GFile(path, "rb") as f:
      return safetensors.numpy.load(f.read())
  except (safetensors.SafetensorError, ValueError, TypeError) as e:
    raise ModelSourceError(f"{path}: cannot read safetensors ({e})") from e


def _lower_case(model_dir: str, override: Optional[bool],
                warnings: List[str]) -> bool:
  if override is not None:
    return override
  path = im.join(model_dir, "tokenizer_config.json")
  if tf.io.gfile.exists(path):
    try:
      with tf.io.gfile.GFile(path, "r") as f:
        tokenizer_config = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
      raise ModelSourceError(f"{path}: not valid JSON ({e})") from e
    if not isinstance(tokenizer_config, dict):
      raise ModelSourceError(f"{path}: expected a JSON object")
    if "do_lower_case" in tokenizer_config:
      lower = bool(tokenizer_config["do_lower_case"])
      strip = tokenizer_config.get("strip_accents")
      if strip is not None and bool(strip) != lower:
        im.warn(warnings, f"{path}: strip_accents={strip} with "
                          f"do_lower_case={lower} cannot be reproduced; TF "
                          "Text strips accents iff it lower-cases")
      if tokenizer_config.get("tokenize_chinese_chars") is False:
        im.warn(warnings, f"{path}: tokenize_chinese_chars=false is not "
                          "reproduced; CJK characters are split one per word")
      return lower
  return im.casing_from_name(im.basename(model_dir), warnings, model_dir)


def load(model_dir: str, *, lower_case: Optional[bool] = None,
         vocab: Optional[str] = None) -> im.ImportedModel:
  """Imports an HF BERT directory; see the module docstring.

  Raises:
    ModelSourceError: missing files, unknown architecture, missing tensors,
      shape mismatches, an untied MLM decoder, vocab size mismatch.
  """
  warnings: List[str] = []
  config_path = im.require_file(model_dir, "config.json")
  weights_path = im.join(model_dir, WEIGHTS_FILE)
  if not tf.io.gfile.exists(weights_path):
    hint = ""
    if tf.io.gfile.exists(im.join(model_dir, "pytorch_model.bin")):
      hint = " (only pytorch_model.bin found: convert it to safetensors)"
    raise ModelSourceError(f"{weights_path}: required file not found{hint}")
  vocab_path = vocab or im.require_file(model_dir, "vocab.txt")
  config = BertConfig.from_json_file(config_path)
  tensors = _read_safetensors(weights_path)

  weights: Dict[str, np.ndarray] = {}
  source_names: Dict[str, str] = {}
  unknown: List[str] = []
  decoder_weight = decoder_bias = None
  known = wn.all_shapes(config)
  for name in sorted(tensors):
    short = name[len("bert."):] if name.startswith("bert.") else name
    if _IGNORED.match(short):
      continue
    if short == _DECODER_WEIGHT:
      decoder_weight = tensors[name]
      continue
    if short == _DECODER_BIAS:
      decoder_bias = tensors[name]
      continue
    canonical, transpose = canonical_name(short)
    if canonical is not None and canonical not in known:
      wn.check_layer_index(canonical, config, weights_path, name)
    if canonical is None or canonical not in known:
      unknown.append(name)
      continue
    if canonical in weights:
      raise ModelSourceError(
          f"{weights_path}: tensors {source_names[canonical]!r} and {name!r} "
          f"both map to {canonical}")
    array = np.asarray(tensors[name], np.float32)
    weights[canonical] = array.T if transpose and array.ndim == 2 else array
    source_names[canonical] = name
  if unknown:
    im.warn(warnings, f"{weights_path}: ignored unknown tensors "
                      f"{im.summarize_names(unknown)}")

  if decoder_bias is not None:
    if wn.MLM_OUTPUT_BIAS not in weights:
      weights[wn.MLM_OUTPUT_BIAS] = np.asarray(decoder_bias, np.float32)
      source_names[wn.MLM_OUTPUT_BIAS] = _DECODER_BIAS
    elif not np.array_equal(weights[wn.MLM_OUTPUT_BIAS], decoder_bias):
      raise ModelSourceError(
          f"{weights_path}: {_DECODER_BIAS!r} differs from "
          "'cls.predictions.bias'")
  if decoder_weight is not None:
    table = weights.get(wn.WORD_EMBEDDINGS)
    if table is None or table.shape != decoder_weight.shape or \
        not np.array_equal(table, decoder_weight):
      raise ModelSourceError(
          f"{weights_path}: {_DECODER_WEIGHT!r} is not tied to the word "
          "embeddings; an untied MLM decoder is not supported")

  pooling, normalize = sentence_transformers.recommended_pooling(model_dir,
                                                                 warnings)
  return im.finish(
      config=config, weights=weights, weights_file=weights_path,
      source_names=source_names, vocab_file=vocab_path,
      lower_case=_lower_case(model_dir, lower_case, warnings),
      model_name=im.basename(model_dir), warnings=warnings, pooling=pooling,
      normalize=normalize)
