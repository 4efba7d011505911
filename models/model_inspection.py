"""Checking a resolved model before the job starts: both SavedModels load, fit together and encode probe texts."""
from __future__ import annotations

import json
from typing import NamedTuple, Optional

import numpy as np

from models import fingerprint_cache, model_fingerprint
from models.model_flags import ModelSpec
from formats.usage import UsageError

PROBE_TEXTS = ("Hello world.", "A second, longer probe sentence for the encoder.")
# Tokenized for the fingerprint: catches casing, accent stripping and splitting that live in the preprocessor's graph.
TOKENIZER_PROBE = "Hello WORLD, Café naïve Zürich ÜBER-fast 1234 [MASK] 日本語!"


class ModelInfo(NamedTuple):
  """What the launcher learnt by loading both SavedModels and encoding probe texts."""
  dim: int
  num_layers: int
  vocab_size: int
  has_mlm: bool
  metadata: Optional[dict]  # the export metadata of bert-embed exports; None for other TF Hub models
  fingerprint: str  # over the encoder's variable values and the preprocessor's vocab, not serialization bytes


def inspect_models(spec: ModelSpec, seq_length: int) -> ModelInfo:
  """Loads both SavedModels and encodes probe texts, so an unreadable or mismatched model fails before the job.

  A model inspected before with the same files (sizes and mtimes), versions and `seq_length` is not loaded again:
  what that inspection found is read from the cache (models/fingerprint_cache.py), and the workers load each model
  once. Otherwise the loads go through the workers' process-level cache (runtime/saved_models.py): on the
  DirectRunner the workers then reuse these objects instead of loading the models again.
  """
  key = fingerprint_cache.inspection_cache_key(spec, seq_length)
  cached = fingerprint_cache.cached_inspection(key)
  if cached is not None and set(cached) == set(ModelInfo._fields):
    return ModelInfo(**cached)
  info = _inspect(spec, seq_length)
  fingerprint_cache.store_inspection(key, info._asdict())
  return info


def _inspect(spec: ModelSpec, seq_length: int) -> ModelInfo:
  from runtime import quiet  # pylint: disable=import-outside-toplevel
  from runtime.saved_models import load_encoder, load_preprocessor  # pylint: disable=import-outside-toplevel
  tf = quiet.import_tensorflow()
  try:
    pre = load_preprocessor(spec.preprocessor).obj
  except Exception as e:  # pylint: disable=broad-except
    raise UsageError(f"cannot load the preprocessor {spec.preprocessor}: {type(e).__name__}: {e}") from None
  try:
    enc = load_encoder(spec.encoder).obj
  except Exception as e:  # pylint: disable=broad-except
    raise UsageError(f"cannot load the encoder {spec.encoder}: {type(e).__name__}: {e}") from None
  try:
    special = {k: int(v) for k, v in pre.tokenize.get_special_tokens_dict().items()}
    tokens = pre.tokenize(tf.constant(PROBE_TEXTS))
    probe_token_ids = pre.tokenize(tf.constant([TOKENIZER_PROBE])).to_list()
    packed = pre.bert_pack_inputs([tokens], seq_length=tf.constant(seq_length, tf.int32))
  except Exception as e:  # pylint: disable=broad-except
    raise UsageError(f"the preprocessor {spec.preprocessor} does not implement the TF Hub BERT preprocessor "
                     f"interface (tokenize, bert_pack_inputs): {type(e).__name__}: {e}") from None
  vocab_size = special.get("vocab_size")
  # Before the probe call: a smaller encoder vocab fails the call only when a probe token is out of its range.
  variables = model_fingerprint.all_variables(enc)
  embeddings = [v for v in variables if "word_embeddings" in v.name and len(v.shape) == 2]
  if vocab_size is not None and len(embeddings) == 1 and int(embeddings[0].shape[0]) != vocab_size:
    raise UsageError(f"vocab mismatch: the preprocessor {spec.preprocessor} has {vocab_size} tokens but the encoder "
                     f"{spec.encoder} has {int(embeddings[0].shape[0])} word embeddings")
  try:
    outputs = enc(dict(packed))
    dim = int(outputs["pooled_output"].shape[-1])
    num_layers = len(outputs["encoder_outputs"])
  except Exception as e:  # pylint: disable=broad-except
    raise UsageError(f"the encoder {spec.encoder} failed on the preprocessor's output: {type(e).__name__}: {e}. "
                     "Are the preprocessor and encoder from the same model?") from None
  if not np.all(np.isfinite(outputs["pooled_output"].numpy())):
    raise UsageError(f"the encoder {spec.encoder} returned non-finite values on probe texts")
  from modeling.export_metadata import read_export_metadata  # pylint: disable=import-outside-toplevel
  metadata = read_export_metadata(spec.encoder)
  fingerprint = fingerprint_cache.cached_fingerprint(
      fingerprint_cache.fingerprint_cache_key(spec, metadata, probe_token_ids),
      lambda: model_fingerprint.model_fingerprint(variables, spec.preprocessor, metadata, probe_token_ids,
                                                  model_fingerprint.encoder_probe(enc, packed)))
  return ModelInfo(dim=dim, num_layers=num_layers, vocab_size=vocab_size, has_mlm=hasattr(enc, "mlm"),
                   metadata=metadata, fingerprint=fingerprint)


def describe(spec: ModelSpec, info: ModelInfo) -> dict:
  """The model section of the manifest."""
  described = {"name": spec.name, "preprocessor": spec.preprocessor, "encoder": spec.encoder, "dim": info.dim,
               "num_layers": info.num_layers, "vocab_size": info.vocab_size, "fingerprint": info.fingerprint,
               "export_metadata": json.loads(json.dumps(info.metadata)) if info.metadata else None}
  if spec.staged_from:
    described["staged_from"] = spec.staged_from
  return described
