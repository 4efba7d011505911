"""Resolving --model / --preprocessor / --encoder to SavedModel paths, and checking them before the job starts."""
from __future__ import annotations

import hashlib
import json
import logging
import os
from typing import NamedTuple, Optional

import numpy as np

from formats.paths import is_local_path
from pipeline.options import UsageError

_LOG = logging.getLogger(__name__)
PROBE_TEXTS = ("Hello world.", "A second, longer probe sentence for the encoder.")
# Tokenized for the fingerprint: catches casing, accent stripping and splitting that live in the preprocessor's graph.
TOKENIZER_PROBE = "Hello WORLD, Café naïve Zürich ÜBER-fast 1234 [MASK] 日本語!"
# The export metadata asset: only its semantic keys enter the fingerprint (its source path, name, ... do not).
_METADATA_ASSET = "bert_embed_export.json"
_SEMANTIC_METADATA_KEYS = ("config", "lower_case")


class ModelSpec(NamedTuple):
  preprocessor: str
  encoder: str
  name: str
  staged_from: Optional[str] = None  # the model flags' value when a launcher-side model was staged (pipeline/remote.py)


class ModelInfo(NamedTuple):
  """What the launcher learnt by loading both SavedModels and encoding probe texts."""
  dim: int
  num_layers: int
  vocab_size: int
  has_mlm: bool
  metadata: Optional[dict]  # the export metadata of bert-embed exports; None for other TF Hub models
  fingerprint: str  # over the encoder's variable values and the preprocessor's vocab, not serialization bytes


# Beam's FileSystems for every path (gs://, s3://, local, ...), imported on first use: check_model_flags runs
# before Beam is imported (pipeline/arguments.py).
def _filesystems():
  from apache_beam.io.filesystems import FileSystems  # pylint: disable=import-outside-toplevel
  return FileSystems


def _join(path: str, name: str) -> str:
  return _filesystems().join(path.rstrip("/") or path, name)


def _exists(path: str) -> bool:
  return _filesystems().exists(path)


def _hf_snapshot(ref: str) -> str:
  repo = ref[len("hf:"):]
  try:
    from huggingface_hub import snapshot_download  # pylint: disable=import-outside-toplevel
  except ImportError:
    raise UsageError(f"{ref}: resolving hf: models needs `pip install huggingface_hub`") from None
  try:
    return snapshot_download(repo_id=repo)
  except Exception as e:  # pylint: disable=broad-except
    raise UsageError(f"{ref}: could not download from the Hugging Face Hub ({type(e).__name__}: {e}). "
                     "Offline, download the SavedModel elsewhere and pass its directory.") from None


def _resolve_path(ref: str) -> str:
  return _hf_snapshot(ref) if ref.startswith("hf:") else ref


def check_model_flags(model: Optional[str], preprocessor: Optional[str], encoder: Optional[str]) -> None:
  """Raises UsageError, saying what to give, unless the flags name exactly one model (nothing is loaded)."""
  if model and (preprocessor or encoder):
    raise UsageError("give either --model or --preprocessor with --encoder, not both")
  if not model and not (preprocessor and encoder):
    if preprocessor or encoder:
      raise UsageError("--preprocessor and --encoder go together: give both")
    raise UsageError("no model given. Use --model default (the bundled offline MiniLM model), --model DIR (a dir "
                     "written by `bert-embed export`), or --preprocessor P --encoder E (TF Hub BERT SavedModels)")


def resolve_model(model: Optional[str], preprocessor: Optional[str], encoder: Optional[str]) -> ModelSpec:
  """Turns the model flags into a ModelSpec; raises UsageError with what to do when they are missing or wrong."""
  check_model_flags(model, preprocessor, encoder)
  if model == "default":
    from pipeline.default_model import DefaultModelUnavailable, ensure_default_model  # pylint: disable=import-outside-toplevel
    try:
      model = ensure_default_model()
    except DefaultModelUnavailable as e:
      raise UsageError(str(e)) from None
  if model:
    root = _resolve_path(model)
    spec = ModelSpec(_join(root, "preprocessor"), _join(root, "encoder"), root.rstrip("/").split("/")[-1])
  else:
    spec = ModelSpec(_resolve_path(preprocessor), _resolve_path(encoder), encoder.rstrip("/").split("/")[-1])
  for role, path in (("preprocessor", spec.preprocessor), ("encoder", spec.encoder)):
    if not _exists(_join(path, "saved_model.pb")):
      raise UsageError(f"the {role} SavedModel {path} does not exist or has no saved_model.pb")
  return spec


def all_variables(obj) -> list:
  """Every tf.Variable reachable from a loaded SavedModel object (TF Hub models also list them in `.variables`)."""
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  listed = getattr(obj, "variables", None)
  if listed:
    return list(listed)
  return [node for node in tf.train.TrackableView(obj).descendants() if isinstance(node, tf.Variable)]


def _fingerprint(variables, preprocessor_path: str, metadata: Optional[dict] = None,
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
  from runtime.saved_models import asset_files  # pylint: disable=import-outside-toplevel
  for name, path in asset_files(preprocessor_path):
    if name == _METADATA_ASSET:
      continue
    with _filesystems().open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
      h.update(name.encode() + b"\0" + hashlib.sha256(f.read()).digest())
  semantic = {k: (metadata or {}).get(k) for k in _SEMANTIC_METADATA_KEYS} if metadata else None
  h.update(json.dumps({"export": semantic, "probe_token_ids": probe_token_ids}, sort_keys=True).encode())
  return h.hexdigest()


FINGERPRINT_CACHE_FORMAT = 1  # bump when _fingerprint changes, so cached values are recomputed


def _file_stats(root: str) -> Optional[list]:
  """(relative path, size, mtime_ns) of every file under a local directory; None for remote or unreadable ones."""
  if not is_local_path(root):
    return None
  root = root[len("file://"):] if root.startswith("file://") else root
  stats = []
  try:
    for directory, _, names in os.walk(root):
      for name in names:
        path = os.path.join(directory, name)
        st = os.stat(path)
        stats.append((os.path.relpath(path, root), st.st_size, st.st_mtime_ns))
  except OSError:
    return None
  return sorted(stats) or None


def fingerprint_cache_key(spec: ModelSpec, metadata: Optional[dict], probe_token_ids: Optional[list]) -> Optional[str]:
  """Key of a model's cached fingerprint: the sizes and mtimes of all its files, plus what the fingerprint hashes
  besides the variables (export metadata, tokenizer probe ids: cheap, and computed anyway). None when unknown."""
  files = {role: _file_stats(path) for role, path in (("preprocessor", spec.preprocessor), ("encoder", spec.encoder))}
  if any(v is None for v in files.values()):
    return None
  semantic = {k: (metadata or {}).get(k) for k in _SEMANTIC_METADATA_KEYS} if metadata else None
  payload = {"format": FINGERPRINT_CACHE_FORMAT, "files": files, "export": semantic,
             "probe_token_ids": probe_token_ids,
             "paths": [os.path.abspath(spec.preprocessor), os.path.abspath(spec.encoder)]}
  return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def _fingerprint_cache_path(key: str) -> str:
  from pipeline.default_model import cache_root  # pylint: disable=import-outside-toplevel
  return os.path.join(str(cache_root()), "fingerprints", key[:2], key + ".json")


def cached_fingerprint(key: Optional[str], compute) -> str:
  """The fingerprint stored under `key`, else `compute()` (stored for next time when the cache is writable).

  Hashing the variables costs ~1 s per 100 MB of weights at every start; the key changes when any model file's
  size or mtime does, so a rewritten model is fingerprinted anew.
  """
  path = _fingerprint_cache_path(key) if key else None
  if path:
    try:
      with open(path, encoding="utf-8") as f:
        value = json.load(f).get("fingerprint")
      if isinstance(value, str) and len(value) == 64:
        return value
    except (OSError, ValueError):
      pass
  value = compute()
  if path:
    try:
      os.makedirs(os.path.dirname(path), exist_ok=True)
      tmp = f"{path}.{os.getpid()}.tmp"
      with open(tmp, "w", encoding="utf-8") as f:
        json.dump({"fingerprint": value}, f)
      os.replace(tmp, path)
    except OSError as e:
      _LOG.debug("cannot cache the model fingerprint at %s: %s", path, e)
  return value


def inspect_models(spec: ModelSpec, seq_length: int) -> ModelInfo:
  """Loads both SavedModels and encodes probe texts, so an unreadable or mismatched model fails before the job.

  The loads go through the workers' process-level cache (runtime/saved_models.py): on the DirectRunner the
  workers then reuse these objects instead of loading the models again.
  """
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
  variables = all_variables(enc)
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
  from modeling.export import read_export_metadata  # pylint: disable=import-outside-toplevel
  metadata = read_export_metadata(spec.encoder)
  fingerprint = cached_fingerprint(
      fingerprint_cache_key(spec, metadata, probe_token_ids),
      lambda: _fingerprint(variables, spec.preprocessor, metadata, probe_token_ids))
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
