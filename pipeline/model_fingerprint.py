"""The model fingerprint: a hash of what determines a model's vectors, not of its serialization bytes or location."""
from __future__ import annotations

import hashlib
import json
from typing import Optional

# The export metadata asset: only its semantic keys enter the fingerprint (its source path, name, ... do not).
METADATA_ASSET = "bert_embed_export.json"
SEMANTIC_METADATA_KEYS = ("config", "lower_case")


def semantic_metadata(metadata: Optional[dict]) -> Optional[dict]:
  """The part of a bert-embed export's metadata that can change a vector; None for other models."""
  return {k: metadata.get(k) for k in SEMANTIC_METADATA_KEYS} if metadata else None


def all_variables(obj) -> list:
  """Every tf.Variable reachable from a loaded SavedModel object (TF Hub models also list them in `.variables`)."""
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  listed = getattr(obj, "variables", None)
  if listed:
    return list(listed)
  return [node for node in tf.train.TrackableView(obj).descendants() if isinstance(node, tf.Variable)]


def model_fingerprint(variables, preprocessor_path: str, metadata: Optional[dict] = None,
                      probe_token_ids: Optional[list] = None) -> str:
  """Hash of what determines the vectors, independent of serialization bytes and of where the model came from.

  Covers the encoder's variable values (order- and name-independent), the preprocessor's assets (vocab) except the
  export metadata file, the semantic part of that metadata (architecture config, casing) and the token ids of a
  probe text (so tokenizer behaviour compiled into the graph, e.g. lower-casing, counts for any TF Hub model).
  """
  digests = sorted(
      hashlib.sha256(str(v.shape).encode() + v.numpy().tobytes()).hexdigest() for v in variables)
  h = hashlib.sha256("\n".join(digests).encode())
  from apache_beam.io.filesystem import CompressionTypes  # pylint: disable=import-outside-toplevel
  from apache_beam.io.filesystems import FileSystems  # pylint: disable=import-outside-toplevel
  from runtime.saved_models import asset_files  # pylint: disable=import-outside-toplevel
  for name, path in asset_files(preprocessor_path):
    if name == METADATA_ASSET:
      continue
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
      h.update(name.encode() + b"\0" + hashlib.sha256(f.read()).digest())
  h.update(json.dumps({"export": semantic_metadata(metadata), "probe_token_ids": probe_token_ids},
                      sort_keys=True).encode())
  return h.hexdigest()
