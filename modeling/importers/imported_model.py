"""The result of an import, and checks shared by all importers."""

import dataclasses
import logging
import posixpath
from typing import Dict, List, Mapping, Optional

import numpy as np
import tensorflow as tf

from modeling import vocab as vocab_lib
from modeling import weight_names
from modeling.config import BertConfig
from modeling.errors import ModelSourceError


@dataclasses.dataclass
class ImportedModel:
  """Everything export needs, independent of where it came from.

  Attributes:
    config: the architecture.
    weights: {canonical TF1 name: float32 array}, kernels [in, out].
    vocab_file: path of the WordPiece vocab (id = line number).
    lower_case: tokenizer casing.
    model_name: short name for metadata (basename of the source dir/config).
    has_pooler: pooler weights present.
    has_mlm: MLM head weights present.
    recommended_pooling: "mean" | "cls" | "pooled".
    recommended_normalize: whether embeddings should be L2-normalised.
    warnings: human-readable notes about the import.
  """
  config: BertConfig
  weights: Dict[str, np.ndarray]
  vocab_file: str
  lower_case: bool
  model_name: str
  has_pooler: bool
  has_mlm: bool
  recommended_pooling: str
  recommended_normalize: bool
  warnings: List[str] = dataclasses.field(default_factory=list)


def basename(path: str) -> str:
  """Last component of a local or URL-like path, ignoring trailing slashes."""
  return posixpath.basename(path.rstrip("/")) or path


def join(directory: str, name: str) -> str:
  return posixpath.join(directory, name) if "://" in directory else \
      tf.io.gfile.join(directory, name)


def require_file(directory: str, name: str) -> str:
  path = join(directory, name)
  if not tf.io.gfile.exists(path):
    raise ModelSourceError(f"{path}: required file not found")
  return path


def warn(warnings: List[str], message: str) -> None:
  """Records a warning for the metadata and logs it."""
  logging.warning("%s", message)
  warnings.append(message)


def casing_from_name(name: str, warnings: List[str],
                     what: str) -> bool:
  """Infers lower_case from a model name: "uncased" -> True, "cased" -> False,
  otherwise True with a warning."""
  lowered = name.lower()
  if "uncased" in lowered:
    return True
  if "cased" in lowered:
    return False
  warn(warnings, f"{what}: casing unknown, assuming lower_case=True (pass "
                 "lower_case / --cased to override)")
  return True


def summarize_names(names: List[str], limit: int = 8) -> str:
  shown = ", ".join(names[:limit])
  return shown + (f" (+{len(names) - limit} more)" if len(names) > limit
                  else "")


def finish(*, config: BertConfig, weights: Mapping[str, np.ndarray],
           weights_file: str, source_names: Optional[Mapping[str, str]],
           vocab_file: str, lower_case: bool, model_name: str,
           warnings: List[str],
           pooling: Optional[str] = None,
           normalize: bool = False) -> ImportedModel:
  """Validates weights and vocab against the config and builds the result.

  Args:
    pooling: the pooling the source asks for (e.g. sentence-transformers), or
      None to recommend "pooled" (or "cls" when there is no pooler).
    normalize: whether the source asks for L2-normalised embeddings.

  Raises:
    ModelSourceError: shapes disagree with the config, the vocab size differs
      from the embedding rows, special tokens are missing.
  """
  weights = {k: np.asarray(v, np.float32) for k, v in weights.items()}
  has_pooler, has_mlm = weight_names.validate(weights, config, weights_file,
                                              source_names)
  tokens = vocab_lib.read_vocab(vocab_file)
  if len(tokens) != config.vocab_size:
    raise ModelSourceError(
        f"{vocab_file}: vocab has {len(tokens)} tokens but the model has "
        f"{config.vocab_size} word-embedding rows (vocab_size)")
  vocab_lib.special_token_ids(tokens, vocab_file)
  if not has_pooler:
    warn(warnings, f"{weights_file}: no pooler weights; pooled_output is the "
                   "[CLS] vector of sequence_output (no dense+tanh)")
  if pooling is None:
    pooling = "pooled" if has_pooler else "cls"
  return ImportedModel(
      config=config, weights=weights, vocab_file=vocab_file,
      lower_case=bool(lower_case), model_name=model_name,
      has_pooler=has_pooler, has_mlm=has_mlm, recommended_pooling=pooling,
      recommended_normalize=bool(normalize), warnings=warnings)
