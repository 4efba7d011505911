"""The in-process API gives the pipeline's vectors; the PTransform composes inside a user's own pipeline."""
import apache_beam as beam
import numpy as np
import pyarrow.parquet as pq
import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from pipeline.api import embed, release_models
from pipeline.run import run
from transforms.embedding.embed import EmbedTexts
from transforms.embedding.embed_config import EmbedConfig
from formats.records import TextRecord

TEXTS = ["the cat sat on the mat.", "hello world!", "a dog is on the mat, the cat is not.", "the dog sat."]


def _direct_mean_normalized(model_dir, texts, seq_length):
  """The reference: each text alone through the preprocessor's and the encoder's SavedModel signatures, called
  here by hand, then a numpy mean over the real tokens and an L2 normalisation (no project code involved)."""
  import os  # pylint: disable=import-outside-toplevel
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  import tensorflow_text  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
  pre = tf.saved_model.load(os.path.join(model_dir, "preprocessor"))
  enc = tf.saved_model.load(os.path.join(model_dir, "encoder"))
  out = []
  for text in texts:
    inputs = pre.bert_pack_inputs([pre.tokenize(tf.constant([text]))], seq_length=tf.constant(seq_length))
    tokens = enc(inputs)["sequence_output"].numpy()[0].astype(np.float64)
    mask = inputs["input_mask"].numpy()[0].astype(bool)
    assert 2 < mask.sum() < seq_length  # [CLS] words [SEP], then padding that the mean must leave out
    mean = tokens[mask].mean(axis=0)
    out.append(mean / np.linalg.norm(mean))
  return np.array(out)


def test_embed_and_the_pipeline_equal_a_direct_savedmodel_call(tmp_path, tiny_model_dir):
  (tmp_path / "in.txt").write_text("\n".join(TEXTS) + "\n", encoding="utf-8")
  argv = ["--model", tiny_model_dir, "--input", str(tmp_path / "in.txt"), "--output", str(tmp_path / "emb"),
          "--keep-text", "--pooling", "mean", "--normalize", "--seq-length", "32"]
  outcome = run(argv, test_pipeline=TestPipeline(argv=argv))
  rows = [r for f in outcome.manifest["output_files"] for r in pq.read_table(f).to_pylist()]
  expected = _direct_mean_normalized(tiny_model_dir, TEXTS, 32)
  vectors = embed(TEXTS, tiny_model_dir, pooling="mean", normalize=True, seq_length=32, batch_size=3)
  assert vectors.shape == (len(TEXTS), 32) and vectors.dtype == np.float32
  np.testing.assert_allclose(vectors, expected, atol=1e-5)
  assert sorted(r["text"] for r in rows) == sorted(TEXTS)
  for r in rows:
    np.testing.assert_allclose(r["embedding"], expected[TEXTS.index(r["text"])], atol=1e-5)
  # the texts' vectors differ by more than the tolerance, so a vector under the wrong text would be seen
  assert min(np.abs(a - b).max() for i, a in enumerate(expected) for b in expected[i + 1:]) > 1e-3


def _with_recommendation(tmp_path, model_dir, pooling, normalize):
  """A copy of `model_dir` whose export metadata recommends `pooling` / `normalize`."""
  import json  # pylint: disable=import-outside-toplevel
  import shutil  # pylint: disable=import-outside-toplevel
  copy = tmp_path / "recommending"
  shutil.copytree(model_dir, copy)
  path = copy / "encoder" / "assets" / "bert_embed_export.json"
  metadata = json.loads(path.read_text())
  assert metadata["recommended_pooling"] != pooling  # else the test could not tell recommendation from fallback
  path.write_text(json.dumps({**metadata, "recommended_pooling": pooling, "recommended_normalize": normalize}))
  return str(copy)


def test_embed_defaults_to_the_models_recommended_pooling(tmp_path, tiny_model_dir):
  recommending = _with_recommendation(tmp_path, tiny_model_dir, "mean", True)
  default = embed(TEXTS[:2], recommending)
  np.testing.assert_allclose(default, embed(TEXTS[:2], recommending, pooling="mean", normalize=True), atol=1e-6)
  # the recommended pooling given explicitly gives the same vectors as leaving it out: normalised
  np.testing.assert_allclose(default, embed(TEXTS[:2], recommending, pooling="mean"), atol=1e-6)
  assert not np.allclose(default, embed(TEXTS[:2], recommending, pooling="pooled", normalize=False), atol=1e-3)
  np.testing.assert_allclose(np.linalg.norm(default, axis=1), 1.0, atol=1e-5)
  # an explicit --normalize still overrides the recommended one
  assert not np.allclose(np.linalg.norm(embed(TEXTS[:2], recommending, normalize=False), axis=1), 1.0, atol=1e-3)


def test_one_string_gives_one_vector_and_no_texts_give_an_empty_matrix(tiny_model_dir):
  many = embed(TEXTS, tiny_model_dir, seq_length=32)
  one = embed(TEXTS[1], tiny_model_dir, seq_length=32)
  assert one.shape == (many.shape[1],)
  np.testing.assert_allclose(one, many[1], atol=1e-5)
  empty = embed([], tiny_model_dir)
  assert empty.shape == (0, many.shape[1]) and empty.dtype == np.float32
  assert embed(iter(TEXTS[:2]), tiny_model_dir, seq_length=32).shape == (2, many.shape[1])  # any iterable


@pytest.mark.parametrize("texts, kwargs, error, message", [
    (None, {}, TypeError, "texts must be a string or a sequence"),
    (b"bytes", {}, TypeError, "texts must be a string or a sequence"),
    (["ok", 3], {}, TypeError, r"texts\[1\] must be a string, not int"),
    (["ok", None], {}, TypeError, r"texts\[1\] must be a string, not NoneType"),
    (["a\x00b"], {}, ValueError, r"texts\[0\]: NUL byte"),
    (["ok", "lone \ud800 surrogate"], {}, ValueError, r"texts\[1\]: lone surrogate"),
    (["ok"], {"batch_size": 0}, ValueError, "batch_size must be positive"),
    (["ok"], {"batch_size": 2.5}, TypeError, "batch_size must be an int"),
    (["ok"], {"seq_length": -1}, ValueError, "seq_length must be positive"),
    (["ok"], {"pooling": "max"}, ValueError, "pooling must be one of"),
    (["ok"], {"pooling": "mean", "layers": [99]}, ValueError, "index 99 is out of range for an encoder with 2"),
    (["ok"], {"pooling": "mean", "layers": ["-1"]}, TypeError, "layers must be a non-empty sequence of ints"),
    (["ok"], {"pooling": "pooled", "layers": [-1]}, ValueError, "layers apply to cls and mean"),
    (["ok", "ok"], {"pairs": ["one"]}, ValueError, "1 pairs for 2 texts"),
    (["ok"], {"precision": "float16"}, ValueError, "precision must be one of float32, int8, uint8, binary, ubinary"),
    (["ok"], {"truncate_dim": 0}, ValueError, "truncate_dim must be positive"),
    (["ok"], {"truncate_dim": 33}, ValueError, "truncate_dim 33 is larger than the model's 32 dimensions"),
    (["ok"], {"normalize": True, "normalize_embeddings": False}, ValueError, "disagree"),
])
def test_bad_arguments_raise_with_a_message(tiny_model_dir, texts, kwargs, error, message):
  with pytest.raises(error, match=message):
    embed(texts, tiny_model_dir, **kwargs)


def test_embed_texts_composes_in_a_users_pipeline(tiny_model_dir):
  pre, enc = f"{tiny_model_dir}/preprocessor", f"{tiny_model_dir}/encoder"
  expected = embed(TEXTS, tiny_model_dir, pooling="cls", seq_length=32)
  with TestPipeline() as p:
    records = p | beam.Create([TextRecord(id="t0", text=TEXTS[0], source="in.txt"), ("t1", TEXTS[1]),
                               {"id": "t2", "text": TEXTS[2]}, ("t3", TEXTS[3], None),
                               TextRecord(id="blank", text="\u200b"), ("no-text", None), 42])
    result = records | EmbedTexts(pre, enc, EmbedConfig(pooling="cls", seq_length=32))
    assert_that(result.embeddings | "Ids" >> beam.Map(lambda r: (r.id, r.source)),
                equal_to([("t0", "in.txt")] + [(f"t{i}", "") for i in range(1, 4)]), label="ids")
    assert_that(result.dead_letters | "DeadIds" >> beam.Map(lambda d: (d.id, d.stage)),
                equal_to([("blank", "preprocess"), ("no-text", "parse"), ("", "parse")]), label="dead")

    assert_that(result.embeddings | "Vectors" >> beam.Map(lambda r: (r.id, r.embedding)),
                equal_to([(f"t{i}", expected[i]) for i in range(4)],
                         equals_fn=lambda a, b: a[0] == b[0] and np.allclose(a[1], b[1], atol=1e-5)),
                label="vectors")


def test_the_runtime_loads_a_preprocessor_in_a_fresh_process_that_imported_nothing_else(tiny_model_dir):
  """The loader registers the preprocessor's TF Text ops itself (as benchmarks and user code call it directly; the
  suite's conftest imports tensorflow_text, which would hide a loader that forgets to)."""
  import subprocess  # pylint: disable=import-outside-toplevel
  import sys  # pylint: disable=import-outside-toplevel
  code = ("from runtime.saved_models import load_preprocessor; import tensorflow as tf; "
          f"pre = load_preprocessor({tiny_model_dir + '/preprocessor'!r}).obj; "
          "print(pre.tokenize(tf.constant(['the cat sat.'])).to_list())")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=False)
  assert out.returncode == 0, out.stderr[-2000:]
  assert out.stdout.strip().startswith("[[[")


def test_a_blank_text_or_one_without_tokens_gets_the_vector_of_cls_sep(tiny_model_dir, tiny_vocab_tokens):
  """As sentence-transformers does; the reference calls the encoder SavedModel with hand-built ids."""
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  encoder = tf.saved_model.load(f"{tiny_model_dir}/encoder")
  ids = [tiny_vocab_tokens.index("[CLS]"), tiny_vocab_tokens.index("[SEP]")]
  outputs = encoder({"input_word_ids": tf.constant([ids], tf.int32), "input_mask": tf.ones([1, 2], tf.int32),
                     "input_type_ids": tf.zeros([1, 2], tf.int32)})
  sequence = outputs["sequence_output"].numpy()[0]
  texts = ["", "   ", "\u200b", "\t\n", TEXTS[0]]
  mean = embed(texts, tiny_model_dir, pooling="mean", normalize=False, seq_length=32)
  cls = embed(texts, tiny_model_dir, pooling="cls", normalize=False, seq_length=32)
  for i in range(4):
    np.testing.assert_allclose(mean[i], sequence.mean(axis=0), atol=1e-5)
    np.testing.assert_allclose(cls[i], sequence[0], atol=1e-5)
  assert not np.allclose(mean[4], mean[0], atol=1e-3)
  np.testing.assert_allclose(embed("", tiny_model_dir, pooling="pooled", normalize=False, seq_length=32),
                             outputs["pooled_output"].numpy()[0], atol=1e-5)


def test_truncate_dim_and_normalize_embeddings_as_in_sentence_transformers(tiny_model_dir):
  full = embed(TEXTS, tiny_model_dir, pooling="mean", normalize=False, seq_length=32)
  np.testing.assert_allclose(embed(TEXTS, tiny_model_dir, pooling="mean", normalize=False, truncate_dim=8,
                                   seq_length=32), full[:, :8], atol=1e-6)
  cut = embed(TEXTS, tiny_model_dir, pooling="mean", normalize_embeddings=True, truncate_dim=8, seq_length=32)
  reference = full[:, :8] / np.sqrt((full[:, :8].astype(np.float64) ** 2).sum(axis=1, keepdims=True))
  np.testing.assert_allclose(cut, reference, atol=1e-5)
  np.testing.assert_allclose(embed(TEXTS, tiny_model_dir, pooling="mean", normalize_embeddings=True, seq_length=32),
                             embed(TEXTS, tiny_model_dir, pooling="mean", normalize=True, seq_length=32), atol=0)
  np.testing.assert_allclose(embed(TEXTS, tiny_model_dir, pooling="mean", normalize=False, batch_size=1,
                                   seq_length=32), full, atol=1e-5)


def test_quantized_precisions_as_in_sentence_transformers(tiny_model_dir):
  texts = TEXTS * 3 + ["the end.", "a mat.", "cat"]
  full = embed(texts, tiny_model_dir, pooling="mean", normalize=True, seq_length=32)
  signs = [[1 if v > 0 else 0 for v in row] for row in full.tolist()]
  packed = [[int("".join(map(str, row[k:k + 8])), 2) for k in range(0, len(row), 8)] for row in signs]
  ubinary = embed(texts, tiny_model_dir, pooling="mean", normalize=True, precision="ubinary", seq_length=32)
  assert ubinary.dtype == np.uint8 and ubinary.tolist() == packed
  binary = embed(texts, tiny_model_dir, pooling="mean", normalize=True, precision="binary", seq_length=32)
  assert binary.dtype == np.int8 and binary.tolist() == [[b - 128 for b in row] for row in packed]
  uint8 = embed(texts, tiny_model_dir, pooling="mean", normalize=True, precision="uint8", seq_length=32)
  int8 = embed(texts, tiny_model_dir, pooling="mean", normalize=True, precision="int8", seq_length=32)
  assert uint8.dtype == np.uint8 and int8.dtype == np.int8
  # int8 is the step index minus 128, truncated toward zero (as sentence-transformers casts it): the uint8 level
  # minus 128, or one more where that is negative and the value lies inside its step.
  shifted = int8.astype(np.int16) - (uint8.astype(np.int16) - 128)
  assert set(np.unique(shifted).tolist()) <= {0, 1} and np.all(shifted[uint8 >= 128] == 0)
  for j in range(full.shape[1]):  # per dimension: 256 steps from the column's min to its max, order kept
    column, levels = full[:, j].astype(np.float64), uint8[:, j].astype(np.int64)
    low, step = column.min(), (column.max() - column.min()) / 255
    assert levels[column.argmin()] == 0 and levels[column.argmax()] >= 254
    assert np.all(np.abs(low + levels * step - column) <= step * 1.001 + 1e-7)
    order = np.argsort(column, kind="stable")
    assert np.all(np.diff(levels[order]) >= 0) and np.all(np.diff(int8[order, j].astype(np.int64)) >= 0)
  one = embed(texts[0], tiny_model_dir, pooling="mean", normalize=True, precision="ubinary", seq_length=32)
  assert one.tolist() == packed[0]


def test_tensors_come_back_when_asked_for(tiny_model_dir):
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  array = embed(TEXTS, tiny_model_dir, seq_length=32)
  tensor = embed(TEXTS, tiny_model_dir, seq_length=32, convert_to_tensor=True)
  assert isinstance(tensor, tf.Tensor) and tensor.dtype == tf.float32 and tensor.shape == array.shape
  np.testing.assert_allclose(tensor.numpy(), array, atol=1e-6)
  rows = embed(TEXTS, tiny_model_dir, seq_length=32, convert_to_numpy=False)
  assert isinstance(rows, list) and len(rows) == len(TEXTS) and all(isinstance(r, tf.Tensor) for r in rows)
  np.testing.assert_allclose(np.stack([r.numpy() for r in rows]), array, atol=1e-6)
  one = embed(TEXTS[0], tiny_model_dir, seq_length=32, convert_to_tensor=True)
  assert one.shape == (array.shape[1],)


def test_show_progress_bar_draws_a_bar_on_stderr(tiny_model_dir, capsys):
  texts = [f"{TEXTS[i % 4]} {i}" for i in range(300)]
  embed(texts, tiny_model_dir, seq_length=32, batch_size=16)
  assert capsys.readouterr().err == ""
  embed(texts, tiny_model_dir, seq_length=32, batch_size=16, show_progress_bar=True)
  lines = capsys.readouterr().err.splitlines()  # stderr is not a terminal here: one line per redraw
  assert lines[0].startswith("texts:   0%|") and lines[0].endswith("| 0/300"), lines
  assert lines[-1] == "texts: 100%|" + "#" * 30 + "| 300/300", lines
  done = [int(line.rsplit(" ", 1)[1].split("/")[0]) for line in lines]
  assert done == sorted(done) and all(n % 16 == 0 or n == 300 for n in done)


def test_release_models_keeps_embed_working(tiny_model_dir):
  before = embed(TEXTS, tiny_model_dir, seq_length=32)
  release_models()
  np.testing.assert_allclose(embed(TEXTS, tiny_model_dir, seq_length=32), before, atol=1e-6)
