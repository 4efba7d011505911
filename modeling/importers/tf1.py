"""Imports an original Google TF1 BERT release directory.

Files: bert_config.json, bert_model.ckpt.{index,data-*} (any single
checkpoint in the directory works), vocab.txt (or the `vocab` override).
Checkpoint names are already canonical. Ignored: optimizer slots
(`*/adam_m`, `*/adam_v`), `global_step` and the NSP head
(`cls/seq_relationship/*`); other unknown tensors produce a warning.
Casing: the `lower_case` argument, else the directory name ("uncased" ->
True, "cased" -> False), else True with a warning.
"""

import re
from typing import Dict, List, Optional

import numpy as np
import tensorflow as tf

from modeling.config import BertConfig
from modeling.errors import ModelSourceError
from modeling import weight_names as wn
from modeling.importers import imported_model as im

_IGNORED = re.compile(
    r"(^|.*/)(adam_m|adam_v)$|^global_step$|^cls/seq_relationship/")
DEFAULT_PREFIX = "bert_model.ckpt"


def find_checkpoint(model_dir: str) -> str:
  """Returns the checkpoint prefix in `model_dir`.

  Raises:
    ModelSourceError: no checkpoint, or several without a `checkpoint` file.
  """
  default = im.join(model_dir, DEFAULT_PREFIX)
  if tf.io.gfile.exists(default + ".index"):
    return default
  latest = tf.train.latest_checkpoint(model_dir)
  if latest:
    return latest
  indexes = tf.io.gfile.glob(im.join(model_dir, "*.index"))
  if len(indexes) == 1:
    return indexes[0][:-len(".index")]
  if not indexes:
    raise ModelSourceError(
        f"{default}.index: required file not found (no TF1 checkpoint in "
        f"{model_dir})")
  raise ModelSourceError(
      f"{model_dir}: several checkpoints ({len(indexes)} .index files) and no "
      "'checkpoint' file to choose one")


def load(model_dir: str, *, lower_case: Optional[bool] = None,
         vocab: Optional[str] = None) -> im.ImportedModel:
  """Imports a TF1 BERT directory; see the module docstring.

  Raises:
    ModelSourceError: missing files, missing tensors, shape mismatches,
      vocab size mismatch.
  """
  warnings: List[str] = []
  config_path = im.require_file(model_dir, "bert_config.json")
  vocab_path = vocab or im.require_file(model_dir, "vocab.txt")
  config = BertConfig.from_json_file(config_path)
  prefix = find_checkpoint(model_dir)
  try:
    reader = tf.train.load_checkpoint(prefix)
  except (tf.errors.OpError, ValueError) as e:
    raise ModelSourceError(f"{prefix}: cannot read checkpoint ({e})") from e
  known = wn.all_shapes(config)
  weights: Dict[str, np.ndarray] = {}
  unknown: List[str] = []
  for name in sorted(reader.get_variable_to_shape_map()):
    if _IGNORED.match(name):
      continue
    if name not in known:
      wn.check_layer_index(name, config, prefix, name)
      unknown.append(name)
      continue
    weights[name] = np.asarray(reader.get_tensor(name), np.float32)
  if unknown:
    im.warn(warnings, f"{prefix}: ignored unknown tensors "
                      f"{im.summarize_names(unknown)}")
  if lower_case is None:
    lower_case = im.casing_from_name(im.basename(model_dir), warnings,
                                     model_dir)
  return im.finish(
      config=config, weights=weights, weights_file=prefix, source_names=None,
      vocab_file=vocab_path, lower_case=lower_case,
      model_name=im.basename(model_dir), warnings=warnings)
