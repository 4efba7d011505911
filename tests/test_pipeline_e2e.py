"""End to end on the DirectRunner: every input and output format, real files, a real (tiny) exported model.

Embeddings are checked against calling the SavedModels directly (plain tf.saved_model.load, padded to seq_length),
not against the pipeline's own code.
"""
import gzip
import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import tensorflow as tf
import tensorflow_text  # noqa: F401  (registers the preprocessor's ops)
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.testing.test_pipeline import TestPipeline

from formats.usage import UsageError
from pipeline.run import run

SEQ = 32
SENTENCES = [
    "the cat sat on the mat.",
    "hello world!",
    "a dog is on the mat, the cat is not.",
    "is the world hello?",
    "the dog sat.",
    "cats and dogs are sitting on mats in the world.",
]


@pytest.fixture(scope="module")
def direct(tiny_model_dir):
  """Calls the exported SavedModels directly, as a user of TF Hub would."""
  pre = tf.saved_model.load(os.path.join(tiny_model_dir, "preprocessor"))
  enc = tf.saved_model.load(os.path.join(tiny_model_dir, "encoder"))

  def call(texts, pairs=None, seq_length=SEQ):
    segments = [pre.tokenize(tf.constant(texts))]
    if pairs is not None:
      segments.append(pre.tokenize(tf.constant(pairs)))
    inputs = pre.bert_pack_inputs(segments, seq_length=tf.constant(seq_length))
    outputs = enc(inputs)
    return {k: v.numpy() for k, v in inputs.items()}, outputs

  call.encoder = enc
  return call


def _base_args(tiny_model_dir, inputs, output, *extra):
  return ["--model", tiny_model_dir, "--input", inputs, "--output", output, "--seq-length", str(SEQ), *extra]


def _parquet_rows(outcome):
  tables = [pq.read_table(f) for f in outcome.manifest["output_files"]]
  return pa.concat_tables(tables).to_pylist(), tables


def _examples(outcome):
  rows = []
  for path in outcome.manifest["output_files"]:
    for raw in tf.data.TFRecordDataset(path):
      ex = tf.train.Example.FromString(raw.numpy())
      rows.append({k: v for k, v in ex.features.feature.items()})
  return rows


def _dead_letters(outcome):
  out = []
  for path in outcome.manifest["error_files"]:
    with open(path, encoding="utf-8") as f:
      out += [json.loads(line) for line in f if line.strip()]
  return out


def _counter(outcome, name):
  results = outcome.result.metrics().query(MetricsFilter().with_name(name))["counters"]
  return sum(r.committed if r.committed is not None else r.attempted for r in results)


def _assert_invariant(outcome):
  c = outcome.manifest["counts"]
  assert c["read"] == c["written"] + c["dead_lettered"]
  assert outcome.manifest["invariant"]["read_equals_written_plus_dead_lettered"] is True


def test_text_input_to_parquet_equals_direct_savedmodel_calls(tmp_path, tiny_model_dir, direct):
  a = tmp_path / "a.txt"
  a.write_text("\n".join(SENTENCES[:3]) + "\n\n   \n", encoding="utf-8")
  with gzip.open(tmp_path / "b.txt.gz", "wt", encoding="utf-8") as f:
    f.write("\n".join(SENTENCES[3:]) + "\n")
  out = str(tmp_path / "out" / "emb")
  argv = _base_args(tiny_model_dir, str(tmp_path / "*.txt*"), out, "--pooling", "pooled", "--keep-text")
  outcome = run(argv, test_pipeline=TestPipeline(argv=argv))
  rows, tables = _parquet_rows(outcome)
  expected_ids = [f"{a}:{i}" for i in (1, 2, 3)] + [f"{tmp_path / 'b.txt.gz'}:{i}" for i in (1, 2, 3)]
  assert sorted(r["id"] for r in rows) == sorted(expected_ids)
  by_text = {r["text"]: r for r in rows}
  _, outputs = direct(SENTENCES)
  for i, s in enumerate(SENTENCES):
    np.testing.assert_allclose(by_text[s]["embedding"], outputs["pooled_output"][i], atol=1e-5)
  schema = tables[0].schema
  assert schema.field("embedding").type == pa.list_(pa.float32())
  assert schema.field("num_tokens").type == pa.int32()
  meta = {k.decode(): v.decode() for k, v in schema.metadata.items()}
  assert meta["pooling"] == "pooled" and meta["dimension"] == "32"
  m = outcome.manifest
  assert (m["counts"]["read"], m["counts"]["written"], m["counts"]["blank_lines"]) == (6, 6, 2)
  assert m["dimension"] == 32 and m["options"]["seq_length"] == SEQ
  _assert_invariant(outcome)
  assert _counter(outcome, "records_encoded") == 6
  assert _counter(outcome, "records_written") == 6


def test_jsonl_bad_records_are_dead_lettered_and_the_rest_written_to_tfrecord(tmp_path, tiny_model_dir, direct):
  lines = [json.dumps({"id": "good-1", "text": SENTENCES[0]}).encode(),
           json.dumps({"id": 2, "text": SENTENCES[1]}).encode(),
           b'{"id": "bad-utf8", "text": "caf\xc3 au lait"}',
           json.dumps({"id": "empty", "text": "  "}).encode(),
           b'{"id": "malformed", "text": ',
           json.dumps({"id": "no-text"}).encode(),
           json.dumps({"id": "good-3", "text": SENTENCES[2]}).encode()]
  (tmp_path / "in.jsonl").write_bytes(b"\n".join(lines) + b"\n")
  out = str(tmp_path / "emb")
  argv = _base_args(tiny_model_dir, str(tmp_path / "in.jsonl"), out, "--input-format", "jsonl", "--format",
                    "tfrecord", "--pooling", "mean", "--normalize", "--max-dead-letter-fraction", "1")
  outcome = run(argv, test_pipeline=TestPipeline(argv=argv))
  examples = _examples(outcome)
  assert sorted(e["id"].bytes_list.value[0].decode() for e in examples) == ["2", "good-1", "good-3"]
  inputs, outputs = direct(SENTENCES[:3])
  mask = inputs["input_mask"][:, :, None].astype(np.float32)
  mean = (outputs["sequence_output"].numpy() * mask).sum(1) / mask.sum(1)
  mean /= np.linalg.norm(mean, axis=1, keepdims=True)
  expected = {"good-1": mean[0], "2": mean[1], "good-3": mean[2]}
  for e in examples:
    i = e["id"].bytes_list.value[0].decode()
    np.testing.assert_allclose(np.array(e["embedding"].float_list.value), expected[i], atol=1e-5)
    assert e["num_tokens"].int64_list.value[0] == int(inputs["input_mask"][list(expected).index(i)].sum())
  dead = _dead_letters(outcome)
  assert all(set(d) == {"id", "source", "stage", "reason", "snippet"} for d in dead)
  stages = {d["id"].split(":")[-1] if d["id"].startswith(str(tmp_path)) else d["id"]: d["stage"] for d in dead}
  assert len(dead) == 4, dead
  assert set(stages.values()) <= {"decode", "parse"}
  m = outcome.manifest
  assert (m["counts"]["read"], m["counts"]["written"], m["counts"]["dead_lettered"]) == (7, 3, 4)
  _assert_invariant(outcome)


def test_csv_with_tokens_and_text(tmp_path, tiny_model_dir, direct):
  import csv  # pylint: disable=import-outside-toplevel
  with open(tmp_path / "in.csv", "w", newline="", encoding="utf-8") as f:
    w = csv.writer(f)
    w.writerow(["doc", "body"])
    for i, s in enumerate(SENTENCES):
      w.writerow([f"d{i}", s])
  out = str(tmp_path / "emb")
  argv = _base_args(tiny_model_dir, str(tmp_path / "in.csv"), out, "--input-format", "csv", "--id-field", "doc",
                    "--text-field", "body", "--emit-tokens", "--keep-text", "--pooling", "cls", "--num-shards", "2")
  outcome = run(argv, test_pipeline=TestPipeline(argv=argv))
  rows, _ = _parquet_rows(outcome)
  assert len(outcome.manifest["output_files"]) == 2
  assert sorted(r["id"] for r in rows) == [f"d{i}" for i in range(len(SENTENCES))]
  inputs, outputs = direct(SENTENCES)
  seq = outputs["sequence_output"].numpy()
  for r in rows:
    i = int(r["id"][1:])
    n = int(inputs["input_mask"][i].sum())
    assert r["num_tokens"] == n and r["text"] == SENTENCES[i]
    assert r["token_ids"] == inputs["input_word_ids"][i][:n].tolist()
    np.testing.assert_allclose(np.array(r["sequence_output"]), seq[i, :n], atol=1e-5)
    np.testing.assert_allclose(r["embedding"], seq[i, 0], atol=1e-5)
  _assert_invariant(outcome)


def test_parquet_pairs_keep_type_ids_and_trim_round_robin(tmp_path, tiny_model_dir, direct):
  long_a = " ".join(["the cat sat on the mat"] * 8)
  texts = [SENTENCES[0], long_a, SENTENCES[2]]
  pairs = [SENTENCES[1], SENTENCES[3], " ".join(["hello world"] * 20)]
  pq.write_table(pa.table({"id": [10, 11, 12], "q": texts, "p": pairs}), tmp_path / "in.parquet")
  out = str(tmp_path / "emb")
  argv = _base_args(tiny_model_dir, str(tmp_path / "in.parquet"), out, "--input-format", "parquet",
                    "--text-field", "q", "--text-pair-field", "p", "--emit-tokens", "--pooling", "pooled")
  outcome = run(argv, test_pipeline=TestPipeline(argv=argv))
  rows, _ = _parquet_rows(outcome)
  inputs, outputs = direct(texts, pairs)
  by_id = {r["id"]: r for r in rows}
  assert sorted(by_id) == ["10", "11", "12"]
  for i, key in enumerate(["10", "11", "12"]):
    n = int(inputs["input_mask"][i].sum())
    assert by_id[key]["token_ids"] == inputs["input_word_ids"][i][:n].tolist()
    np.testing.assert_allclose(by_id[key]["embedding"], outputs["pooled_output"][i], atol=1e-5)
  assert by_id["11"]["num_tokens"] == SEQ and by_id["12"]["num_tokens"] == SEQ
  assert [by_id[k]["truncated"] for k in ("10", "11", "12")] == [False, True, True]
  # Type ids reach the encoder: the pipeline's vectors are not those of the same tokens all typed as segment A
  # (on the tiny model they move a vector by ~1e-3, 100x the tolerance of the equality above).
  untyped = direct.encoder({"input_word_ids": tf.constant(inputs["input_word_ids"]),
                            "input_mask": tf.constant(inputs["input_mask"]),
                            "input_type_ids": tf.zeros_like(inputs["input_type_ids"])})["pooled_output"].numpy()
  for i, key in enumerate(["10", "11", "12"]):
    assert np.abs(np.asarray(by_id[key]["embedding"]) - untyped[i]).max() > 1e-4
  # Each output's tokens are [CLS] A [SEP] B [SEP], both segments kept (trimmed round robin when too long).
  sep = int(inputs["input_word_ids"][0][int(inputs["input_mask"][0].sum()) - 1])
  for key in ("10", "11", "12"):
    tokens = by_id[key]["token_ids"]
    first_sep = tokens.index(sep)
    assert tokens[-1] == sep and 1 < first_sep < len(tokens) - 2 and tokens.count(sep) == 2
  _assert_invariant(outcome)
  assert outcome.manifest["counts"]["truncated"] == 2


def test_tfrecord_input_on_the_multiprocessing_runner_with_limit(tmp_path, tiny_model_dir, direct):
  with tf.io.TFRecordWriter(str(tmp_path / "in.tfrecord")) as w:
    for i, s in enumerate(SENTENCES):
      ex = tf.train.Example(features=tf.train.Features(feature={
          "id": tf.train.Feature(bytes_list=tf.train.BytesList(value=[f"r{i}".encode()])),
          "text": tf.train.Feature(bytes_list=tf.train.BytesList(value=[s.encode()]))}))
      w.write(ex.SerializeToString())
  out = str(tmp_path / "emb")
  argv = _base_args(tiny_model_dir, str(tmp_path / "in.tfrecord"), out, "--input-format", "tfrecord",
                    "--pooling", "pooled", "--limit", "4", "--direct_num_workers=2",
                    "--direct_running_mode=multi_processing")
  outcome = run(argv)
  rows, _ = _parquet_rows(outcome)
  assert sorted(r["id"] for r in rows) == ["r0", "r1", "r2", "r3"]
  _, outputs = direct(SENTENCES[:4])
  for r in rows:
    np.testing.assert_allclose(r["embedding"], outputs["pooled_output"][int(r["id"][1:])], atol=1e-5)
  assert outcome.manifest["counts"]["read"] == 4
  _assert_invariant(outcome)


def test_layers_average_before_mean_pooling(tmp_path, tiny_model_dir, direct):
  (tmp_path / "in.txt").write_text("\n".join(SENTENCES[:2]) + "\n", encoding="utf-8")
  argv = _base_args(tiny_model_dir, str(tmp_path / "in.txt"), str(tmp_path / "emb"), "--pooling", "mean",
                    "--layers=0,-1", "--keep-text")
  outcome = run(argv, test_pipeline=TestPipeline(argv=argv))
  rows, _ = _parquet_rows(outcome)
  inputs, outputs = direct(SENTENCES[:2])
  layers = [t.numpy() for t in outputs["encoder_outputs"]]
  avg = (layers[0] + layers[-1]) / 2
  mask = inputs["input_mask"][:, :, None].astype(np.float32)
  expected = (avg * mask).sum(1) / mask.sum(1)
  for r in rows:
    np.testing.assert_allclose(r["embedding"], expected[SENTENCES.index(r["text"])], atol=1e-5)


@pytest.mark.parametrize("argv_tail,message", [
    (["--input", "/nonexistent/*.txt"], "/nonexistent"),
    (["--model", "/nonexistent-model"], "does not exist"),  # replaces the tiny model (a flag is given once)
    (["--pooling", "pooled", "--layers", "0"], "--layers"),
    (["--layers", "7", "--pooling", "mean"], "out of range"),
])
def test_bad_options_fail_before_the_job(tmp_path, tiny_model_dir, argv_tail, message):
  (tmp_path / "in.txt").write_text("hello world\n", encoding="utf-8")
  model = argv_tail[argv_tail.index("--model") + 1] if "--model" in argv_tail else tiny_model_dir
  tail = [a for i, a in enumerate(argv_tail) if "--model" not in argv_tail[max(0, i - 1):i + 1]]
  argv = _base_args(model, str(tmp_path / "in.txt"), str(tmp_path / "emb")) + tail
  with pytest.raises(UsageError, match=message):
    run(argv)
  assert not list(tmp_path.glob("emb*"))


def test_no_model_says_how_to_get_one(tmp_path):
  (tmp_path / "in.txt").write_text("hello world\n", encoding="utf-8")
  with pytest.raises(UsageError, match="--model default"):
    run(["--input", str(tmp_path / "in.txt"), "--output", str(tmp_path / "emb")])
