"""The embedding fingerprint is derived from the config's fields: every field is decided, batching knobs stay out,
a new field is in until decided otherwise, older manifests still compare, and an unreadable input is an error."""
import dataclasses
import json

import numpy as np
import pytest

from snapshot import fingerprint as fingerprint_lib
from snapshot import latest_pointer
from snapshot import previous as previous_lib
from pipeline.config import JobConfig
from models.model_flags import ModelSpec
from formats.usage import UsageError
from snapshot.store_plan import StoreLaunch
from stores.base import StoreState
from stores.config import StoreConfig
from transforms.embedding.embed_config import MlmSpec

MLM = MlmSpec(special={"mask_id": 4}, whole_word=False, continuation=None, per_token=False, max_tokens=8192)

# Fingerprint inputs exactly as the version before the derived fingerprint recorded them in its manifests
# (incremental.fingerprint_inputs), for the job_config() defaults, and for a chunked MLM run with layers.
OLD_RECORDED = {
    "dimension": 32, "model": "m" * 64,
    "options": {"chunk_output": None, "chunk_stride": None, "embeddings": True, "layers": None,
                "long_text": "truncate", "max_text_bytes": 1024, "mlm": None, "mlm_per_token": False,
                "mlm_scores": False, "mlm_whole_word": False, "normalize": False, "pooling": "cls",
                "precision": "fp32", "seq_length": 32}}
OLD_RECORDED_MLM = {
    "dimension": 32, "model": "m" * 64,
    "options": {"chunk_output": "rows", "chunk_stride": 8, "embeddings": True, "layers": [-1, -2],
                "long_text": "chunk", "max_text_bytes": 1024, "mlm": {"max_tokens": 8192, "per_token": False,
                                                                      "whole_word": True},
                "mlm_per_token": False, "mlm_scores": True, "mlm_whole_word": True, "normalize": False,
                "pooling": "cls", "precision": "fp32", "seq_length": 32}}
# The manifest options of that version (and of the ones before it recorded fingerprint inputs at all).
OLD_OPTIONS = {"chunk_output": None, "chunk_stride": None, "embeddings": True, "emit_tokens": False,
               "format": "parquet", "id_field": "id", "input_format": "jsonl", "keep_text": False, "layers": None,
               "limit": None, "long_text": "truncate", "max_text_bytes": 1024, "mlm_per_token": False,
               "mlm_scores": False, "mlm_whole_word": False, "normalize": False, "on_duplicate_id": "dead-letter",
               "pooling": "cls", "precision": "fp32", "seq_length": 32, "text_field": "text", "text_pair_field": None}
# Before the options recorded the MLM and long-text settings (a run without them).
OLDEST_OPTIONS = {k: v for k, v in OLD_OPTIONS.items()
                  if k not in ("embeddings", "long_text", "chunk_stride", "chunk_output", "mlm_scores",
                               "mlm_whole_word", "mlm_per_token")}


def _fields(cls) -> set:
  return {f.name for f in dataclasses.fields(cls)} if dataclasses.is_dataclass(cls) else set(cls._fields)


@pytest.mark.parametrize("cls", [JobConfig, MlmSpec])
def test_every_config_field_is_decided_vector_shaping_or_not(cls):
  shaping, not_shaping = set(fingerprint_lib.VECTOR_SHAPING[cls.__name__]), set(
      fingerprint_lib.NOT_VECTOR_SHAPING[cls.__name__])
  undecided = _fields(cls) - shaping - not_shaping
  assert not undecided, f"decide in snapshot/fingerprint.py whether these {cls.__name__} fields shape a vector"
  assert not shaping & not_shaping
  assert shaping | not_shaping == _fields(cls)  # no stale names either
  assert all(reason.strip() for reason in fingerprint_lib.NOT_VECTOR_SHAPING[cls.__name__].values())


def _other_values(base: JobConfig) -> dict:
  """A different value for every field of JobConfig and MlmSpec (keys 'mlm.<field>' for MlmSpec)."""
  return {
      "inputs": ("other.jsonl",), "input_patterns": ("o*.jsonl",), "input_format": "csv", "id_field": "doc",
      "text_field": "body", "text_pair_field": "b", "limit": 5, "on_duplicate_id": "keep", "dedupe_texts": True,
      "model": ModelSpec("/n/preprocessor", "/n/encoder", "n"),
      "model_info": base.model_info._replace(num_layers=12, vocab_size=7, has_mlm=True, metadata={"x": 1}),
      "output": "/elsewhere/emb", "output_format": "tfrecord", "num_shards": 4, "keep_text": True,
      "emit_tokens": True, "previous": latest_pointer.PreviousOutput("/r/1/emb", "/r/1/emb", {}, None),
      "drift_sample": 3, "batch_size": 8, "min_batch_size": 2, "max_batch_tokens": 99, "bucket_lengths": None,
      "preprocess_batch_size": 4,
      "vector_store": StoreLaunch(StoreConfig("qdrant", "/q", "emb"), StoreState(False, None, None, 0)),
      "seq_length": 64, "pooling": "mean", "normalize": True, "layers": (-1, -2), "precision": "bf16",
      "max_text_bytes": 10, "embeddings": False, "mlm": None, "long_text": "truncate", "chunk_stride": 4,
      "chunk_output": "mean", "output_dtype": "int8", "truncate_dim": 16,
      "mlm.special": {"mask_id": 5}, "mlm.continuation": np.array([False, True]), "mlm.max_tokens": 1024,
      "mlm.whole_word": True, "mlm.per_token": True,
  }


def test_only_vector_shaping_fields_change_the_fingerprint(job_config):
  # Chunked MLM run, so that the chunk and MLM fields apply (they are None without chunking / MLM scores).
  base = job_config(mlm=MLM, long_text="chunk", chunk_stride=8, chunk_output="rows")
  before = fingerprint_lib.current_fingerprint_inputs(base)
  others = _other_values(base)
  assert set(others) == _fields(JobConfig) | {f"mlm.{f}" for f in MlmSpec._fields}
  changed = set()
  for key, value in others.items():
    if key.startswith("mlm."):
      cfg = dataclasses.replace(base, mlm=base.mlm._replace(**{key[4:]: value}))
    else:
      cfg = dataclasses.replace(base, **{key: value})
    if fingerprint_lib.current_fingerprint_inputs(cfg) != before:
      changed.add(key)
  assert changed == set(fingerprint_lib.VECTOR_SHAPING["JobConfig"]) | {
      f"mlm.{f}" for f in fingerprint_lib.VECTOR_SHAPING["MlmSpec"]}


def test_chunk_settings_are_inputs_only_when_chunking(job_config):
  plain = fingerprint_lib.current_fingerprint_inputs(job_config())
  assert plain == fingerprint_lib.current_fingerprint_inputs(job_config(chunk_stride=9, chunk_output="mean"))


@dataclasses.dataclass(frozen=True)
class _JobConfigWithANewField(JobConfig):
  attention_temperature: float = 1.0


def test_a_field_added_to_the_config_is_an_input_until_decided_otherwise(job_config):
  base = job_config()
  cfg = _JobConfigWithANewField(**{f.name: getattr(base, f.name) for f in dataclasses.fields(JobConfig)},
                                attention_temperature=0.5)
  inputs = fingerprint_lib.current_fingerprint_inputs(cfg)
  assert inputs["options"]["attention_temperature"] == 0.5
  plan = previous_lib.plan(dataclasses.replace(cfg, previous=_previous({"incremental": {
      "fingerprint_inputs": fingerprint_lib.current_fingerprint_inputs(base)}})))
  assert plan.mode == "full" and "attention_temperature (absent) -> 0.5" in plan.reason


def _previous(manifest):
  manifest = {"output_files": ["/runs/1/emb-00000-of-00001.parquet"], **manifest}
  return latest_pointer.PreviousOutput("latest:/runs", "/runs/1/emb", manifest, "/runs")


def _manifest_of(cfg) -> dict:
  """The manifest fields --previous reads, as a run of `cfg` writes them (pipeline/run.py, snapshot/previous.py)."""
  section = previous_lib.manifest_section(previous_lib.plan(cfg))
  return {"model": {"fingerprint": cfg.model_info.fingerprint}, "dimension": cfg.model_info.dim,
          "options": cfg.output_shaping_options(), "incremental": section}


def test_a_changed_mlm_max_tokens_carries_the_vectors_over(job_config):
  first = job_config(mlm=MLM)
  second = job_config(mlm=MLM._replace(max_tokens=512), previous=_previous(_manifest_of(first)))
  plan = previous_lib.plan(second)
  assert plan.mode == "incremental", plan.reason
  assert plan.fingerprint == previous_lib.plan(first).fingerprint
  whole_word = job_config(mlm=MLM._replace(whole_word=True), previous=_previous(_manifest_of(first)))
  assert "whole_word" in previous_lib.plan(whole_word).reason  # a scoring option still counts


@pytest.mark.parametrize("manifest,changes", [
    ({"options": OLD_OPTIONS, "incremental": {"fingerprint_inputs": OLD_RECORDED}}, {}),
    ({"options": OLD_OPTIONS}, {}),  # before fingerprint inputs were recorded: rebuilt from the options
    ({"options": OLDEST_OPTIONS}, {}),  # before the MLM and long-text options were recorded
    ({"options": OLD_OPTIONS, "incremental": {"fingerprint_inputs": OLD_RECORDED_MLM}},
     {"mlm": MLM._replace(whole_word=True, max_tokens=2048), "long_text": "chunk", "chunk_stride": 8,
      "layers": (-1, -2)}),
])
def test_manifests_of_earlier_versions_carry_over_when_nothing_changed(job_config, manifest, changes):
  manifest = {"model": {"fingerprint": "m" * 64}, "dimension": 32, **manifest}
  cfg = job_config(previous=_previous(manifest), **changes)
  plan = previous_lib.plan(cfg)
  assert plan.mode == "incremental", plan.reason
  assert plan.fingerprint == fingerprint_lib.fingerprint(fingerprint_lib.manifest_fingerprint_inputs(manifest))
  changed = previous_lib.plan(dataclasses.replace(cfg, pooling="mean"))
  assert changed.mode == "full" and 'pooling "cls" -> "mean"' in changed.reason


@pytest.mark.parametrize("manifest,message", [
    ({"incremental": {"fingerprint_inputs": "sha:abc"}}, "incremental.fingerprint_inputs is not an object"),
    ({"incremental": {"fingerprint_inputs": {"model": "m" * 64, "dimension": 32}}}, "no options object"),
    ({"model": {"fingerprint": "m" * 64}, "dimension": 32, "options": ["pooling", "cls"]}, "no options object"),
    ({"model": {"fingerprint": "m" * 64}, "dimension": 32}, "no options object"),
    ({"dimension": 32, "options": OLD_OPTIONS}, "no model section"),
    ({"incremental": {"fingerprint_inputs": {**OLD_RECORDED, "options": {**OLD_RECORDED["options"], "mlm": 5}}}},
     "mlm is 5, not an object"),
    ({"incremental": "full"}, "incremental section is not an object"),
])
def test_a_previous_manifest_whose_inputs_cannot_be_read_is_a_one_line_error(job_config, manifest, message):
  with pytest.raises(UsageError, match=message) as info:
    previous_lib.plan(job_config(previous=_previous(manifest)))
  assert str(info.value).startswith("--previous latest:/runs: ") and "\n" not in str(info.value)


def test_a_config_value_without_a_json_form_is_a_one_line_error(job_config):
  base = job_config()
  cfg = _JobConfigWithANewField(**{f.name: getattr(base, f.name) for f in dataclasses.fields(JobConfig)},
                                attention_temperature=object())
  with pytest.raises(UsageError, match="attention_temperature is of type object") as info:
    previous_lib.plan(cfg)
  assert "\n" not in str(info.value)
  json.dumps(fingerprint_lib.current_fingerprint_inputs(base))  # the real fields all have one
