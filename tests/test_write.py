"""Tests for writing embeddings (transforms/write.py, validate.py, columns.py, output_files.py): real pipelines on
the DirectRunner writing real files."""
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
import tensorflow as tf
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.testing import test_pipeline
from apache_beam.testing.util import BeamAssertException, assert_that

from formats import columns as columns_lib
from formats import output_files
from transforms import write
from formats.columns import OutputColumns
from transforms.validate import ValidateEmbeddings, row_problem
from transforms.write import WriteConfig, WriteEmbeddings
from formats.records import DeadLetter, EmbeddingRecord, text_sha256

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
              num_shards=0, **columns):
  """Validate + write embeddings + write dead letters, as the pipeline does. Returns the result.

  `columns`: the other OutputColumns switches (embeddings, mlm, ...), for both transforms.
  """
  cols = OutputColumns(text=keep_text, tokens=emit_tokens, **columns)
  p = test_pipeline.TestPipeline()
  rows = p | beam.Create(records, reshuffle=False)
  valid, dead_letters = rows | ValidateEmbeddings(DIM, cols)  # main first
  files = valid | WriteEmbeddings(
      prefix, WriteConfig(output_format, DIM, num_shards=num_shards, columns=cols, file_metadata=METADATA))
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


@pytest.mark.parametrize("output_format", ["parquet", "tfrecord"])
def test_fixed_shards_share_the_rows_evenly(tmp_path, output_format):
  """200 rows fit one batch (one Parquet row group); 4 shards still get about 50 rows each, not 200 in one."""
  prefix = str(tmp_path / "emb")
  run_write(make_records(200), prefix, output_format, keep_text=False, emit_tokens=False, num_shards=4)
  paths = sorted(glob.glob(f"{prefix}-0000?-of-00004.{output_format}"))
  if output_format == "parquet":
    rows = [pq.read_metadata(p).num_rows for p in paths]
  else:
    rows = [sum(1 for _ in tf.data.TFRecordDataset(p)) for p in paths]
  assert len(rows) == 4 and sum(rows) == 200 and max(rows) <= 2 * min(rows), rows


def test_empty_input_still_writes_files(tmp_path):
  prefix = str(tmp_path / "emb")
  p = test_pipeline.TestPipeline()
  empty = p | "NoRows" >> beam.Create([], reshuffle=False)
  parquet = empty | "Parquet" >> WriteEmbeddings(prefix, WriteConfig("parquet", DIM, file_metadata=METADATA))
  tfrecord = empty | "TFRecord" >> WriteEmbeddings(prefix + "_tf", WriteConfig("tfrecord", DIM))
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
  assert table.schema.equals(columns_lib.parquet_schema(OutputColumns(), DIM, METADATA), check_metadata=False)
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
  records = make_records(4, seed=2)
  columns = OutputColumns(text=True, tokens=True)
  encoded = columns_lib.records_to_examples(records, columns, DIM)
  assert len(encoded) == len(records)
  for rec, serialized in zip(records, encoded):
    example = tf.train.Example.FromString(serialized)
    single = columns_lib.records_to_examples([rec], columns, DIM)[0]
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
  plain = tf.train.Example.FromString(columns_lib.records_to_examples(records[1:2], OutputColumns(), DIM)[0])
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
def test_row_problem_names_the_defect(name, reason):
  rec = bad_records()[name]
  assert reason in row_problem(rec, OutputColumns(tokens=True), DIM)
  assert reason in row_problem(rec, OutputColumns(), DIM)  # fields that are set are always checked


def test_row_problem_accepts_good_rows_and_requires_tokens_only_when_emitted():
  rec = make_records(3)[2]
  assert row_problem(rec, OutputColumns(tokens=True), DIM) is None
  assert "text" in row_problem(rec._replace(text="bad \udcff"), OutputColumns(), DIM)
  assert "id" in row_problem(rec._replace(id=7), OutputColumns(), DIM)
  assert "num_tokens" in row_problem(rec._replace(num_tokens=-1), OutputColumns(), DIM)
  no_tokens = rec._replace(token_ids=None, sequence_output=None)
  assert row_problem(no_tokens, OutputColumns(), DIM) is None
  assert "token_ids is missing" in row_problem(no_tokens, OutputColumns(tokens=True), DIM)


def test_bad_vectors_become_write_dead_letters(tmp_path):
  good = make_records(6, seed=4)
  bad = [r._replace(source=f"part-{i}.txt") for i, r in enumerate(bad_records().values())]
  prefix = str(tmp_path / "emb")
  result = run_write(good + bad, prefix, "parquet")

  table = pa.concat_tables(pq.read_table(p) for p in glob.glob(f"{prefix}-*-of-*.parquet"))
  assert sorted(table.column("id").to_pylist()) == sorted(r.id for r in good)
  letters = read_jsonl(prefix)
  assert sorted(d["id"] for d in letters) == sorted(r.id for r in bad)
  assert {d["id"]: d["source"] for d in letters} == {r.id: r.source for r in bad}  # the input file of each
  for letter in letters:
    assert set(letter) == DEAD_LETTER_KEYS
    assert letter["stage"] == "write"
    assert letter["reason"]
    DeadLetter(**letter)  # the fixed schema parses back
  assert counter(result, "records_written") == len(good)
  assert counter(result, "records_dead_lettered") == len(bad)
  assert counter(result, "records_rejected_at_write") == len(bad)


def test_a_window_row_without_window_fields_is_a_dead_letter_not_a_failed_write(tmp_path):
  """With window columns every row needs parent_id and the window numbers: ValidateEmbeddings rejects a row without
  them, so the sink never sees it (it would fail the whole write)."""
  windows = [r._replace(id=f"doc#{i}", parent_id="doc", chunk_index=i, chunk_start_piece=i, chunk_end_piece=i + 1)
             for i, r in enumerate(make_records(3, seed=8))]
  no_window = make_records(1, seed=9)[0]._replace(id="whole")
  half_window = windows[0]._replace(id="doc#9", chunk_end_piece=None)
  prefix = str(tmp_path / "emb")
  for output_format in ("parquet", "tfrecord"):
    result = run_write(windows + [no_window, half_window], prefix, output_format, windows=True)
    letters = {d["id"]: d for d in read_jsonl(prefix)}
    assert set(letters) == {"whole", "doc#9"}
    assert letters["whole"]["reason"] == "parent_id is missing" and letters["whole"]["stage"] == "write"
    assert letters["doc#9"]["reason"] == "chunk_end_piece is missing"
    assert counter(result, "records_written") == len(windows)
    if output_format == "parquet":  # (the tfrecord write then replaces the prefix's parquet shard)
      table = pq.read_table(glob.glob(f"{prefix}-*.parquet")[0])
      assert sorted(table.column("chunk_index").to_pylist()) == [0, 1, 2]
      assert table.column("parent_id").to_pylist() == ["doc"] * 3


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
  _ = p | beam.Create(rows, reshuffle=False) | WriteEmbeddings(str(tmp_path / "emb"), WriteConfig("parquet", DIM))
  with pytest.raises(Exception, match="ValidateEmbeddings"):
    p.run().wait_until_finish()
  assert not glob.glob(str(tmp_path / "emb-*.parquet"))


# ------------------------------------------------------------------------------------------------
# Small pieces.


def test_file_name_helpers_only_match_their_own_prefix():
  assert output_files.is_output_file("out/emb-00000-of-00002.parquet", "out/emb")
  assert output_files.is_output_file("gs://b/out/emb-00001-of-00002.tfrecord", "gs://b/out/emb")
  assert output_files.is_error_file("out/emb-errors-00000-of-00001.jsonl", "out/emb")
  assert not output_files.is_output_file("out/emb-errors-00000-of-00001.jsonl", "out/emb")
  assert not output_files.is_output_file("out/emb2-00000-of-00001.parquet", "out/emb")
  assert not output_files.is_output_file("out/emb-x-00000-of-00001.parquet", "out/emb")
  assert not output_files.is_error_file("out/emb2-errors-00000-of-00001.jsonl", "out/emb")
  assert not output_files.is_error_file("out/emb-errors-00000-of-00001.parquet", "out/emb")


@pytest.mark.parametrize("name,prefix,output,error", [
    ("emb-00000-of-00001.parquet", "emb", True, False),
    ("emb-00003-of-00004.tfrecord", "emb", True, False),
    ("emb-errors-00000-of-00001.jsonl", "emb", False, True),
    # Another run's shards, whose prefix starts with this one.
    ("emb-large-00000-of-00001.parquet", "emb", False, False),
    ("emb-large-errors-00000-of-00001.jsonl", "emb", False, False),
    ("emb-errors-00000-of-00001.parquet", "emb", False, False),  # the output of the prefix emb-errors
    ("emb-errors-errors-00000-of-00001.jsonl", "emb", False, False),  # its dead letters
    # ... and, seen from the prefix emb-errors, emb's dead letters are not its own.
    ("emb-errors-00000-of-00001.jsonl", "emb-errors", False, False),
    ("emb-errors-00000-of-00001.parquet", "emb-errors", True, False),
    ("emb-errors-errors-00000-of-00001.jsonl", "emb-errors", False, True),
    # Look-alikes: other extensions, backups, other digit counts.
    ("emb-00007-of-00009.parquet.bak", "emb", False, False),
    ("emb-00000-of-00001.jsonl", "emb", False, False),
    ("emb-00000-of-00001.txt", "emb", False, False),
    ("emb-errors-00000-of-00001.jsonl.gz", "emb", False, False),
    ("emb-0000-of-00001.parquet", "emb", False, False),
    ("emb-000000-of-000001.parquet", "emb", False, False),
    ("emb-manifest.json", "emb", False, False),
    ("emb-notes.txt", "emb", False, False),
    ("xemb-00000-of-00001.parquet", "emb", False, False),
])
def test_own_file_names_are_exact(name, prefix, output, error):
  for directory in ("out/", "gs://bucket/out/"):
    assert output_files.is_output_file(directory + name, directory + prefix) is output
    assert output_files.is_error_file(directory + name, directory + prefix) is error


def test_scratch_dir_names_belong_to_one_prefix():
  token = "0123456789abcdef" * 2
  name = output_files.scratch_dir_name("out/emb", "errors", token)
  assert name == f"beam-temp-errors-{token}-emb"
  assert output_files.is_scratch_dir("out/" + name, "out/emb")
  for prefix in ("out/emb-errors", "out/em", "out/errors-emb"):
    assert not output_files.is_scratch_dir("out/" + name, prefix)
  other = output_files.scratch_dir_name("out/emb-errors", "embeddings", token)
  assert not output_files.is_scratch_dir("out/" + other, "out/emb")
  assert not output_files.is_scratch_dir(f"out/beam-temp-emb-{token}", "out/emb")  # Beam's own naming is ambiguous


def _shard_names(directory) -> list[str]:
  return sorted(os.listdir(directory))


def test_sinks_replace_only_their_own_shards(tmp_path):
  """A glob PREFIX-*-of-NNNNN.ext also matches emb-large's and emb-errors' shards: only the prefix's own files are
  replaced (the tfrecord write replaces the parquet one: both are the prefix's embedding files)."""
  foreign = {name: f"{name} stays".encode() for name in (
      "emb-large-00000-of-00001.parquet", "emb-large-00000-of-00001.tfrecord",
      "emb-errors-00000-of-00001.parquet", "emb-errors-errors-00000-of-00001.jsonl",
      "emb-large-errors-00000-of-00001.jsonl", "emb-00007-of-00009.parquet.bak", "emb-notes.txt")}
  for name, data in foreign.items():
    (tmp_path / name).write_bytes(data)
  (tmp_path / "emb-00000-of-00001.parquet").write_bytes(b"a stale shard of this prefix")
  records = make_records(3)
  for output_format in ("parquet", "tfrecord"):
    p = test_pipeline.TestPipeline()
    rows = p | f"Rows{output_format}" >> beam.Create(records, reshuffle=False)
    _ = rows | WriteEmbeddings(str(tmp_path / "emb"), WriteConfig(
        output_format, DIM, num_shards=1, columns=OutputColumns(tokens=True)))
    _ = (p | beam.Create([DeadLetter.make("x", "f", "read", "bad")])) | write.WriteDeadLetters(str(tmp_path / "emb"))
    p.run().wait_until_finish()
    if output_format == "parquet":  # the stale shard was replaced
      assert pq.read_table(str(tmp_path / "emb-00000-of-00001.parquet")).num_rows == 3
  for name, data in foreign.items():
    assert (tmp_path / name).read_bytes() == data, name
  assert _shard_names(tmp_path) == sorted([*foreign, "emb-00000-of-00001.tfrecord",
                                           "emb-errors-00000-of-00001.jsonl"])  # no staging directory left either
  errors = (tmp_path / "emb-errors-00000-of-00001.jsonl").read_text(encoding="utf-8").splitlines()
  assert [json.loads(line)["id"] for line in errors] == ["x"]


def test_parquet_pages_carry_checksums(tmp_path):
  records = make_records(5)
  p = test_pipeline.TestPipeline()
  _ = (p | beam.Create(records, reshuffle=False)) | WriteEmbeddings(str(tmp_path / "emb"), WriteConfig("parquet", DIM))
  p.run().wait_until_finish()
  (path,) = glob.glob(str(tmp_path / "emb-*.parquet"))
  data = bytearray(open(path, "rb").read())
  offset = data.find(records[2].embedding.tobytes())
  assert offset > 0
  data[offset:offset + 8] = bytes(b ^ 0x5A for b in data[offset:offset + 8])
  damaged = str(tmp_path / "damaged.parquet")
  open(damaged, "wb").write(bytes(data))
  assert pq.ParquetFile(path, page_checksum_verification=True).read().num_rows == 5
  with pytest.raises(OSError, match="CRC checksum verification failed"):
    pq.ParquetFile(damaged, page_checksum_verification=True).read()


def test_arguments_are_checked():
  with pytest.raises(ValueError, match="output format"):
    WriteConfig("csv", DIM)
  with pytest.raises(ValueError, match="dim"):
    WriteConfig("parquet", 0)
  with pytest.raises(ValueError, match="directory"):
    WriteEmbeddings("out/", WriteConfig("parquet", DIM))
  with pytest.raises(ValueError, match="directory"):
    write.WriteDeadLetters("out/")
  schema = columns_lib.parquet_schema(OutputColumns(), DIM, {"dimension": 8})
  assert schema.metadata == {b"dimension": b"8"}


# ------------------------------------------------------------------------------------------------
# MLM scores.

MLM_NAMES = ["mlm_pll", "mlm_scored_tokens", "mlm_pseudo_perplexity"]


def with_mlm(rec: EmbeddingRecord, index: int = 0, *, per_token: bool = True) -> EmbeddingRecord:
  """`rec` with MLM scores: [CLS]/[SEP] (the first and last token) unscored, NaN in the token scores.

  The pll is offset by -index/3 so that it is not a float32 value (TFRecord rounds it, Parquet not).
  """
  n = rec.num_tokens
  scores = np.full(n, np.nan, np.float32)
  scores[1:n - 1] = -np.linspace(0.5, 3.0, max(n - 2, 0), dtype=np.float32)
  scored = int(np.count_nonzero(~np.isnan(scores)))
  pll = float(np.nansum(scores, dtype=np.float64)) - index / 3 if scored else 0.0
  return rec._replace(mlm_pll=pll, mlm_scored_tokens=scored,
                      mlm_pseudo_perplexity=float(np.exp(-pll / scored)) if scored else None,
                      mlm_token_scores=scores if per_token else None)


def make_mlm_records(n: int, *, seed: int = 0, embeddings: bool = True, per_token: bool = True):
  """Rows with MLM scores, at least one with nothing scored (None perplexity)."""
  records = [with_mlm(r, i, per_token=per_token) for i, r in enumerate(make_records(n, seed=seed))]
  records[0] = with_mlm(records[0]._replace(num_tokens=2, token_ids=np.array([101, 102], np.int32),
                                            sequence_output=np.zeros((2, DIM), np.float32)),
                        per_token=per_token)
  records[1] = with_mlm(records[1]._replace(num_tokens=5, token_ids=np.arange(5, dtype=np.int32),
                                            sequence_output=np.zeros((5, DIM), np.float32)),
                        1, per_token=per_token)
  if not embeddings:
    records = [r._replace(embedding=None) for r in records]
  return records


def assert_mlm_equal(row: dict, rec: EmbeddingRecord, *, float32: bool = False):
  """Scalars exact (float32-rounded when `float32`); token scores with NaN or None at unscored tokens."""
  want_pll = float(np.float32(rec.mlm_pll)) if float32 else rec.mlm_pll
  assert float(np.asarray(row["mlm_pll"])) == want_pll
  assert int(np.asarray(row["mlm_scored_tokens"])) == rec.mlm_scored_tokens
  perplexity = row["mlm_pseudo_perplexity"]
  if rec.mlm_pseudo_perplexity is None:
    assert perplexity is None or np.isnan(perplexity)
  else:
    np.testing.assert_allclose(perplexity, rec.mlm_pseudo_perplexity, rtol=1e-6 if float32 else 0)
  if rec.mlm_token_scores is not None:
    got = np.array([np.nan if v is None else v for v in row["mlm_token_scores"]], np.float32)
    np.testing.assert_array_equal(got, rec.mlm_token_scores)  # NaNs compare equal here


def run_mlm_write(records, prefix: str, output_format: str, **columns):
  """Validate + write, with the MLM column flags; no extra columns."""
  return run_write(records, prefix, output_format, keep_text=False, emit_tokens=False, num_shards=1, **columns)


def test_parquet_schema_mlm_columns_types_and_nullability():
  schema = columns_lib.parquet_schema(OutputColumns(mlm=True, mlm_per_token=True), DIM)
  assert schema.names == ["id", "embedding", "num_tokens", "truncated", "text_sha256", *MLM_NAMES,
                          "mlm_token_scores"]
  assert [(schema.field(n).type, schema.field(n).nullable) for n in MLM_NAMES] == [
      (pa.float64(), False), (pa.int32(), False), (pa.float64(), True)]
  scores = schema.field("mlm_token_scores")
  assert scores.type.value_type == pa.float32() and scores.type.value_field.nullable and not scores.nullable
  scores_only = columns_lib.parquet_schema(OutputColumns(text=True, embeddings=False, mlm=True), DIM)
  assert scores_only.names == ["id", "num_tokens", "truncated", "text_sha256", "text", *MLM_NAMES]
  assert columns_lib.parquet_schema(OutputColumns(), DIM) == columns_lib.parquet_schema(
      OutputColumns(embeddings=True, mlm=False, mlm_per_token=False), DIM)
  with pytest.raises(ValueError, match="mlm_per_token"):
    OutputColumns(mlm_per_token=True)


def test_parquet_mlm_round_trip_nulls_and_precision(tmp_path):
  records = make_mlm_records(12)
  prefix = str(tmp_path / "emb")
  result = run_mlm_write(records, prefix, "parquet", mlm=True, mlm_per_token=True)

  [path] = glob.glob(f"{prefix}-*-of-*.parquet")
  table = pq.read_table(path)
  assert table.schema.names == ["id", "embedding", "num_tokens", "truncated", "text_sha256", *MLM_NAMES,
                                "mlm_token_scores"]
  assert table.schema.field("mlm_pll").type == pa.float64()
  assert table.schema.field("mlm_scored_tokens").type == pa.int32()
  assert table.schema.field("mlm_pseudo_perplexity").type == pa.float64()
  assert table.schema.field("mlm_token_scores").type.value_type == pa.float32()
  assert not table.schema.field("mlm_pll").nullable  # stored as REQUIRED
  assert table.column("mlm_pseudo_perplexity").null_count == sum(r.mlm_scored_tokens == 0 for r in records) > 0
  rows = {row["id"]: row for row in table.to_pylist()}
  assert len(rows) == len(records)
  for rec in records:
    row = rows[rec.id]
    np.testing.assert_array_equal(row["embedding"], rec.embedding)
    assert_mlm_equal(row, rec)  # float64: the pll is exact
    tokens = row["mlm_token_scores"]
    assert len(tokens) == rec.num_tokens
    if rec.num_tokens:  # [CLS] and [SEP] are null items, the scored tokens are not
      assert tokens[0] is None and tokens[-1] is None
      assert sum(v is not None for v in tokens) == rec.mlm_scored_tokens
  assert rows["doc-0"]["mlm_pseudo_perplexity"] is None and rows["doc-0"]["mlm_token_scores"] == [None, None]
  assert rows["doc-1"]["mlm_pll"] != float(np.float32(rows["doc-1"]["mlm_pll"]))  # not a float32 value
  assert counter(result, "records_written") == len(records)


def mlm_bad_records() -> dict[str, EmbeddingRecord]:
  good = make_mlm_records(2, embeddings=False)[1]  # 5 tokens, 3 scored
  nan_count = np.array([np.nan, -1.0, -1.0, np.nan, np.nan], np.float32)
  return {
      "pll_nan": good._replace(id="pll_nan", mlm_pll=float("nan")),
      "pll_inf": good._replace(id="pll_inf", mlm_pll=float("-inf")),
      "pll_str": good._replace(id="pll_str", mlm_pll="-3.5"),
      "pll_missing": good._replace(id="pll_missing", mlm_pll=None),
      "scored_missing": good._replace(id="scored_missing", mlm_scored_tokens=None),
      "scored_float": good._replace(id="scored_float", mlm_scored_tokens=3.0),
      "scored_bool": good._replace(id="scored_bool", mlm_scored_tokens=True),
      "scored_negative": good._replace(id="scored_negative", mlm_scored_tokens=-1),
      "scored_too_many": good._replace(id="scored_too_many", mlm_scored_tokens=6),
      "ppl_missing": good._replace(id="ppl_missing", mlm_pseudo_perplexity=None),
      "ppl_unscored": good._replace(id="ppl_unscored", mlm_pll=0.0, mlm_scored_tokens=0,
                                    mlm_pseudo_perplexity=1.0, mlm_token_scores=np.full(5, np.nan, np.float32)),
      "ppl_zero": good._replace(id="ppl_zero", mlm_pseudo_perplexity=0.0),
      "ppl_nan": good._replace(id="ppl_nan", mlm_pseudo_perplexity=float("nan")),
      "ppl_inf": good._replace(id="ppl_inf", mlm_pseudo_perplexity=float("inf")),
      "scores_short": good._replace(id="scores_short", mlm_token_scores=good.mlm_token_scores[:4]),
      "scores_matrix": good._replace(id="scores_matrix", mlm_token_scores=good.mlm_token_scores[None]),
      "scores_inf": good._replace(id="scores_inf", mlm_token_scores=np.where(
          np.isnan(good.mlm_token_scores), np.nan, -np.inf).astype(np.float32)),
      "scores_count": good._replace(id="scores_count", mlm_token_scores=nan_count),
  }


@pytest.mark.parametrize("name, reason", [
    ("pll_nan", "mlm_pll is not finite"), ("pll_inf", "mlm_pll is not finite"),
    ("pll_str", "mlm_pll is not a number"), ("pll_missing", "mlm_pll is missing"),
    ("scored_missing", "mlm_scored_tokens is missing"), ("scored_float", "mlm_scored_tokens is not an integer"),
    ("scored_bool", "mlm_scored_tokens is not an integer"),
    ("scored_negative", "outside [0, num_tokens=5]"), ("scored_too_many", "outside [0, num_tokens=5]"),
    ("ppl_missing", "mlm_pseudo_perplexity is missing"), ("ppl_unscored", "must be None"),
    ("ppl_zero", "not finite and positive"), ("ppl_nan", "not finite and positive"),
    ("ppl_inf", "not finite and positive"), ("scores_short", "mlm_token_scores has shape (4,)"),
    ("scores_matrix", "mlm_token_scores has shape (1, 5)"), ("scores_inf", "3 infinite"),
    ("scores_count", "2 scored (non-NaN) value(s) but mlm_scored_tokens is 3"),
])
def test_row_problem_names_the_mlm_defect(name, reason):
  rec = mlm_bad_records()[name]
  problem = row_problem(rec, OutputColumns(embeddings=False, mlm=True, mlm_per_token=True), DIM)
  assert problem is not None and reason in problem
  if name != "pll_missing":  # a set MLM field is always checked, as token_ids are
    assert reason in row_problem(rec._replace(embedding=np.zeros(DIM, np.float32)), OutputColumns(), DIM)


def test_row_problem_mlm_flags():
  rec = make_mlm_records(3, embeddings=False)[1]
  assert rec.mlm_scored_tokens == 3
  assert row_problem(rec, OutputColumns(embeddings=False, mlm=True, mlm_per_token=True), DIM) is None
  assert "embedding has shape" in row_problem(rec, OutputColumns(mlm=True), DIM)  # required by default
  bad_vector = rec._replace(embedding=np.full(DIM, np.nan, np.float32))
  assert row_problem(bad_vector, OutputColumns(embeddings=False, mlm=True), DIM) is None  # not written: ignored
  plain = make_records(1)[0]
  assert row_problem(plain, OutputColumns(), DIM) is None
  assert "mlm_pll is missing" in row_problem(plain, OutputColumns(mlm=True), DIM)
  no_scores = rec._replace(mlm_token_scores=None)
  assert row_problem(no_scores, OutputColumns(embeddings=False, mlm=True), DIM) is None
  assert "mlm_token_scores is missing" in row_problem(
      no_scores, OutputColumns(embeddings=False, mlm=True, mlm_per_token=True), DIM)
  with_numpy_scalars = rec._replace(mlm_pll=np.float32(rec.mlm_pll),
                                    mlm_scored_tokens=np.int64(rec.mlm_scored_tokens),
                                    mlm_pseudo_perplexity=np.float64(rec.mlm_pseudo_perplexity))
  assert row_problem(with_numpy_scalars, OutputColumns(embeddings=False, mlm=True, mlm_per_token=True), DIM) is None


def test_scores_only_parquet_and_bad_mlm_rows_become_dead_letters(tmp_path):
  good = make_mlm_records(6, seed=5, embeddings=False, per_token=False)
  bad = [r._replace(mlm_token_scores=None) for r in mlm_bad_records().values()
         if not r.id.startswith("scores_")]
  prefix = str(tmp_path / "emb")
  result = run_mlm_write(good + bad, prefix, "parquet", embeddings=False, mlm=True)

  [path] = glob.glob(f"{prefix}-*-of-*.parquet")
  table = pq.read_table(path)
  assert table.schema.names == ["id", "num_tokens", "truncated", "text_sha256", *MLM_NAMES]
  rows = {row["id"]: row for row in table.to_pylist()}
  assert sorted(rows) == sorted(r.id for r in good)
  for rec in good:
    assert_mlm_equal(rows[rec.id], rec)
  letters = read_jsonl(prefix)
  assert sorted(d["id"] for d in letters) == sorted(r.id for r in bad)
  assert {d["stage"] for d in letters} == {"write"}
  assert all(d["reason"].startswith("mlm_") for d in letters)
  assert counter(result, "records_rejected_at_write") == len(bad)


def test_tfrecord_mlm_round_trip_with_tf_parsing(tmp_path):
  records = make_mlm_records(10, seed=6, embeddings=False)
  prefix = str(tmp_path / "emb")
  run_mlm_write(records, prefix, "tfrecord", embeddings=False, mlm=True, mlm_per_token=True)

  [path] = glob.glob(f"{prefix}-*-of-*.tfrecord")
  spec = {
      "id": tf.io.FixedLenFeature([], tf.string),
      "mlm_pll": tf.io.FixedLenFeature([], tf.float32),
      "mlm_scored_tokens": tf.io.FixedLenFeature([], tf.int64),
      "mlm_pseudo_perplexity": tf.io.FixedLenFeature([], tf.float32, default_value=float("nan")),
      "mlm_token_scores": tf.io.VarLenFeature(tf.float32),
  }
  rows = {}
  for serialized in tf.data.TFRecordDataset([path]):
    features = tf.train.Example.FromString(serialized.numpy()).features.feature
    assert "embedding" not in features
    parsed = tf.io.parse_single_example(serialized, spec)
    row = {k: (tf.sparse.to_dense(v) if isinstance(v, tf.sparse.SparseTensor) else v).numpy()
           for k, v in parsed.items()}
    row["id"] = row["id"].decode()
    row["has_perplexity"] = "mlm_pseudo_perplexity" in features
    rows[row["id"]] = row
  assert len(rows) == len(records)
  for rec in records:
    row = rows[rec.id]
    assert row["has_perplexity"] == (rec.mlm_pseudo_perplexity is not None)  # omitted when None
    assert_mlm_equal(row, rec, float32=True)  # float_list: the pll is rounded to float32
    if rec.num_tokens:  # NaN at [CLS]/[SEP]: tf.Example has no nulls
      assert np.isnan(row["mlm_token_scores"][[0, -1]]).all()


def test_columnar_encoder_mlm_features_keep_row_order():
  records = make_mlm_records(6, seed=7)
  records[3] = with_mlm(records[3]._replace(num_tokens=1, token_ids=np.array([101], np.int32),
                                            sequence_output=np.zeros((1, DIM), np.float32)))
  columns = OutputColumns(mlm=True, mlm_per_token=True)
  encoded = columns_lib.records_to_examples(records, columns, DIM)
  assert len(encoded) == len(records)
  for rec, serialized in zip(records, encoded):  # None-perplexity rows are encoded apart, then put back
    example = tf.train.Example.FromString(serialized)
    assert tf.train.Example.FromString(columns_lib.records_to_examples([rec], columns, DIM)[0]) == example
    feature = example.features.feature
    assert feature["id"].bytes_list.value == [rec.id.encode()]
    omitted = {"mlm_pseudo_perplexity"} if rec.mlm_pseudo_perplexity is None else set()
    assert set(feature) == {"id", "embedding", "num_tokens", "truncated", "text_sha256", *MLM_NAMES,
                            "mlm_token_scores"} - omitted
    assert feature["mlm_pll"].float_list.value == [np.float32(rec.mlm_pll)]
    assert feature["mlm_scored_tokens"].int64_list.value == [rec.mlm_scored_tokens]
    np.testing.assert_array_equal(np.array(feature["mlm_token_scores"].float_list.value, np.float32),
                                  rec.mlm_token_scores)
  perplexities = [r.mlm_pseudo_perplexity is None for r in records]
  assert perplexities[0] and perplexities[3] and not all(perplexities)  # groups interleave
  plain = tf.train.Example.FromString(columns_lib.records_to_examples(make_records(1), OutputColumns(), DIM)[0])
  assert not set(plain.features.feature) & set(MLM_NAMES)
