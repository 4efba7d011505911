"""Exports a model source as two TF Hub-form SavedModels.

    output_dir/preprocessor/  text -> {input_word_ids, input_mask,
                              input_type_ids} (needs `import tensorflow_text`)
    output_dir/encoder/       packed inputs -> pooled/sequence/encoder outputs
                              (+ `.mlm` when the source has MLM weights)

Both carry `assets/bert_embed_export.json` (see `build_metadata`). Everything
is written to a sibling temporary directory first and renamed into place, so an
interrupted export never leaves a half-written model at `output_dir`.
"""

import json
import logging
import os
import posixpath
import tempfile
import uuid
from typing import Optional

import tensorflow as tf

from modeling import encoder as encoder_lib
from modeling import vocab as vocab_lib
from modeling.errors import SeqLengthError
from modeling.export_metadata import (  # noqa: F401  (re-exported)
    ENCODER_SUBDIR, METADATA_FILENAME, PREPROCESSOR_SUBDIR, read_export_metadata)
from modeling.importers import ImportedModel, load_source

FORMAT_VERSION = 1


def build_metadata(source: str, imported: ImportedModel,
                   seq_length: int) -> dict:
  """The JSON-able description stored next to both SavedModels."""
  return {
      "format_version": FORMAT_VERSION,
      "source": source,
      "model_name": imported.model_name,
      "config": imported.config.to_dict(),
      "lower_case": bool(imported.lower_case),
      "seq_length": int(seq_length),
      "vocab_size": imported.config.vocab_size,
      "has_pooler": bool(imported.has_pooler),
      "has_mlm": bool(imported.has_mlm),
      "recommended_pooling": imported.recommended_pooling,
      "recommended_normalize": bool(imported.recommended_normalize),
      "warnings": list(imported.warnings),
  }


def _join(directory: str, name: str) -> str:
  return posixpath.join(directory, name) if "://" in directory else \
      os.path.join(directory, name)


def export_model(source: str, output_dir: str, *, seq_length: int = 128,
                 lower_case: Optional[bool] = None, vocab: Optional[str] = None,
                 seed: int = 0, overwrite: bool = False) -> dict:
  """Imports `source` and writes the preprocessor and encoder SavedModels.

  Args:
    source: "hf:DIR", "tf1:DIR" or "random:CONFIG.json".
    output_dir: destination (local or tf.io.gfile URL); must not exist, be an
      empty directory, or `overwrite` must be set.
    seq_length: default packed length of the preprocessor (overridable at
      call time through `bert_pack_inputs(..., seq_length=)`).
    lower_case: tokenizer casing override; None = decided by the importer.
    vocab: vocab file (required for "random:", an override otherwise).
    seed: RNG seed for "random:".
    overwrite: replace an existing non-empty `output_dir`.

  Returns:
    The metadata dict (as stored in `assets/bert_embed_export.json`).

  Raises:
    ModelSourceError: the source is unusable.
    SeqLengthError: seq_length out of range (a ValueError).
    FileExistsError: `output_dir` is non-empty and `overwrite` is False.
  """
  output_dir = output_dir.rstrip("/") or output_dir
  _check_destination(output_dir, overwrite)
  imported = load_source(source, lower_case=lower_case, vocab=vocab,
                         seed=seed)
  max_length = imported.config.max_position_embeddings
  if not 2 <= seq_length <= max_length:
    raise SeqLengthError(seq_length, max_length)
  metadata = build_metadata(source, imported, seq_length)
  tokens = vocab_lib.read_vocab(imported.vocab_file)
  special_ids = vocab_lib.special_token_ids(tokens, imported.vocab_file)

  staging = f"{output_dir}.tmp-{uuid.uuid4().hex[:12]}"
  try:
    with tempfile.TemporaryDirectory(prefix="bert_embed_export_") as scratch:
      # Assets keep their basename inside the SavedModel: stage them locally
      # under fixed names (this also makes remote vocab files local).
      metadata_file = os.path.join(scratch, METADATA_FILENAME)
      with open(metadata_file, "w", encoding="utf-8") as f:
        json.dump(metadata, f, indent=2, sort_keys=True)
      vocab_file = os.path.join(scratch, "vocab.txt")
      tf.io.gfile.copy(imported.vocab_file, vocab_file, overwrite=True)

      # Here, not at the top: `import tensorflow_text` loads Keras, and a
      # job's launcher imports this module for read_export_metadata
      # (runtime/tf_import.py).
      # pylint: disable-next=import-outside-toplevel
      from modeling import preprocessor as preprocessor_lib
      preprocessor = preprocessor_lib.BertPreprocessor(
          vocab_file, imported.lower_case, seq_length, special_ids,
          len(tokens), extra_assets=[metadata_file])
      tf.saved_model.save(
          preprocessor, _join(staging, PREPROCESSOR_SUBDIR),
          signatures={"serving_default": preprocessor.__call__})
      del preprocessor

      encoder = encoder_lib.build_encoder(imported.config, imported.weights)
      encoder.metadata_file = tf.saved_model.Asset(metadata_file)
      tf.saved_model.save(
          encoder, _join(staging, ENCODER_SUBDIR),
          signatures={"serving_default": encoder.serving_default})
      del encoder
    _move_into_place(staging, output_dir, overwrite)
  except BaseException:
    if tf.io.gfile.exists(staging):
      tf.io.gfile.rmtree(staging)
    raise
  logging.info("exported %s to %s", source, output_dir)
  return metadata


def _check_destination(output_dir: str, overwrite: bool) -> None:
  if tf.io.gfile.exists(output_dir) and not overwrite:
    if not tf.io.gfile.isdir(output_dir) or tf.io.gfile.listdir(output_dir):
      raise FileExistsError(
          f"{output_dir} exists and is not empty (set overwrite to replace it)")


def _move_into_place(staging: str, output_dir: str, overwrite: bool) -> None:
  """Renames the finished export to `output_dir`, replacing what is there.

  On local disks the final rename is atomic; on object stores gfile's rename
  copies object by object.
  """
  old = None
  if tf.io.gfile.exists(output_dir):
    _check_destination(output_dir, overwrite)
    old = f"{output_dir}.old-{uuid.uuid4().hex[:12]}"
    tf.io.gfile.rename(output_dir, old)
  else:
    parent = posixpath.dirname(output_dir) if "://" in output_dir else \
        os.path.dirname(os.path.abspath(output_dir))
    if parent:
      tf.io.gfile.makedirs(parent)
  tf.io.gfile.rename(staging, output_dir)
  if old is not None:
    tf.io.gfile.rmtree(old)
