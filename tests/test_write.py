"""Tests for transforms/write.py: real pipelines on the DirectRunner writing real files."""
from __future__ import annotations

import glob
import json
import os
import re

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.testing import test_pipeline
from apache_beam.testing.util import BeamAssertException, assert_that

from transforms import write
from transforms.records import DeadLetter, EmbeddingRecord, text_sha256

DIM = 8
METADATA = {"model": "test-bert", "dimension": str(DIM), "pooling": "mean"}
DEAD_LETTER_KEYS = {"id", "source", "stage", "reason", "snippet"}


def make_records(n: int, *, dim: int = DIM, seed: int = 0) -> list[EmbeddingRecord]:
  """Rows with non-ASCII text, token ids and a per-token sequence output."""
  rng = np.random.default_rng(seed)
  records = []
  for i in range(n):
    text = f"naïve café 日本 #{i}"
    num_tokens = int(rng.integers(0, 6))
    records.append(EmbeddingRecord(
        id=f"doc-{i}",
        embedding=rng.standard_normal(dim).astype(np.float32),
        num_tokens=num_tokens,
        truncated=bool(i % 3 == 0),
        text_sha256=text_sha256(text),
        text=text if i % 4 else None,
        token_ids=rng.integers(0, 30000, num_tokens).astype(np.int32),
        sequence_output=rng.standard_normal((num_tokens, dim)).astype(np.float32)))
  return records


def files_on_disk(pattern: str):
  """A pipeline matcher: the sink's file names are exactly the files matching `pattern`.

  It runs after the sink has finalized, so the files must already be in place.
  """

  def check(names):
    on_disk = sorted(glob.glob(pattern))
    if sorted(names) != on_disk or not on_disk:
      raise BeamAssertException(f"sink returned {sorted(names)}, disk has {on_disk}")

  return check


def counter(result, name: str) -> int:
  counters = result.metrics().query(MetricsFilter().with_namespace(write.METRICS_NAMESPACE).with_name(name))
  return sum(c.committed for c in counters["counters"])


def run_write(records, prefix: str, output_format: str, *, keep_text=True, emit_tokens=True,
              num_shards=0):
  """Validate + write embeddings + write dead letters, as the pipeline does. Returns the result."""
  p = test_pipeline.TestPipeline()
  rows = p | beam.Create(records, reshuffle=False)
  valid, dead_letters = rows | write.ValidateEmbeddings(DIM, emit_tokens=emit_tokens)  # main output first
  files = valid | write.WriteEmbeddings(
      prefix, output_format, DIM, num_shards=num_shards, keep_text=keep_text, emit_tokens=emit_tokens,
      file_metadata=METADATA)
  errors = dead_letters | write.WriteDeadLetters(prefix)
  assert_that(files, files_on_disk(f"{prefix}-?????-of-?????.{output_format}"), label="OutputFiles")
  assert_that(errors, files_on_disk(f"{prefix}-errors-?????-of-?????.jsonl"), label="ErrorFiles")
  result = p.run()
  result.wait_until_finish()
  return result


def read_jsonl(prefix: str) -> list[dict]:
  rows = []
  for path in sorted(glob.glob(f"{prefix}-errors-*.jsonl")):
    with open(path, encoding="utf-8", newline="") as f:
      rows.extend(json.loads(line) for line in f.read().split("\n") if line)
  return rows


def assert_rows_equal(actual: dict, expected: EmbeddingRecord, *, flat_sequence=False):
  assert actual["id"] == expected.id
  np.testing.assert_allclose(actual["embedding"], expected.embedding, rtol=1e-6)
  assert actual["num_tokens"] == expected.num_tokens
  assert bool(actual["truncated"]) == expected.truncated
  assert actual["text_sha256"] == expected.text_sha256
  np.testing.assert_array_equal(actual["token_ids"], expected.token_ids)
  sequence = np.asarray(actual["sequence_output"], dtype=np.float32)
  want = expected.sequence_output.reshape(-1) if flat_sequence else expected.sequence_output
  np.testing.assert_allclose(sequence.reshape(want.shape), want, rtol=1e-6)


# ------------------------------------------------------------------------------------------------
# Parquet.


def test_parquet_round_trip_types_values_and_footer(tmp_path):
  records = make_records(25)
  prefix = str(tmp_path / "emb")
  result = run_write(records, prefix, "parquet")

  paths = sorted(glob.glob(f"{prefix}-*-of-*.parquet"))
  assert paths and all(re.fullmatch(r"emb-\d{5}-of-\d{5}\.parquet", os.path.basename(p)) for p in paths)
  table = pa.concat_tables(pq.read_table(p) for p in paths)
  schema = table.schema
  assert schema.names == ["id", "embedding", "num_tokens", "truncated", "text_sha256", "text", "token_ids",
                          "sequence_output"]
  assert schema.field("id").type == pa.string()
  assert schema.field("embedding").type.value_type == pa.float32()
  assert schema.field("num_tokens").type == pa.int32()
  assert schema.field("truncated").type == pa.bool_()
  assert schema.field("text_sha256").type == pa.string()
  assert schema.field("text").type == pa.string()
  assert schema.field("token_ids").type.value_type == pa.int32()
  assert schema.field("sequence_output").type.value_type.value_type == pa.float32()
  for path in paths:
    footer = pq.read_metadata(path).metadata
    for key, value in METADATA.items():
      assert footer[key.encode()] == value.encode()

  rows = {row["id"]: row for row in table.to_pylist()}
  assert len(rows) == len(records)
  for rec in records:
    assert_rows_equal(rows[rec.id], rec)
    assert rows[rec.id]["text"] == rec.text  # None stays null
  assert counter(result, "records_written") == len(records)
  assert read_jsonl(prefix) == []


def test_parquet_minimal_columns_and_fixed_shards(tmp_path):
  records = make_records(7)
  prefix = str(tmp_path / "emb")
  run_write(records, prefix, "parquet", keep_text=False, emit_tokens=False, num_shards=3)

  paths = sorted(glob.glob(f"{prefix}-*.parquet"))
  assert [os.path.basename(p) for p in paths] == [f"emb-0000{i}-of-00003.parquet" for i in range(3)]
  tables = [pq.read_table(p) for p in paths]
  assert all(t.schema.names == ["id", "embedding", "num_tokens", "truncated", "text_sha256"] for t in tables)
  assert sum(t.num_rows for t in tables) == len(records)  # shards without rows are valid, empty files
  ids = sorted(i for t in tables for i in t.column("id").to_pylist())
  assert ids == sorted(r.id for r in records)


def test_empty_input_still_writes_files(tmp_path):
  prefix = str(tmp_path / "emb")
  p = test_pipeline.TestPipeline()
  empty = p | "NoRows" >> beam.Create([], reshuffle=False)
  parquet = empty | "Parquet" >> write.WriteEmbeddings(prefix, "parquet", DIM, file_metadata=METADATA)
  tfrecord = empty | "TFRecord" >> write.WriteEmbeddings(prefix + "_tf", "tfrecord", DIM)
  errors = p | "NoErrors" >> beam.Create([], reshuffle=False) | write.WriteDeadLetters(prefix)
  assert_that(parquet, files_on_disk(f"{prefix}-*.parquet"), label="ParquetFiles")
  assert_that(tfrecord, files_on_disk(f"{prefix}_tf-*.tfrecord"), label="TFRecordFiles")
  assert_that(errors, files_on_disk(f"{prefix}-errors-*.jsonl"), label="ErrorFiles")
  result = p.run()
  result.wait_until_finish()

  [parquet_path] = glob.glob(f"{prefix}-*.parquet")
  assert os.path.basename(parquet_path) == "emb-00000-of-00001.parquet"
  table = pq.read_table(parquet_path)
  assert table.num_rows == 0
  assert table.schema.equals(write.parquet_schema(DIM, file_metadata=METADATA), check_metadata=False)
  assert pq.read_metadata(parquet_path).metadata[b"model"] == b"test-bert"
  [tfrecord_path] = glob.glob(f"{prefix}_tf-*.tfrecord")
  assert os.path.getsize(tfrecord_path) == 0
  [errors_path] = glob.glob(f"{prefix}-errors-*.jsonl")
  assert os.path.basename(errors_path) == "emb-errors-00000-of-00001.jsonl"
  assert os.path.getsize(errors_path) == 0
  assert counter(result, "records_written") == 0


# ------------------------------------------------------------------------------------------------
# TFRecord.


def test_tfrecord_round_trip_with_tf_parsing(tmp_path):
  tf = pytest.importorskip("tensorflow")
  records = make_records(20, seed=1)
  prefix = str(tmp_path / "emb")
  result = run_write(records, prefix, "tfrecord")

  paths = sorted(glob.glob(f"{prefix}-*-of-*.tfrecord"))
  assert paths
  spec = {
      "id": tf.io.FixedLenFeature([], tf.string),
      "text_sha256": tf.io.FixedLenFeature([], tf.string),
      "text": tf.io.VarLenFeature(tf.string),
      "embedding": tf.io.FixedLenFeature([DIM], tf.float32),
      "num_tokens": tf.io.FixedLenFeature([], tf.int64),
      "truncated": tf.io.FixedLenFeature([], tf.int64),
      "token_ids": tf.io.VarLenFeature(tf.int64),
      "sequence_output": tf.io.VarLenFeature(tf.float32),
  }
  rows = {}
  for serialized in tf.data.TFRecordDataset(paths):
    parsed = tf.io.parse_single_example(serialized, spec)
    row = {k: (tf.sparse.to_dense(v) if isinstance(v, tf.sparse.SparseTensor) else v).numpy()
           for k, v in parsed.items()}
    for key in ("id", "text_sha256"):
      row[key] = row[key].decode("utf-8")
    rows[row["id"]] = row
  assert len(rows) == len(records)
  for rec in records:
    row = rows[rec.id]
    assert_rows_equal(row, rec, flat_sequence=True)
    assert [t.decode("utf-8") for t in row["text"]] == ([] if rec.text is None else [rec.text])
  assert counter(result, "records_written") == len(records)


def test_columnar_encoder_matches_tf_example_protos():
  tf = pytest.importorskip("tensorflow")
  records = make_records(4, seed=2)
  encoded = write.embeddings_to_examples(records, keep_text=True, emit_tokens=True)
  assert len(encoded) == len(records)
  for rec, serialized in zip(records, encoded):
    example = tf.train.Example.FromString(serialized)
    single = write.embedding_to_example(rec, keep_text=True, emit_tokens=True)
    assert tf.train.Example.FromString(single) == example  # (map order in the bytes may differ)
    feature = example.features.feature
    assert feature["id"].bytes_list.value == [rec.id.encode()]
    assert feature["text_sha256"].bytes_list.value == [rec.text_sha256.encode()]
    assert feature["text"].bytes_list.value == ([] if rec.text is None else [rec.text.encode()])
    np.testing.assert_allclose(feature["embedding"].float_list.value, rec.embedding, rtol=1e-6)
    assert feature["num_tokens"].int64_list.value == [rec.num_tokens]
    assert feature["truncated"].int64_list.value == [int(rec.truncated)]
    assert list(feature["token_ids"].int64_list.value) == rec.token_ids.tolist()
    np.testing.assert_allclose(feature["sequence_output"].float_list.value, rec.sequence_output.reshape(-1),
                               rtol=1e-6)
  plain = tf.train.Example.FromString(write.embedding_to_example(records[1]))
  assert set(plain.features.feature) == {"id", "embedding", "num_tokens", "truncated", "text_sha256"}


# ------------------------------------------------------------------------------------------------
# Validation and dead letters.


def bad_records() -> dict[str, EmbeddingRecord]:
  good = make_records(1, seed=3)[0]
  return {
      "nan": good._replace(id="nan", embedding=np.array([np.nan] + [0.0] * (DIM - 1), np.float32)),
      "inf": good._replace(id="inf", embedding=np.array([np.inf] + [0.0] * (DIM - 1), np.float32)),
      "overflow": good._replace(id="overflow", embedding=np.full(DIM, 1e39, np.float64)),
      "short": good._replace(id="short", embedding=np.zeros(DIM - 1, np.float32)),
      "matrix": good._replace(id="matrix", embedding=np.zeros((1, DIM), np.float32)),
      "missing": good._replace(id="missing", embedding=None),
      "seq_nan": good._replace(id="seq_nan", num_tokens=2, token_ids=np.array([1, 2], np.int32),
                               sequence_output=np.array([[np.nan] * DIM, [0.0] * DIM], np.float32)),
      "seq_shape": good._replace(id="seq_shape", num_tokens=2, token_ids=np.array([1, 2], np.int32),
                                 sequence_output=np.zeros((2, DIM + 1), np.float32)),
      "tokens_mismatch": good._replace(id="tokens_mismatch", num_tokens=3, token_ids=np.array([1, 2], np.int32),
                                       sequence_output=np.zeros((2, DIM), np.float32)),
  }


@pytest.mark.parametrize("name, reason", [
    ("nan", "embedding has 1 non-finite"), ("inf", "non-finite"), ("overflow", "non-finite"),
    ("short", "shape"), ("matrix", "shape"), ("missing", "shape"), ("seq_nan", "sequence_output has"),
    ("seq_shape", "sequence_output has shape"), ("tokens_mismatch", "num_tokens"),
])
def test_embedding_problem_names_the_defect(name, reason):
  rec = bad_records()[name]
  assert reason in write.embedding_problem(rec, DIM, emit_tokens=True)
  assert reason in write.embedding_problem(rec, DIM)  # fields that are set are always checked


def test_embedding_problem_accepts_good_rows_and_requires_tokens_only_when_emitted():
  rec = make_records(3)[2]
  assert write.embedding_problem(rec, DIM, emit_tokens=True) is None
  assert "text" in write.embedding_problem(rec._replace(text="bad \udcff"), DIM)
  assert "id" in write.embedding_problem(rec._replace(id=7), DIM)
  assert "num_tokens" in write.embedding_problem(rec._replace(num_tokens=-1), DIM)
  no_tokens = rec._replace(token_ids=None, sequence_output=None)
  assert write.embedding_problem(no_tokens, DIM) is None
  assert "token_ids is missing" in write.embedding_problem(no_tokens, DIM, emit_tokens=True)


def test_bad_vectors_become_write_dead_letters(tmp_path):
  good = make_records(6, seed=4)
  bad = list(bad_records().values())
  prefix = str(tmp_path / "emb")
  result = run_write(good + bad, prefix, "parquet")

  table = pa.concat_tables(pq.read_table(p) for p in glob.glob(f"{prefix}-*-of-*.parquet"))
  assert sorted(table.column("id").to_pylist()) == sorted(r.id for r in good)
  letters = read_jsonl(prefix)
  assert sorted(d["id"] for d in letters) == sorted(r.id for r in bad)
  for letter in letters:
    assert set(letter) == DEAD_LETTER_KEYS
    assert letter["stage"] == "write"
    assert letter["reason"]
    DeadLetter(**letter)  # the fixed schema parses back
  assert counter(result, "records_written") == len(good)
  assert counter(result, "records_dead_lettered") == len(bad)
  assert counter(result, "records_rejected_at_write") == len(bad)


def test_dead_letter_files_hold_one_json_object_per_line(tmp_path):
  letters = [
      DeadLetter.make("a", "in.txt", "read", "multi\nline reason", "line one\nline two\r\n"),
      DeadLetter.make("b", "in.txt", "decode", "odd separators", "x\u2028y\u0085z 日本"),
      DeadLetter.make("c", "in.txt", "parse", "lone surrogate", "bad \udcff byte"),
      DeadLetter.make("d", "in.jsonl", "encode", "long", "z" * 1000),
  ]
  prefix = str(tmp_path / "emb")
  p = test_pipeline.TestPipeline()
  files = p | beam.Create(letters, reshuffle=False) | write.WriteDeadLetters(prefix, num_shards=2)
  assert_that(files, files_on_disk(f"{prefix}-errors-0000?-of-00002.jsonl"))
  result = p.run()
  result.wait_until_finish()

  parsed = read_jsonl(prefix)
  assert sorted(DeadLetter(**d) for d in parsed) == sorted(letters)
  assert counter(result, "records_dead_lettered") == len(letters)
  assert len(parsed[0]["snippet"]) <= 200


def test_unvalidated_bad_row_fails_the_sink(tmp_path):
  rows = make_records(2) + [bad_records()["nan"]]
  p = test_pipeline.TestPipeline()
  _ = p | beam.Create(rows, reshuffle=False) | write.WriteEmbeddings(str(tmp_path / "emb"), "parquet", DIM)
  with pytest.raises(Exception, match="ValidateEmbeddings"):
    p.run().wait_until_finish()
  assert not glob.glob(str(tmp_path / "emb-*.parquet"))


# ------------------------------------------------------------------------------------------------
# Small pieces.


def test_file_name_helpers_only_match_their_own_prefix():
  assert write.is_output_file("out/emb-00000-of-00002.parquet", "out/emb")
  assert write.is_output_file("gs://b/out/emb-00001-of-00002.tfrecord", "gs://b/out/emb")
  assert write.is_error_file("out/emb-errors-00000-of-00001.jsonl", "out/emb")
  assert not write.is_output_file("out/emb-errors-00000-of-00001.jsonl", "out/emb")
  assert not write.is_output_file("out/emb2-00000-of-00001.parquet", "out/emb")
  assert not write.is_output_file("out/emb-x-00000-of-00001.parquet", "out/emb")
  assert not write.is_error_file("out/emb2-errors-00000-of-00001.jsonl", "out/emb")
  assert not write.is_error_file("out/emb-errors-00000-of-00001.parquet", "out/emb")


def test_arguments_are_checked():
  with pytest.raises(ValueError, match="output format"):
    write.WriteEmbeddings("out/emb", "csv", DIM)
  with pytest.raises(ValueError, match="dim"):
    write.WriteEmbeddings("out/emb", "parquet", 0)
  with pytest.raises(ValueError, match="directory"):
    write.WriteDeadLetters("out/")
  schema = write.parquet_schema(DIM, file_metadata={"dimension": 8})
  assert schema.metadata == {b"dimension": b"8"}
