"""Reads the pooling a sentence-transformers model directory asks for.

Policy: the Pooling module's config (located through `modules.json`, else
`1_Pooling/config.json`) picks "mean" (pooling_mode_mean_tokens) or "cls"
(pooling_mode_cls_token). Normalisation is recommended exactly when
`modules.json` lists a `sentence_transformers.models.Normalize` module; a
directory without `modules.json` gets no normalisation.
"""

import json
from typing import List, Optional, Tuple

import tensorflow as tf

from modeling.importers.imported_model import join, warn

_POOLING_TYPE = "sentence_transformers.models.Pooling"
_NORMALIZE_TYPE = "sentence_transformers.models.Normalize"


def _read_json(path: str):
  with tf.io.gfile.GFile(path, "r") as f:
    return json.load(f)


def recommended_pooling(model_dir: str, warnings: List[str]
                       ) -> Tuple[Optional[str], bool]:
  """Returns (pooling or None when not a sentence-transformers dir, normalize).
  """
  modules_path = join(model_dir, "modules.json")
  modules = []
  if tf.io.gfile.exists(modules_path):
    try:
      modules = _read_json(modules_path)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
      warn(warnings, f"{modules_path}: ignored, not valid JSON ({e})")
  if not isinstance(modules, list):
    warn(warnings, f"{modules_path}: ignored, not a JSON list")
    modules = []
  types = [m.get("type", "") for m in modules if isinstance(m, dict)]
  normalize = _NORMALIZE_TYPE in types
  pooling_dir = "1_Pooling"
  for m in modules:
    if isinstance(m, dict) and m.get("type") == _POOLING_TYPE and m.get("path"):
      pooling_dir = m["path"]
  config_path = join(join(model_dir, pooling_dir), "config.json")
  if not tf.io.gfile.exists(config_path):
    return None, False
  try:
    pooling = _read_json(config_path)
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    warn(warnings, f"{config_path}: ignored, not valid JSON ({e})")
    return None, False
  if not isinstance(pooling, dict):
    warn(warnings, f"{config_path}: ignored, not a JSON object")
    return None, False
  enabled = sorted(k for k, v in pooling.items()
                   if k.startswith("pooling_mode_") and v is True)
  if "pooling_mode_mean_tokens" in enabled:
    mode, key = "mean", "pooling_mode_mean_tokens"
  elif "pooling_mode_cls_token" in enabled:
    mode, key = "cls", "pooling_mode_cls_token"
  else:
    warn(warnings, f"{config_path}: pooling {enabled} is not supported; "
                   "not recommending a sentence-transformers pooling")
    return None, False
  others = [k for k in enabled if k != key]
  if others:
    warn(warnings, f"{config_path}: also enables {others}; recommending "
                   f"{mode!r} pooling only")
  return mode, normalize
