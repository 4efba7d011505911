"""In-process Python API for notebooks and tests: the pipeline's own preprocessing, encoding and pooling code."""
from __future__ import annotations

import functools
from typing import NamedTuple, Optional, Sequence, Union

import numpy as np

from formats.fields import Rejected, text_value
from pipeline import models
from pipeline.config import resolve_pooling
from runtime.encoding import encode_batch
from runtime.tokenizer import Tokenizer
from runtime import pooling as pooling_lib
from transforms.embed_config import EmbedConfig
from formats.records import TextRecord
from runtime.saved_models import LoadedModel, load_encoder, load_preprocessor

_TOKENIZE_CHUNK = 256


class _Models(NamedTuple):
  preprocessor: LoadedModel
  encoder: LoadedModel
  dim: int
  num_layers: int


@functools.lru_cache(maxsize=4)
def _load(preprocessor: str, encoder: str) -> _Models:
  """Both SavedModels, and the encoder's width and depth from one tiny call (TF Hub models do not list them)."""
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  pre, enc = load_preprocessor(preprocessor), load_encoder(encoder)
  with tf.device(pre.device):
    probe = pre.obj.bert_pack_inputs([pre.obj.tokenize(tf.constant(["a"]))], seq_length=tf.constant(8, tf.int32))
  with tf.device(enc.device):
    outputs = enc.obj({k: tf.cast(v, tf.int32) for k, v in probe.items()})
  return _Models(pre, enc, int(outputs["pooled_output"].shape[-1]), len(outputs["encoder_outputs"]))


def _checked_texts(values, what: str) -> list[str]:
  """The pipeline's rules for a text (a string with a non-blank character, no NUL, encodable as UTF-8), as
  TypeError / ValueError naming the index; the pipeline dead-letters such records instead."""
  if values is None or isinstance(values, (bytes, bytearray)):
    raise TypeError(f"{what} must be a string or a sequence of strings, not {type(values).__name__}")
  out = []
  for i, value in enumerate(values):
    if not isinstance(value, str):
      raise TypeError(f"{what}[{i}] must be a string, not {type(value).__name__}")
    try:
      out.append(text_value(value, f"{what}[{i}]"))
    except Rejected as e:
      raise ValueError(f"{what}[{i}]: {e.reason}") from None
  return out


def _positive(name: str, value) -> int:
  if isinstance(value, bool) or not isinstance(value, int):
    raise TypeError(f"{name} must be an int, not {type(value).__name__}")
  if value <= 0:
    raise ValueError(f"{name} must be positive, got {value}")
  return value


def embed(texts: Union[str, Sequence[str]], model: Optional[str] = "default", *,
          pairs: Optional[Union[str, Sequence[str]]] = None, preprocessor: Optional[str] = None,
          encoder: Optional[str] = None, pooling: Optional[str] = None, normalize: Optional[bool] = None,
          layers: Optional[Sequence[int]] = None, seq_length: int = 128, batch_size: int = 64) -> np.ndarray:
  """Embeds `texts` (and optional second segments `pairs`) -> float32 [N, H] in input order; one string -> [H].

  `model` is 'default', a dir written by `bert-embed export`, or hf:ORG/NAME; or give `preprocessor` and `encoder`
  (then set model=None). Pooling defaults to the model's recommendation, as in `bert-embed run`. Texts follow the
  pipeline's rules: a blank text, a NUL or a lone surrogate raises ValueError, a non-string TypeError, naming the
  index (the pipeline dead-letters such records instead); so does a text with no tokens after tokenizing.
  """
  single = isinstance(texts, str)
  texts = _checked_texts([texts] if single else texts, "texts")
  if pairs is not None:
    pairs = _checked_texts([pairs] if isinstance(pairs, str) else pairs, "pairs")
    if len(pairs) != len(texts):
      raise ValueError(f"{len(pairs)} pairs for {len(texts)} texts")
  _positive("batch_size", batch_size)
  _positive("seq_length", seq_length)
  if pooling is not None and pooling not in pooling_lib.POOLINGS:
    raise ValueError(f"pooling must be one of {', '.join(pooling_lib.POOLINGS)}, got {pooling!r}")
  layers = tuple(layers) if layers is not None else None
  if layers is not None and (not layers or not all(isinstance(i, int) and not isinstance(i, bool) for i in layers)):
    raise TypeError(f"layers must be a non-empty sequence of ints, got {layers!r}")
  spec = models.resolve_model(model if not (preprocessor or encoder) else None, preprocessor, encoder)
  from modeling.export import read_export_metadata  # pylint: disable=import-outside-toplevel
  pooling, normalize = resolve_pooling(read_export_metadata(spec.encoder), pooling, normalize)
  if layers and pooling == "pooled":
    raise ValueError("layers apply to cls and mean pooling")
  loaded = _load(spec.preprocessor, spec.encoder)
  pooling_lib.check_layers(layers, loaded.num_layers)
  config = EmbedConfig(pooling=pooling, normalize=normalize, layers=layers, seq_length=seq_length,
                       batch_size=batch_size)
  out = np.zeros((len(texts), loaded.dim), dtype=np.float32)
  records = [TextRecord(id=str(i), text=t, text_pair=None if pairs is None else pairs[i])
             for i, t in enumerate(texts)]
  tokenizer = Tokenizer(loaded.preprocessor.obj, config.seq_length)
  packed = []
  for start in range(0, len(records), _TOKENIZE_CHUNK):
    packed += tokenizer.pack(records[start:start + _TOKENIZE_CHUNK])
  for p in packed:
    if p.num_tokens <= (2 if p.record.text_pair is None else 3):
      raise ValueError(f"text {p.record.id} has no tokens after tokenizing: {p.record.text[:80]!r}")
  order = sorted(range(len(packed)), key=lambda i: packed[i].num_tokens)  # similar lengths share a batch
  for start in range(0, len(order), config.batch_size):
    idx = order[start:start + config.batch_size]
    batch = [packed[i] for i in idx]
    out[idx] = np.stack([e.embedding for e in encode_batch(loaded.encoder, batch, config.pooling_spec)])
  return out[0] if single else out
