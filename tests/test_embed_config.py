"""EmbedConfig (transforms/embedding/embed_config.py): the one value EmbedTexts is configured by, built by JobConfig."""
import dataclasses

import pytest

from pipeline.config import JobConfig
from transforms.embedding.embed_config import EmbedConfig, MlmSpec

# A value other than the default for every EmbedConfig setting.
SETTINGS = {"pooling": "mean", "normalize": True, "layers": (-1, -2), "seq_length": 64, "emit_tokens": True,
            "keep_text": True, "embeddings": False, "mlm": MlmSpec({"mask_id": 4}), "long_text": "chunk",
            "chunk_stride": 7, "chunk_output": "mean", "precision": "bf16", "batch_size": 8, "min_batch_size": 2,
            "preprocess_batch_size": 16, "bucket_lengths": (16, 64), "max_batch_tokens": 512}


def test_job_config_hands_every_setting_to_the_embed_config():
  assert set(SETTINGS) == {f.name for f in dataclasses.fields(EmbedConfig)}  # a new setting needs a value here
  assert all(getattr(EmbedConfig(), name) != value for name, value in SETTINGS.items())
  required = {f.name: None for f in dataclasses.fields(JobConfig)
              if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING}
  assert JobConfig(**{**required, **SETTINGS}).embed_config == EmbedConfig(**SETTINGS)


def test_derived_settings():
  config = EmbedConfig(seq_length=64, bucket_lengths=[16, 128, 32], batch_size=8)
  assert config.window_stride is None and config.bucket_spec.lengths == (16, 32, 64)
  assert config.bucket_spec.max_batch_size == 8 and EmbedConfig(bucket_lengths=None).bucket_spec is None
  assert EmbedConfig(layers=[-1]).layers == (-1,) and EmbedConfig(layers=()).layers is None
  # Windows averaged into one vector are normalised after the mean (MergeWindows), not one by one.
  mean = EmbedConfig(normalize=True, long_text="chunk", chunk_stride=3, chunk_output="mean")
  assert mean.window_stride == 3 and mean.pooling_spec.normalize is False
  assert EmbedConfig(normalize=True, long_text="chunk", chunk_output="rows").pooling_spec.normalize is True


@pytest.mark.parametrize("settings,message", [
    ({"pooling": "max"}, "unknown pooling"),
    ({"embeddings": False}, "nothing to compute"),
    ({"long_text": "chunk", "chunk_stride": 30, "seq_length": 32}, "chunk-stride"),
    ({"long_text": "split"}, "long-text"),
    ({"chunk_output": "sum"}, "chunk_output"),
])
def test_settings_that_cannot_work_are_refused_when_made(settings, message):
  with pytest.raises(ValueError, match=message):
    EmbedConfig(**settings)
