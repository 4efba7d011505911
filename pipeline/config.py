"""The job's configuration, resolved and validated from the options before the pipeline is built."""
from __future__ import annotations

import dataclasses
import os
import re
import tempfile
from typing import Optional, Sequence

from apache_beam.options.pipeline_options import GoogleCloudOptions, PipelineOptions, StandardOptions

from pipeline import arguments
from snapshot import latest_pointer
from snapshot.manifest import manifest_path
from models import model_flags
from models import model_inspection
from models import remote
from snapshot import store_plan as vector_store_lib
from pipeline.options import BertEmbedOptions
from formats.usage import UsageError, split_patterns
from runtime import buckets
from runtime import mlm_scoring, mlm_vocab
from runtime import pooling as pooling_lib
from formats.columns import OutputColumns
from runtime.defaults import DEFAULT_DRIFT_SAMPLE, DEFAULT_DUPLICATE_ID_POLICY
from transforms.embedding.embed_config import EmbedConfig, MlmSpec
from formats.output_files import (check_output_prefix, is_error_file, is_output_file, is_scratch_dir,
                                  path_basename, staging_token)
from transforms.read import InputError, file_identity, match_inputs


@dataclasses.dataclass(frozen=True)
class JobConfig:
  inputs: tuple[str, ...]  # matched files
  input_patterns: tuple[str, ...]
  input_format: str
  id_field: str
  text_field: str
  text_pair_field: Optional[str]
  max_text_bytes: int
  limit: Optional[int]
  model: model_flags.ModelSpec
  model_info: model_inspection.ModelInfo
  seq_length: int
  pooling: str
  normalize: bool
  layers: Optional[tuple[int, ...]]
  precision: str
  output: str
  output_format: str
  num_shards: int
  keep_text: bool
  emit_tokens: bool
  batch_size: int
  min_batch_size: int
  preprocess_batch_size: int
  dedupe_texts: bool = False
  mlm: Optional[MlmSpec] = None  # set with --mlm-scores
  embeddings: bool = True  # False with --no-embeddings
  long_text: str = "truncate"
  chunk_stride: int = 0
  chunk_output: str = "rows"
  on_duplicate_id: str = DEFAULT_DUPLICATE_ID_POLICY
  previous: Optional[latest_pointer.PreviousOutput] = None  # --previous, resolved (see snapshot/latest_pointer.py)
  drift_sample: int = DEFAULT_DRIFT_SAMPLE
  bucket_lengths: Optional[tuple[int, ...]] = buckets.DEFAULT_BUCKET_LENGTHS  # None: pad to each batch's longest
  max_batch_tokens: int = buckets.DEFAULT_MAX_BATCH_TOKENS
  output_dtype: str = "float32"  # the embedding's stored form (formats/compact.py)
  truncate_dim: Optional[int] = None  # keep the first N dimensions (None: all)
  vector_store: Optional[vector_store_lib.StoreLaunch] = None  # --vector-store, as checked at launch

  @property
  def output_columns(self) -> OutputColumns:
    """The columns of the embedding files (formats/columns.py), for every stage that writes, checks or reads them."""
    return OutputColumns(embeddings=self.embeddings, text=self.keep_text, tokens=self.emit_tokens,
                         mlm=self.mlm is not None, mlm_per_token=bool(self.mlm and self.mlm.per_token),
                         windows=self.long_text == "chunk" and self.chunk_output == "rows",
                         dtype=self.output_dtype, truncate_dim=self.truncate_dim)

  @property
  def embed_config(self) -> EmbedConfig:
    """How EmbedTexts embeds (pipeline/run.py passes it on as is)."""
    return EmbedConfig(
        pooling=self.pooling, normalize=self.normalize, layers=self.layers, seq_length=self.seq_length,
        emit_tokens=self.emit_tokens, keep_text=self.keep_text, embeddings=self.embeddings, mlm=self.mlm,
        long_text=self.long_text, chunk_stride=self.chunk_stride, chunk_output=self.chunk_output,
        precision=self.precision, batch_size=self.batch_size, min_batch_size=self.min_batch_size,
        preprocess_batch_size=self.preprocess_batch_size, bucket_lengths=self.bucket_lengths,
        max_batch_tokens=self.max_batch_tokens)

  def output_shaping_options(self) -> dict:
    """Every option that changes what is written for a record (recorded in the manifest)."""
    return {"seq_length": self.seq_length, "pooling": self.pooling, "normalize": self.normalize,
            "layers": list(self.layers) if self.layers else None, "precision": self.precision,
            "max_text_bytes": self.max_text_bytes, "keep_text": self.keep_text, "emit_tokens": self.emit_tokens,
            "format": self.output_format, "input_format": self.input_format, "id_field": self.id_field,
            "text_field": self.text_field, "text_pair_field": self.text_pair_field, "limit": self.limit,
            "on_duplicate_id": self.on_duplicate_id, "embeddings": self.embeddings,
            "mlm_scores": self.mlm is not None, "mlm_whole_word": bool(self.mlm and self.mlm.whole_word),
            "mlm_per_token": bool(self.mlm and self.mlm.per_token), "long_text": self.long_text,
            "chunk_stride": self.chunk_stride if self.long_text == "chunk" else None,
            "chunk_output": self.chunk_output if self.long_text == "chunk" else None,
            "output_dtype": self.output_dtype, "truncate_dim": self.truncate_dim}


def resolve_pooling(metadata: Optional[dict], pooling: Optional[str], normalize: Optional[bool]) -> tuple[str, bool]:
  """The pooling and normalisation to use: each explicit choice wins; else the model's export recommendation.

  Each follows the recommendation on its own (so the default model gives sentence-transformers' vectors, also with
  --pooling mean given, and L2-normalises after any pooling, as sentence-transformers' Normalize module does);
  --normalize=false turns the normalisation off.
  """
  metadata = metadata or {}
  if pooling is None:
    pooling = metadata.get("recommended_pooling") or "pooled"
  return pooling, bool(metadata.get("recommended_normalize")) if normalize is None else bool(normalize)


def resolve_mlm(o: BertEmbedOptions, spec: model_flags.ModelSpec) -> Optional[MlmSpec]:
  """The MLM scoring settings, checked before the job: the encoder must have a working `.mlm`."""
  if not o.mlm_scores:  # the flags that need --mlm-scores: arguments.check_values
    return None
  try:
    mlm_scoring.check_has_mlm(spec.encoder)
    special = mlm_vocab.load_special_tokens(spec.preprocessor)
    continuation = (mlm_vocab.load_continuation_table(spec.preprocessor, special["vocab_size"])
                    if o.mlm_whole_word else None)
  except ValueError as e:
    raise UsageError(str(e)) from None
  return MlmSpec(special=special, whole_word=o.mlm_whole_word, continuation=continuation,
                 per_token=o.mlm_per_token, max_tokens=o.mlm_max_tokens)


def resolve_buckets(value: Optional[str]) -> Optional[tuple[int, ...]]:
  """--bucket-lengths: 'none' (or empty) -> None, else the sorted lengths; raises UsageError."""
  if arguments.buckets_off(value):
    return None
  try:
    return buckets.parse_bucket_lengths(value)
  except ValueError as e:
    raise UsageError(f"--bucket-lengths: {e}") from None


def check_output(output: str) -> None:
  """Raises UsageError unless the run can write its files at `output` (a local prefix is checked by creating and
  removing a file where the output's directory is or will be; a gs:// prefix only by its spelling)."""
  try:
    check_output_prefix(output)
  except ValueError as e:
    raise UsageError(f"--output: {e}") from None
  if "://" in output and not output.startswith("file://"):
    return
  directory = os.path.dirname(os.path.abspath(os.path.expanduser(output.removeprefix("file://"))))
  existing = directory
  while not os.path.lexists(existing):
    existing = os.path.dirname(existing)
  if not os.path.isdir(existing):
    raise UsageError(f"--output {output}: {existing} is a file, so the directory {directory} cannot be created")
  try:
    with tempfile.TemporaryFile(dir=existing, prefix=".bert-embed-write-check-"):
      pass
  except OSError as e:
    raise UsageError(f"--output {output}: cannot write in {existing} ({e.strerror or e})") from None


def _directory_identity(path: str) -> str:
  """A file's directory, comparable across spellings (local: its real path; remote: the URL's directory)."""
  if "://" in path and not path.startswith("file://"):
    scheme, rest = path.split("://", 1)
    return f"{scheme}://{re.sub('/+', '/', rest).rsplit('/', 1)[0]}"
  return os.path.realpath(os.path.dirname(os.path.abspath(os.path.expanduser(path.removeprefix("file://")))))


def writes_file(path: str, output: str, pointer: str) -> bool:
  """True when `path` is one of the files a run writing `output` writes (its shards, dead letters, manifest, their
  temporary names, files in its staging folders) or its LATEST pointer `pointer` (or a temporary one)."""
  name = path_basename(path)
  directory = _directory_identity(path)
  if directory == _directory_identity(pointer) and (name == path_basename(pointer) or
                                                    name.startswith(path_basename(pointer) + ".tmp-")):
    return True
  if ((is_scratch_dir(directory, output) or staging_token(directory, output) is not None)
      and _directory_identity(directory) == _directory_identity(output)):
    return True
  manifest = path_basename(manifest_path(output))
  return directory == _directory_identity(output) and (
      is_output_file(path, output) or is_error_file(path, output) or name == manifest
      or name.startswith(manifest + ".tmp-"))


def _is_local(path: str) -> bool:
  return "://" not in path or path.startswith("file://")


def _local_path(path: str) -> str:
  return os.path.abspath(os.path.expanduser(path.removeprefix("file://")))


def _own_files(output: str, pointer: str) -> dict:
  """The local files the run writes that exist now (its shards, dead letters, manifest, LATEST, their temporary
  names, its staging folders' files), keyed by device and inode."""
  found = {}
  for directory in {os.path.dirname(_local_path(p)) for p in (output, pointer) if _is_local(p)}:
    try:
      entries = list(os.scandir(directory))
    except OSError:
      continue
    for entry in entries:
      if entry.is_symlink():  # replacing or deleting it leaves what it links to alone
        continue
      if entry.is_dir() and (staging_token(entry.path, output) is not None or is_scratch_dir(entry.path, output)):
        paths = [os.path.join(top, name) for top, _, names in os.walk(entry.path) for name in names]
      else:
        paths = [entry.path] if writes_file(entry.path, output, pointer) else []
      for path in paths:
        identity = file_identity(path)
        if isinstance(identity, tuple):
          found.setdefault(identity, path)
  return found


def check_inputs_are_not_outputs(inputs: Sequence[str], output: str, pointer: str) -> None:
  """Raises UsageError when an input is a file the run writes: a glob such as `dir/*` with `--output dir/emb`
  would read the run's earlier output as input. A local input is compared by its name, by the name it links to
  (a symlink) and by its device and inode (a hard link), so that no other name reaches the run's own files."""
  own = None
  for path in inputs:
    target = path
    if not writes_file(path, output, pointer):
      if not _is_local(path):
        continue
      real = os.path.realpath(_local_path(path))
      if writes_file(real, output, pointer):
        target = real
      else:
        own = _own_files(output, pointer) if own is None else own
        target = own.get(file_identity(path))
        if target is None:
          continue
    link = "," if target == path else f", a link to {target},"
    raise UsageError(f"--input matches {path}{link} a file this run writes (--output {output}, pointer {pointer}): "
                     "narrow the input glob (e.g. dir/*.txt) or write the output elsewhere")


def max_positions(encoder: str) -> Optional[int]:
  """The encoder's max_position_embeddings from its export metadata (None for other TF Hub models)."""
  from modeling.export_metadata import read_export_metadata  # pylint: disable=import-outside-toplevel
  try:
    metadata = read_export_metadata(encoder)
  except (ValueError, OSError) as e:
    raise UsageError(f"cannot read the export metadata of the encoder {encoder}: {e}") from None
  return ((metadata or {}).get("config") or {}).get("max_position_embeddings")


def resolve(options: PipelineOptions) -> JobConfig:
  """Validates the options, the output, the inputs and the models; raises UsageError on any problem.

  Cheap checks come first; nothing is deleted (the job replaces an earlier output in its last step). On a remote
  runner, local paths are refused and a model on this machine (--model default, hf:) is staged under
  --temp_location (models/remote.py): the only thing written at launch.
  """
  o = options.view_as(BertEmbedOptions)
  arguments.check_values(o)
  runner = options.view_as(StandardOptions).runner
  remote.check_paths(o, runner, options.view_as(GoogleCloudOptions).temp_location)
  check_output(o.output)
  patterns = split_patterns(o.input)
  try:
    inputs = match_inputs(patterns)
  except InputError as e:
    raise UsageError(str(e)) from None
  previous = latest_pointer.resolve_previous(o.previous, o.output)
  pointer = latest_pointer.pointer_path(o.output, previous.latest_root if previous else None)
  latest_pointer.check_pointer_path(pointer)
  check_inputs_are_not_outputs(inputs, o.output, pointer)
  layers = pooling_lib.parse_layers(o.layers)  # checked by arguments.check_values
  spec = model_flags.resolve_model(o.model, o.preprocessor, o.encoder)
  positions = max_positions(spec.encoder)
  # Probed within the encoder's positions, so that a --seq-length beyond them is reported as such below, after
  # the more basic load and compatibility errors, rather than as the encoder's failure on the probe.
  info = model_inspection.inspect_models(spec, min(o.seq_length, positions or o.seq_length))
  if positions and o.seq_length > positions:
    raise UsageError(f"--seq-length {o.seq_length} exceeds the encoder's {positions} positions")
  mlm_spec = resolve_mlm(o, spec)
  chunk_stride = arguments.chunk_stride(o)
  metadata = info.metadata or {}
  pooling, normalize = resolve_pooling(metadata, o.pooling, o.normalize)
  arguments.check_layers_pooling(layers, pooling)
  try:
    pooling_lib.check_layers(layers, info.num_layers)
  except ValueError as e:
    raise UsageError(str(e)) from None
  if o.truncate_dim is not None and o.truncate_dim > info.dim:
    raise UsageError(f"--truncate-dim {o.truncate_dim} is larger than the model's {info.dim} dimensions")
  # Reachable, credentials, dimension: before anything is written.
  store = vector_store_lib.check_store(o, info.dim, remote.is_remote_runner(runner))
  if remote.is_remote_runner(runner) and remote.is_local_path(spec.encoder):  # --model default or hf:
    spec = remote.stage_model(spec, info.fingerprint, options.view_as(GoogleCloudOptions).temp_location, runner,
                              source=o.model or f"{o.preprocessor} {o.encoder}")
  return JobConfig(
      inputs=tuple(inputs), input_patterns=tuple(patterns), input_format=o.input_format, id_field=o.id_field,
      text_field=o.text_field, text_pair_field=o.text_pair_field, max_text_bytes=o.max_text_bytes, limit=o.limit,
      model=spec, model_info=info, seq_length=o.seq_length, pooling=pooling, normalize=normalize, layers=layers,
      precision=o.precision, output=o.output, output_format=o.output_format, num_shards=o.num_shards,
      keep_text=o.keep_text, emit_tokens=o.emit_tokens, batch_size=o.batch_size, min_batch_size=o.min_batch_size,
      preprocess_batch_size=o.preprocess_batch_size, dedupe_texts=o.dedupe_texts,
      mlm=mlm_spec, embeddings=not o.no_embeddings, long_text=o.long_text, chunk_stride=chunk_stride,
      chunk_output=o.chunk_output or "rows", on_duplicate_id=o.on_duplicate_id,
      previous=previous, drift_sample=o.drift_sample, bucket_lengths=resolve_buckets(o.bucket_lengths),
      max_batch_tokens=o.max_batch_tokens, output_dtype=o.output_dtype, truncate_dim=o.truncate_dim,
      vector_store=store)
