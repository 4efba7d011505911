"""Random BERT weights for tests and benchmarks ("random:CONFIG.json").

Kernels and embedding tables: normal(0, 0.02) truncated at 2 standard
deviations (BERT's initialiser). Biases: normal(0, 0.02) (not zero, so tests
notice a dropped or misplaced bias). LayerNorm: gamma 1, beta 0. Always has a
pooler and an MLM head. Casing defaults to lower_case=True.
"""

from typing import Optional

import numpy as np

from modeling import weight_names as wn
from modeling.config import BertConfig
from modeling.errors import ModelSourceError
from modeling.importers import imported_model as im

INIT_STDDEV = 0.02


def _truncated_normal(rng: np.random.Generator, shape, stddev: float):
  values = rng.standard_normal(shape)
  outside = np.abs(values) > 2.0
  while outside.any():
    values[outside] = rng.standard_normal(int(outside.sum()))
    outside = np.abs(values) > 2.0
  return (values * stddev).astype(np.float32)


def random_weights(config: BertConfig, seed: int = 0):
  """{canonical name: float32 array} for every weight, pooler and MLM head."""
  rng = np.random.default_rng(seed)
  weights = {}
  for name, shape in wn.all_shapes(config).items():
    if name.endswith("/gamma"):
      weights[name] = np.ones(shape, np.float32)
    elif name.endswith("/beta"):
      weights[name] = np.zeros(shape, np.float32)
    elif name.endswith("/bias") or name == wn.MLM_OUTPUT_BIAS:
      weights[name] = (rng.standard_normal(shape) * INIT_STDDEV).astype(
          np.float32)
    else:
      weights[name] = _truncated_normal(rng, shape, INIT_STDDEV)
  return weights


def load(config_file: str, *, vocab: Optional[str], seed: int = 0,
         lower_case: Optional[bool] = None) -> im.ImportedModel:
  """Builds a random model for a config file and a vocab file.

  Raises:
    ModelSourceError: no vocab given, bad config, vocab size != vocab_size.
  """
  if not vocab:
    raise ModelSourceError(
        f"random:{config_file}: a vocab file is required (vocab=...)")
  config = BertConfig.from_json_file(config_file)
  name = im.basename(config_file)
  if name.endswith(".json"):
    name = name[:-len(".json")]
  return im.finish(
      config=config, weights=random_weights(config, seed),
      weights_file=config_file, source_names=None, vocab_file=vocab,
      lower_case=True if lower_case is None else lower_case,
      model_name=name, warnings=[])
