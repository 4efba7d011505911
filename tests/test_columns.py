"""The column table (formats/columns.py): Parquet, tf.Example and the previous-output reader agree on every
column, for every valid OutputColumns."""
from __future__ import annotations

import io

import numpy as np
import pyarrow.parquet as pq
import pytest
import tensorflow as tf

from formats import columns as columns_lib
from transforms import previous_rows
from formats.columns import COLUMNS, SWITCHES, OutputColumns
from formats.records import EmbeddingRecord, text_sha256
from transforms.validate import row_problem

DIM = 3
COMBINATIONS = list(OutputColumns.combinations())


def switches(columns: OutputColumns) -> str:
  return "+".join(s for s in SWITCHES if getattr(columns, s)) or "none"


def full_rows() -> list[EmbeddingRecord]:
  """Rows with every written field set, to values that survive float32 (tf.Example's floats) exactly."""
  rows = []
  for i, (num_tokens, scored, text) in enumerate([(3, 1, "naïve café"), (0, 0, None), (2, 0, "日本")]):
    scores = np.full(num_tokens, np.nan, np.float32)
    scores[1:1 + scored] = -0.5
    rows.append(EmbeddingRecord(
        id=f"doc-{i}#{i}", embedding=np.arange(DIM, dtype=np.float32) * (i + 1), num_tokens=num_tokens,
        truncated=bool(i % 2), text_sha256=text_sha256(text or ""), text=text,
        token_ids=np.arange(100, 100 + num_tokens, dtype=np.int32),
        sequence_output=np.arange(num_tokens * DIM, dtype=np.float32).reshape(num_tokens, DIM) / 4,
        mlm_pll=-0.5 * scored, mlm_scored_tokens=scored, mlm_pseudo_perplexity=1.5 if scored else None,
        mlm_token_scores=scores, parent_id=f"doc-{i}", chunk_index=i, chunk_start_piece=2 * i,
        chunk_end_piece=2 * i + 5))
  return rows


def written(row: EmbeddingRecord, names) -> EmbeddingRecord:
  """`row` as it reads back with the columns `names`: the other fields None (num_tokens 0, truncated False, and
  source, which is never written, "")."""
  kept = {name: getattr(row, name) for name in names}
  return EmbeddingRecord(**{**{f: None for f in EmbeddingRecord._fields}, "num_tokens": 0, "truncated": False,
                            "source": "", **kept})


def assert_same_rows(actual, expected):
  assert len(actual) == len(expected)
  for got, want in zip(actual, expected):
    for name in EmbeddingRecord._fields:
      a, b = getattr(got, name), getattr(want, name)
      if isinstance(b, np.ndarray):
        assert isinstance(a, np.ndarray) and a.dtype == b.dtype, name
        np.testing.assert_array_equal(a, b, err_msg=name)  # NaNs compare equal
      else:
        assert a == b and type(a) is type(b), (name, a, b)


def test_there_are_48_valid_combinations_and_per_token_needs_mlm():
  assert len(COMBINATIONS) == 48 and len(set(COMBINATIONS)) == 48
  assert all(c.mlm for c in COMBINATIONS if c.mlm_per_token)
  with pytest.raises(ValueError, match="mlm_per_token"):
    OutputColumns(mlm_per_token=True)
  assert [c.name for c in COLUMNS if c.switch is None] == ["id", "num_tokens", "truncated", "text_sha256"]


@pytest.mark.parametrize("columns", COMBINATIONS, ids=switches)
def test_parquet_tf_example_and_the_previous_reader_agree(columns, tmp_path):
  names = columns.names()
  rows = [written(r, names) for r in full_rows()]
  assert all(row_problem(r, columns, DIM) is None for r in rows)

  # Parquet: the table has the schema, and reads back to the same rows (through a real file).
  table = columns_lib.records_to_table(rows, columns, DIM)
  schema = columns_lib.parquet_schema(columns, DIM)
  assert table.schema.equals(schema) and tuple(schema.names) == names
  buffer = io.BytesIO()
  pq.write_table(table, buffer)
  stored = pq.read_table(io.BytesIO(buffer.getvalue()))
  assert stored.schema.equals(schema, check_metadata=False)
  assert_same_rows(columns_lib.arrow_to_records(stored, names, DIM), rows)

  # tf.Example: one feature per column (a None perplexity omitted), and back to the same rows.
  examples = columns_lib.records_to_examples(rows, columns, DIM)
  for row, serialized in zip(rows, examples):
    features = tf.train.Example.FromString(serialized).features.feature
    omitted = {"mlm_pseudo_perplexity"} if columns.mlm and row.mlm_pseudo_perplexity is None else set()
    assert set(features) == set(names) - omitted
    for column in columns.selected:
      if column.name not in omitted:
        assert features[column.name].WhichOneof("kind") == column.kind.feature, column.name
  assert_same_rows(columns_lib.examples_to_records(examples, names, DIM), rows)

  # The previous-output reader: the carried columns (all but the text) of both formats' files.
  carried = ("id", "text_sha256") + columns.carried()
  assert "text" not in carried and set(carried) == set(names) - {"text"}
  expected = [written(r, carried) for r in rows]
  parquet_path = str(tmp_path / "prev-00000-of-00001.parquet")
  pq.write_table(table, parquet_path)
  assert_same_rows(list(previous_rows._read_row_group((parquet_path, 0), DIM, carried)), expected)
  tfrecord_path = str(tmp_path / "prev-00000-of-00001.tfrecord")
  with tf.io.TFRecordWriter(tfrecord_path) as w:
    for example in examples:
      w.write(example)
  assert_same_rows(list(previous_rows._read_tfrecords(tfrecord_path, DIM, carried)), expected)


def test_a_feature_of_the_wrong_kind_makes_a_previous_tfrecord_unreadable(tmp_path):
  example = tf.train.Example(features=tf.train.Features(feature={
      "id": tf.train.Feature(int64_list=tf.train.Int64List(value=[7])),
      "text_sha256": tf.train.Feature(bytes_list=tf.train.BytesList(value=[b"0" * 64]))}))
  path = str(tmp_path / "prev-00000-of-00001.tfrecord")
  with tf.io.TFRecordWriter(path) as w:
    w.write(example.SerializeToString())
  (out,) = list(previous_rows._read_tfrecords(path, DIM, ("id", "text_sha256")))
  assert out.tag == previous_rows.UNREADABLE and "id" in out.value[1]
