"""In-process Python API for notebooks, tests and other programs: the pipeline's own preprocessing, encoding and
pooling code, called the way sentence-transformers' `encode` is.

The API leaves its host process as it found it (environment, logging, stderr, the csv module's limit); the models
it loads stay cached until `release_models()`.
"""
from __future__ import annotations

import functools
import gc
from typing import NamedTuple, Optional, Sequence, Union

import numpy as np

from formats import compact
from formats.fields import Rejected, is_blank, text_value
from pipeline.progress_bar import ProgressBar
from models import model_flags
from pipeline.config import resolve_pooling
from runtime.encoding import encode_batch
from runtime.tokenizer import Tokenizer
from runtime import pooling as pooling_lib
from transforms.embedding.embed_config import EmbedConfig
from formats.records import TextRecord
from runtime import saved_models
from runtime.saved_models import LoadedModel, load_encoder, load_preprocessor

_TOKENIZE_CHUNK = 256
PRECISIONS = ("float32", "int8", "uint8", "binary", "ubinary")


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


def release_models() -> None:
  """Drops every model this process keeps loaded for `embed()` and for EmbedTexts' workers, so that their memory
  can be freed once nothing else refers to them; the next use loads them again."""
  _load.cache_clear()
  saved_models.clear_cache()
  gc.collect()  # loaded SavedModels hold reference cycles


def _checked_texts(values, what: str) -> list[str]:
  """The pipeline's rules for a text (a string without NUL, encodable as UTF-8), as TypeError / ValueError naming
  the index. A blank text is accepted: it has no tokens, so it is encoded as `[CLS] [SEP]` (the pipeline
  dead-letters such records instead)."""
  if values is None or isinstance(values, (bytes, bytearray)):
    raise TypeError(f"{what} must be a string or a sequence of strings, not {type(values).__name__}")
  out = []
  for i, value in enumerate(values):
    if not isinstance(value, str):
      raise TypeError(f"{what}[{i}] must be a string, not {type(value).__name__}")
    if is_blank(value):
      out.append(value)
      continue
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


def _normalize_flag(normalize: Optional[bool], normalize_embeddings: Optional[bool]) -> Optional[bool]:
  if normalize is not None and normalize_embeddings is not None and bool(normalize) != bool(normalize_embeddings):
    raise ValueError(f"normalize={normalize} and normalize_embeddings={normalize_embeddings} disagree")
  return normalize if normalize is not None else normalize_embeddings


def quantize(vectors: np.ndarray, precision: str) -> np.ndarray:
  """float32 [N, H] -> the `precision` form, as sentence-transformers' quantization defines it, computed by the
  pipeline's own code for --output-dtype (formats/compact.py).

  int8 / uint8: each dimension's range is calibrated on `vectors` themselves (its min and max over the rows) and
  cut into 255 steps; a value maps to the index of its step (0..255), for int8 minus 128 and rounded toward zero
  as sentence-transformers does (the pipeline's int8 floors). A dimension whose
  values are all equal maps to the lowest step. binary / ubinary: the sign bits (value > 0) packed 8 to a byte,
  high bit first, so [N, ceil(H / 8)]; binary stores each byte minus 128 as int8.
  """
  if precision == "float32":
    return vectors
  if precision in ("int8", "uint8"):
    if not len(vectors):
      return np.zeros(vectors.shape, np.int8 if precision == "int8" else np.uint8)
    ranges = compact.calibrate(vectors)
    if precision == "int8":
      return compact.quantize_int8(vectors, ranges, toward_zero=True)
    return (compact.quantize_int8(vectors, ranges).astype(np.int16) + 128).astype(np.uint8)
  bits = compact.pack_bits(vectors)
  return (bits.astype(np.int16) - 128).astype(np.int8) if precision == "binary" else bits


def embed(texts: Union[str, Sequence[str]], model: Optional[str] = "default", *,
          pairs: Optional[Union[str, Sequence[str]]] = None, preprocessor: Optional[str] = None,
          encoder: Optional[str] = None, pooling: Optional[str] = None, normalize: Optional[bool] = None,
          layers: Optional[Sequence[int]] = None, seq_length: int = 128, batch_size: int = 64,
          normalize_embeddings: Optional[bool] = None, truncate_dim: Optional[int] = None,
          precision: str = "float32", show_progress_bar: Optional[bool] = None, convert_to_numpy: bool = True,
          convert_to_tensor: bool = False):
  """Embeds `texts` (and optional second segments `pairs`) -> [N, H] in input order; one string -> [H].

  `model` is 'default', a dir written by `bert-embed export`, or hf:ORG/NAME; or give `preprocessor` and `encoder`
  (then set model=None). Pooling defaults to the model's recommendation, as in `bert-embed run`; `normalize`
  (or its sentence-transformers name `normalize_embeddings`) overrides the recommended L2 normalisation.
  Texts follow the pipeline's rules, except that a blank text (or one with no tokens) is encoded as `[CLS] [SEP]`,
  as sentence-transformers does: a NUL or a lone surrogate raises ValueError, a non-string TypeError, naming the
  index (the pipeline dead-letters all of these).

  As in sentence-transformers' `encode`: `batch_size` texts per encoder call; `truncate_dim` keeps the first
  dimensions (renormalised when normalising); `precision` 'float32', or 'int8' / 'uint8' (ranges calibrated on
  these vectors) or 'binary' / 'ubinary' (packed sign bits), see `quantize`; `show_progress_bar` draws a bar on
  stderr; `convert_to_tensor` returns one tf.Tensor, `convert_to_numpy=False` a list of per-text tf.Tensors.
  """
  single = isinstance(texts, str)
  texts = _checked_texts([texts] if single else texts, "texts")
  if pairs is not None:
    pairs = _checked_texts([pairs] if isinstance(pairs, str) else pairs, "pairs")
    if len(pairs) != len(texts):
      raise ValueError(f"{len(pairs)} pairs for {len(texts)} texts")
  _positive("batch_size", batch_size)
  _positive("seq_length", seq_length)
  if truncate_dim is not None:
    _positive("truncate_dim", truncate_dim)
  if precision not in PRECISIONS:
    raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
  normalize = _normalize_flag(normalize, normalize_embeddings)
  if pooling is not None and pooling not in pooling_lib.POOLINGS:
    raise ValueError(f"pooling must be one of {', '.join(pooling_lib.POOLINGS)}, got {pooling!r}")
  layers = tuple(layers) if layers is not None else None
  if layers is not None and (not layers or not all(isinstance(i, int) and not isinstance(i, bool) for i in layers)):
    raise TypeError(f"layers must be a non-empty sequence of ints, got {layers!r}")
  spec = model_flags.resolve_model(model if not (preprocessor or encoder) else None, preprocessor, encoder)
  from modeling.export_metadata import read_export_metadata  # pylint: disable=import-outside-toplevel
  pooling, normalize = resolve_pooling(read_export_metadata(spec.encoder), pooling, normalize)
  if layers and pooling == "pooled":
    raise ValueError("layers apply to cls and mean pooling")
  loaded = _load(spec.preprocessor, spec.encoder)
  pooling_lib.check_layers(layers, loaded.num_layers)
  if truncate_dim is not None and truncate_dim > loaded.dim:
    raise ValueError(f"truncate_dim {truncate_dim} is larger than the model's {loaded.dim} dimensions")
  config = EmbedConfig(pooling=pooling, normalize=normalize, layers=layers, seq_length=seq_length,
                       batch_size=batch_size)
  out = np.zeros((len(texts), loaded.dim), dtype=np.float32)
  records = [TextRecord(id=str(i), text=t, text_pair=None if pairs is None else pairs[i])
             for i, t in enumerate(texts)]
  tokenizer = Tokenizer(loaded.preprocessor.obj, config.seq_length)
  packed = []
  for start in range(0, len(records), _TOKENIZE_CHUNK):
    packed += tokenizer.pack(records[start:start + _TOKENIZE_CHUNK])
  order = sorted(range(len(packed)), key=lambda i: packed[i].num_tokens)  # similar lengths share a batch
  with ProgressBar(len(order), "texts", enabled=bool(show_progress_bar)) as bar:
    for start in range(0, len(order), config.batch_size):
      idx = order[start:start + config.batch_size]
      batch = [packed[i] for i in idx]
      out[idx] = np.stack([e.embedding for e in encode_batch(loaded.encoder, batch, config.pooling_spec)])
      bar.advance(len(idx))
  out = quantize(compact.truncate(out, truncate_dim, bool(normalize)), precision)
  return _converted(out, single, convert_to_numpy, convert_to_tensor)


def _converted(out: np.ndarray, single: bool, convert_to_numpy: bool, convert_to_tensor: bool):
  if convert_to_tensor or not convert_to_numpy:
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    if convert_to_tensor:
      return tf.constant(out[0] if single else out)
    rows = [tf.constant(row) for row in out]
    return rows[0] if single else rows
  return out[0] if single else out
