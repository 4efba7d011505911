"""The in-process API gives the pipeline's vectors; the PTransform composes inside a user's own pipeline."""
import apache_beam as beam
import numpy as np
import pyarrow.parquet as pq
import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from pipeline.api import embed
from pipeline.run import run
from transforms.embed import EmbedTexts
from transforms.records import TextRecord

TEXTS = ["the cat sat on the mat.", "hello world!", "a dog is on the mat, the cat is not.", "the dog sat."]


def test_embed_equals_the_pipeline_output(tmp_path, tiny_model_dir):
  (tmp_path / "in.txt").write_text("\n".join(TEXTS) + "\n", encoding="utf-8")
  argv = ["--model", tiny_model_dir, "--input", str(tmp_path / "in.txt"), "--output", str(tmp_path / "emb"),
          "--keep-text", "--pooling", "mean", "--normalize", "--seq-length", "32"]
  outcome = run(argv, test_pipeline=TestPipeline(argv=argv))
  rows = [r for f in outcome.manifest["output_files"] for r in pq.read_table(f).to_pylist()]
  vectors = embed(TEXTS, tiny_model_dir, pooling="mean", normalize=True, seq_length=32, batch_size=3)
  assert vectors.shape == (len(TEXTS), 32) and vectors.dtype == np.float32
  for r in rows:
    np.testing.assert_allclose(vectors[TEXTS.index(r["text"])], r["embedding"], atol=1e-5)


def test_embed_defaults_to_the_models_recommended_pooling_and_rejects_empty_text(tiny_model_dir):
  pooled = embed(TEXTS[:2], tiny_model_dir)
  explicit = embed(TEXTS[:2], tiny_model_dir, pooling="pooled", normalize=False)
  np.testing.assert_array_equal(pooled, explicit)
  with pytest.raises(ValueError, match="text 1 has no tokens"):
    embed(["hello", "   "], tiny_model_dir)


def test_embed_texts_composes_in_a_users_pipeline(tiny_model_dir):
  pre, enc = f"{tiny_model_dir}/preprocessor", f"{tiny_model_dir}/encoder"
  expected = embed(TEXTS, tiny_model_dir, pooling="cls", seq_length=32)
  with TestPipeline() as p:
    records = p | beam.Create([TextRecord(id="t0", text=TEXTS[0]), ("t1", TEXTS[1]), {"id": "t2", "text": TEXTS[2]},
                               ("t3", TEXTS[3], None), TextRecord(id="blank", text="\u200b"), ("no-text", None),
                               42])
    result = records | EmbedTexts(pre, enc, pooling="cls", seq_length=32)
    assert_that(result.embeddings | "Ids" >> beam.Map(lambda r: r.id), equal_to([f"t{i}" for i in range(4)]),
                label="ids")
    assert_that(result.dead_letters | "DeadIds" >> beam.Map(lambda d: (d.id, d.stage)),
                equal_to([("blank", "preprocess"), ("no-text", "parse"), ("", "parse")]), label="dead")

    assert_that(result.embeddings | "Vectors" >> beam.Map(lambda r: (r.id, r.embedding)),
                equal_to([(f"t{i}", expected[i]) for i in range(4)],
                         equals_fn=lambda a, b: a[0] == b[0] and np.allclose(a[1], b[1], atol=1e-5)),
                label="vectors")
