"""In-process Python API for notebooks and tests: the pipeline's own preprocessing, encoding and pooling code."""
from __future__ import annotations

import functools
from typing import Optional, Sequence

import numpy as np

from pipeline import models
from pipeline.config import resolve_pooling
from transforms.encode import PoolingSpec, encode_batch
from transforms.preprocess import Tokenizer
from transforms.records import TextRecord
from transforms.saved_models import load_encoder, load_preprocessor


@functools.lru_cache(maxsize=4)
def _load(preprocessor: str, encoder: str):
  return load_preprocessor(preprocessor), load_encoder(encoder)


def embed(texts: Sequence[str], model: Optional[str] = "default", *, pairs: Optional[Sequence[str]] = None,
          preprocessor: Optional[str] = None, encoder: Optional[str] = None, pooling: Optional[str] = None,
          normalize: Optional[bool] = None, layers: Optional[Sequence[int]] = None, seq_length: int = 128,
          batch_size: int = 64) -> np.ndarray:
  """Embeds `texts` (and optional second segments `pairs`) -> float32 [N, H], in input order.

  `model` is 'default', a dir written by `bert-embed export`, or hf:ORG/NAME; or give `preprocessor` and `encoder`
  (then set model=None). Pooling defaults to the model's recommendation, as in `bert-embed run`. A text with no
  tokens raises ValueError naming its index (the pipeline dead-letters such records instead).
  """
  texts = list(texts)
  if pairs is not None and len(pairs) != len(texts):
    raise ValueError(f"{len(pairs)} pairs for {len(texts)} texts")
  spec = models.resolve_model(model if not (preprocessor or encoder) else None, preprocessor, encoder)
  from modeling.export import read_export_metadata  # pylint: disable=import-outside-toplevel
  pooling, normalize = resolve_pooling(read_export_metadata(spec.encoder), pooling, normalize)
  layers = tuple(layers) if layers else None
  if layers and pooling == "pooled":
    raise ValueError("layers apply to cls and mean pooling")
  pre, enc = _load(spec.preprocessor, spec.encoder)
  records = [TextRecord(id=str(i), text=t, text_pair=None if pairs is None else pairs[i])
             for i, t in enumerate(texts)]
  tokenizer = Tokenizer(pre.obj, seq_length)
  packed = []
  for start in range(0, len(records), 256):
    packed += tokenizer.pack(records[start:start + 256])
  for p in packed:
    if p.num_tokens <= (2 if p.record.text_pair is None else 3):
      raise ValueError(f"text {p.record.id} has no tokens after tokenizing: {p.record.text[:80]!r}")
  out = np.zeros((len(texts), 0), dtype=np.float32)
  order = sorted(range(len(packed)), key=lambda i: packed[i].num_tokens)  # similar lengths share a batch
  spec_ = PoolingSpec(pooling, normalize, layers, False)
  for start in range(0, len(order), batch_size):
    idx = order[start:start + batch_size]
    vectors = np.stack([e.embedding for e in encode_batch(enc, [packed[i] for i in idx], spec_)])
    if out.shape[1] == 0:
      out = np.zeros((len(texts), vectors.shape[1]), dtype=np.float32)
    out[idx] = vectors
  return out
