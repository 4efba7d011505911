"""The model fingerprint: a hash of what determines a model's vectors, not of its serialization bytes or location."""
from __future__ import annotations

import hashlib
import json
from typing import Mapping, Optional

import numpy as np

# The export metadata asset: only its semantic keys enter the fingerprint (its source path, name, ... do not).
METADATA_ASSET = "bert_embed_export.json"
SEMANTIC_METADATA_KEYS = ("config", "lower_case")
# The encoder's outputs on probe texts enter as, per vector, the signs of its projections on PROBE_DIRECTIONS fixed
# directions and its norm in steps of 2**(1/NORM_STEPS_PER_OCTAVE). Float rounding (another thread count, padding
# length or CPU: ~1e-6) leaves these alike, unlike rounded values, which some of a thousand values cross; another
# computation (an activation, a scale, a layer) changes them.
PROBE_DIRECTIONS = 64
NORM_STEPS_PER_OCTAVE = 8


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


def _directions(dim: int) -> np.ndarray:
  """PROBE_DIRECTIONS fixed vectors of +-1 entries, the same on every machine: the bits of SHA-256 digests."""
  needed = PROBE_DIRECTIONS * dim
  data = b"".join(hashlib.sha256(f"bert-embed probe direction {i}".encode()).digest() for i in range(-(-needed // 256)))
  bits = np.unpackbits(np.frombuffer(data, np.uint8))[:needed].astype(np.float64)
  return (2.0 * bits - 1.0).reshape(PROBE_DIRECTIONS, dim)


def summarize_vectors(vectors) -> list[str]:
  """Per vector [..., H]: `SIGNS:STEP`, the signs of its projections on the fixed directions (hex) and the step of its
  norm (floor(log2(norm) * NORM_STEPS_PER_OCTAVE)); `non-finite` or `zero` for such vectors."""
  vectors = np.asarray(vectors, np.float64)
  vectors = vectors.reshape(-1, vectors.shape[-1])
  signs = vectors @ _directions(vectors.shape[-1]).T > 0
  summaries = []
  for vector, bits in zip(vectors, signs):
    norm = float(np.linalg.norm(vector))
    if not np.isfinite(norm):
      summaries.append("non-finite")
    elif norm == 0.0:
      summaries.append("zero")
    else:
      summaries.append(f"{np.packbits(bits).tobytes().hex()}:{int(np.floor(np.log2(norm) * NORM_STEPS_PER_OCTAVE))}")
  return summaries


def encoder_probe(encoder, packed: Mapping) -> dict:
  """The encoder's behaviour on packed probe texts, summarized (summarize_vectors): their pooled outputs and the means
  of their sequence outputs over their tokens. The padding is cut to the longest text first, so the encoder call has
  the same shape whatever length the texts were packed to."""
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  mask = np.asarray(packed["input_mask"])
  longest = max(1, int(mask.sum(axis=1).max()))
  outputs = encoder({name: tf.constant(np.asarray(value)[:, :longest]) for name, value in packed.items()})
  weights = mask[:, :longest, np.newaxis].astype(np.float64)
  sequence = np.asarray(outputs["sequence_output"], np.float64)
  means = (sequence * weights).sum(axis=1) / np.maximum(weights.sum(axis=1), 1.0)
  return {"pooled_output": summarize_vectors(outputs["pooled_output"]),
          "mean_sequence_output": summarize_vectors(means)}


def model_fingerprint(variables, preprocessor_path: str, metadata: Optional[dict] = None,
                      probe_token_ids: Optional[list] = None, probe_outputs: Optional[dict] = None) -> str:
  """Hash of what determines the vectors, independent of serialization bytes and of where the model came from.

  Covers the encoder's variable values (order- and name-independent), the preprocessor's assets (vocab) except the
  export metadata file, the semantic part of that metadata (architecture config, casing), the token ids of a
  probe text (so tokenizer behaviour compiled into the graph, e.g. lower-casing, counts for any TF Hub model) and
  the encoder's outputs on probe texts (encoder_probe: so does the encoder's graph, what it computes with the
  variables).
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
  h.update(json.dumps({"export": semantic_metadata(metadata), "probe_token_ids": probe_token_ids,
                       "probe_outputs": probe_outputs}, sort_keys=True).encode())
  return h.hexdigest()
