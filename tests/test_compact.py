"""Compact vectors (--output-dtype, --truncate-dim) through the real pipeline, Parquet and TFRecord, checked against
references computed here from a float32 run's vectors: numpy truncation and renormalisation, a float16 cast, a
brute-force per-dimension int8 calibration and quantization, np.packbits of the signs; and --previous with compact
vectors (carried with the same options, re-embedded with another dtype)."""
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.testing.test_pipeline import TestPipeline

from formats import columns as columns_lib
from formats.columns import OutputColumns
from formats.records import EmbeddingRecord, text_sha256
from formats.usage import UsageError
from pipeline.run import run
from transforms import incremental

SEQ = 32
DIM = 32  # the tiny model's hidden size
WORDS = ("the cat dog bird fish sat run walk jump play on mat hat house tree car hello world good bad big small red "
         "blue green quick brown fox lazy over under").split()


def _texts(n, seed):
  rng = np.random.default_rng(seed)
  return [" ".join(rng.choice(WORDS, size=int(rng.integers(3, 12)))) for _ in range(n)]


def _corpus(path, records):
  with open(path, "w", encoding="utf-8") as f:
    for record_id, text in records.items():
      f.write(json.dumps({"id": record_id, "text": text}) + "\n")
  return str(path)


def _run(model, corpus, output, *extra):
  argv = ["--model", model, "--input", corpus, "--input-format", "jsonl", "--output", output, "--seq-length",
          str(SEQ), "--pooling", "mean", "--normalize", "true", *extra]
  return run(argv, test_pipeline=TestPipeline(argv=argv))


def _read_parquet(outcome):
  table = pa.concat_tables([pq.read_table(f) for f in outcome.manifest["output_files"]])
  return table


def _read_tfrecord(outcome, dtype):
  """Rows read with TensorFlow's own parser: float_list for float32, decode_raw of one bytes value otherwise."""
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  out = {}
  for path in outcome.manifest["output_files"]:
    for raw in tf.data.TFRecordDataset(path):
      example = tf.train.Example.FromString(raw.numpy())
      feature = example.features.feature
      record_id = feature["id"].bytes_list.value[0].decode()
      if dtype == "float32":
        out[record_id] = np.array(feature["embedding"].float_list.value, dtype=np.float32)
      else:
        tf_dtype = {"float16": tf.float16, "int8": tf.int8, "binary": tf.uint8}[dtype]
        out[record_id] = tf.io.decode_raw(feature["embedding"].bytes_list.value[0], tf_dtype).numpy()
  return out


def _vectors(outcome, output_format, dtype):
  """{id: stored embedding} of a run's output."""
  if output_format == "tfrecord":
    return _read_tfrecord(outcome, dtype)
  table = _read_parquet(outcome)
  numpy_dtype = {"float32": np.float32, "float16": np.float16, "int8": np.int8, "binary": np.uint8}[dtype]
  column = table.column("embedding").combine_chunks()
  assert column.type.value_type == pa.from_numpy_dtype(numpy_dtype)
  return {i: np.asarray(v, dtype=numpy_dtype) for i, v in zip(table.column("id").to_pylist(), column.to_pylist())}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
  tmp = tmp_path_factory.mktemp("compact")
  records = {f"doc-{i:02d}": text for i, text in enumerate(_texts(30, 5))}
  return tmp, records, _corpus(tmp / "corpus.jsonl", records)


@pytest.fixture(scope="module")
def baseline(corpus, tiny_model_dir):
  """The float32 vectors of the corpus (no compact option), ids in sorted order."""
  tmp, _, path = corpus
  outcome = _run(tiny_model_dir, path, str(tmp / "base" / "emb"))
  vectors = _vectors(outcome, "parquet", "float32")
  ids = sorted(vectors)
  return ids, np.stack([vectors[i] for i in ids]).astype(np.float64)


def _reference_truncated(vectors, n):
  kept = vectors[:, :n]
  return kept / np.linalg.norm(kept, axis=1, keepdims=True)


def _brute_force_int8(vectors):
  """Per dimension: low/high = min/max over the rows; a value's code is the number of the 255 step boundaries
  low + k (high - low) / 255 (k = 1..255) at or below it, minus 128."""
  rows, dims = vectors.shape
  low, high = np.empty(dims), np.empty(dims)
  codes = np.empty((rows, dims), dtype=np.int64)
  for d in range(dims):
    column = [float(v) for v in vectors[:, d]]
    low[d], high[d] = min(column), max(column)
    step = (high[d] - low[d]) / 255
    for r, value in enumerate(column):
      codes[r, d] = sum(1 for k in range(1, 256) if low[d] + k * step <= value) - 128
  return low, high, codes


_COMPACT_CASES = [("parquet", "float32", 20), ("parquet", "float16", 20), ("parquet", "int8", 20),
                  ("parquet", "binary", 13), ("tfrecord", "float16", 20), ("tfrecord", "int8", 20),
                  ("tfrecord", "binary", 13)]


@pytest.mark.parametrize("output_format,dtype,truncate", _COMPACT_CASES)
def test_compact_vectors_match_references(corpus, baseline, tiny_model_dir, output_format, dtype, truncate):
  tmp, _, path = corpus
  ids, full = baseline
  extra = ["--output-dtype", dtype, "--format", output_format, "--truncate-dim", str(truncate)]
  against_previous = (output_format, dtype) == ("parquet", "float16")
  if against_previous:  # the float32 run as --previous: another fingerprint, everything encoded again
    extra += ["--previous", str(tmp / "base" / "emb")]
  outcome = _run(tiny_model_dir, path, str(tmp / f"{dtype}-{truncate}-{output_format}" / "emb"), *extra)
  if against_previous:
    incremental_section = outcome.manifest["incremental"]
    assert incremental_section["mode"] == "full"
    assert 'output_dtype "float32" -> "float16"' in incremental_section["reason"]
    assert "truncate_dim null -> 20" in incremental_section["reason"]
    assert _counter(outcome, "records_encoded") == len(ids)
    # the old float32 vectors against the new ones before compaction
    assert outcome.manifest["drift"]["mean_cosine"] > 0.999
  stored = _vectors(outcome, output_format, dtype)
  assert sorted(stored) == ids
  got = np.stack([stored[i] for i in ids])
  n = truncate
  reference = _reference_truncated(full, n)
  m = outcome.manifest
  assert m["options"]["output_dtype"] == dtype and m["options"]["truncate_dim"] == truncate
  assert m["incremental"]["fingerprint_inputs"]["options"]["output_dtype"] == dtype
  assert m["vectors"]["dimensions"] == n and m["vectors"]["dtype"] == dtype
  if dtype == "float32":
    assert got.dtype == np.float32 and got.shape == (len(ids), n)
    np.testing.assert_allclose(got, reference, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
  elif dtype == "float16":
    assert got.dtype == np.float16 and got.shape == (len(ids), n)
    np.testing.assert_allclose(got.astype(np.float64), reference.astype(np.float16).astype(np.float64),
                               atol=2e-3)
    assert m["vectors"]["stored_values"] == n
  elif dtype == "int8":
    low, high, codes = _brute_force_int8(reference)
    ranges = m["int8_ranges"]
    np.testing.assert_allclose(ranges["low"], low, atol=1e-5)
    np.testing.assert_allclose(ranges["high"], high, atol=1e-5)
    assert ranges["vectors"] == len(ids)
    assert got.dtype == np.int8 and got.shape == (len(ids), n)
    difference = np.abs(got.astype(np.int64) - codes)
    assert difference.max() <= 1  # a value within float rounding of a step boundary
    assert (difference == 0).mean() > 0.98
    assert got.min() == -128 and got.max() == 127  # each dimension's extremes reach the ends
  else:
    expected = np.packbits(reference > 0, axis=1)
    assert got.dtype == np.uint8 and got.shape == (len(ids), (n + 7) // 8)
    near_zero = np.packbits(np.abs(reference) < 1e-6, axis=1)
    np.testing.assert_array_equal(got & ~near_zero, expected & ~near_zero)
    assert not (got[:, -1] & 0b111).any()  # 13 dimensions: the last byte's 3 low bits are padding
    assert m["vectors"]["stored_values"] == (n + 7) // 8


def test_truncate_dim_beyond_the_model_and_with_no_embeddings_are_refused(corpus, tiny_model_dir):
  tmp, _, path = corpus
  with pytest.raises(UsageError, match="larger than the model's 32"):
    _run(tiny_model_dir, path, str(tmp / "big" / "emb"), "--truncate-dim", "33")
  with pytest.raises(UsageError, match="--no-embeddings"):
    _run(tiny_model_dir, path, str(tmp / "none" / "emb"), "--output-dtype", "int8", "--no-embeddings",
         "--mlm-scores")


def _counter(outcome, name):
  results = outcome.result.metrics().query(MetricsFilter().with_name(name))["counters"]
  return sum(r.committed if r.committed is not None else r.attempted for r in results)


def test_previous_with_int8_carries_rows_and_keeps_the_previous_ranges(corpus, tiny_model_dir):
  tmp, records, path = corpus
  output_format = "tfrecord"
  options = ["--output-dtype", "int8", "--truncate-dim", "24", "--format", output_format]
  first = _run(tiny_model_dir, path, str(tmp / f"prev-{output_format}" / "run1"), *options)
  second_records = dict(records)
  changed = ["doc-03", "doc-07"]
  for record_id, text in zip(changed, ["zebra quick fox under the lazy red car " * 3, "hello hello world"]):
    second_records[record_id] = text
  path2 = _corpus(tmp / f"corpus2-{output_format}.jsonl", second_records)
  second = _run(tiny_model_dir, path2, str(tmp / f"prev-{output_format}" / "run2"), *options,
                "--previous", str(tmp / f"prev-{output_format}" / "run1"))
  m = second.manifest
  assert m["incremental"]["mode"] == "incremental", m["incremental"]["reason"]
  assert _counter(second, "records_encoded") == len(changed)
  assert m["int8_ranges"]["low"] == first.manifest["int8_ranges"]["low"]
  assert m["int8_ranges"]["high"] == first.manifest["int8_ranges"]["high"]
  assert "previous output" in m["int8_ranges"]["calibrated_on"]
  before, after = _vectors(first, output_format, "int8"), _vectors(second, output_format, "int8")
  assert sorted(after) == sorted(records)
  for record_id in records:
    assert after[record_id].dtype == np.int8 and after[record_id].shape == (24,)
    if record_id not in changed:
      np.testing.assert_array_equal(after[record_id], before[record_id])
  # Another dtype: the fingerprint changed, every record is encoded again (and int8 ranges are not used).
  third = _run(tiny_model_dir, path2, str(tmp / f"prev-{output_format}" / "run3"), "--output-dtype", "binary",
               "--truncate-dim", "24", "--format", output_format,
               "--previous", str(tmp / f"prev-{output_format}" / "run2"))
  m3 = third.manifest
  assert m3["incremental"]["mode"] == "full"
  assert 'output_dtype "int8" -> "binary"' in m3["incremental"]["reason"]
  assert _counter(third, "records_encoded") == len(records)
  assert "int8_ranges" not in m3 and m3["drift"] is None
  assert all(v.dtype == np.uint8 and v.shape == (3,) for v in _vectors(third, output_format, "binary").values())


@pytest.mark.parametrize("output_format", ["parquet", "tfrecord"])
@pytest.mark.parametrize("dtype", ["float16", "int8", "binary"])
def test_compact_rows_round_trip_through_the_column_table(output_format, dtype):
  """Rows in a compact form are written and read back (as --previous reads them) unchanged; the row checks accept
  them and refuse a float vector where int8/binary is written and an int8 vector of the wrong length."""
  rng = np.random.default_rng(3)
  columns = OutputColumns(dtype=dtype, truncate_dim=12)
  length = 2 if dtype == "binary" else 12
  def unit():
    v = rng.standard_normal(length)
    return (v / np.linalg.norm(v)).astype(np.float16)

  values = {"float16": unit,
            "int8": lambda: rng.integers(-128, 128, length).astype(np.int8),
            "binary": lambda: rng.integers(0, 256, length).astype(np.uint8)}[dtype]
  rows = [EmbeddingRecord(f"r{i}", values(), 3, False, text_sha256(f"t{i}")) for i in range(5)]
  names = columns.carried()
  if output_format == "parquet":
    back = columns_lib.arrow_to_records(columns_lib.records_to_table(rows, columns, DIM), names, DIM, columns)
  else:
    back = columns_lib.examples_to_records(columns_lib.records_to_examples(rows, columns, DIM), names, DIM,
                                           columns=columns)
  for row, read in zip(rows, back):
    assert read.embedding.dtype == row.embedding.dtype
    np.testing.assert_array_equal(read.embedding, row.embedding)
    assert incremental.carried_row_problem(read, DIM, columns, unit_norm=True) is None
  if dtype != "float16":
    floats = rows[0]._replace(embedding=np.zeros(length, np.float32))
    assert "not the" in incremental.carried_row_problem(floats, DIM, columns, unit_norm=False)
    nan = rows[0]._replace(embedding=np.full(DIM, np.nan, np.float32))
    assert "non-finite" in incremental.carried_row_problem(nan, DIM, columns, unit_norm=False)
    short = rows[0]._replace(embedding=rows[0].embedding[:-1])
    assert "expected" in incremental.carried_row_problem(short, DIM, columns, unit_norm=False)
  else:  # a normalised float16 output's vectors must have length 1
    doubled = rows[0]._replace(embedding=rows[0].embedding * 2)
    assert "norm" in incremental.carried_row_problem(doubled, DIM, columns, unit_norm=True)
    huge = rows[0]._replace(embedding=np.full(12, 1e6, np.float32))
    assert "float16's range" in incremental.carried_row_problem(huge, DIM, columns, unit_norm=False)


def test_show_neighbours_reads_binary_vectors_as_signs(tmp_path):
  """--show-neighbours on a binary output compares sign vectors, not the packed bytes as numbers."""
  from cli.neighbours import load_parquet_output  # pylint: disable=import-outside-toplevel
  columns = OutputColumns(dtype="binary", truncate_dim=16)
  packed = [np.array([0b10000000, 0b00000001], np.uint8), np.array([0b01111111, 0b11111110], np.uint8)]
  rows = [EmbeddingRecord(f"r{i}", p, 3, False, text_sha256(f"t{i}")) for i, p in enumerate(packed)]
  path = str(tmp_path / "b-00000-of-00001.parquet")
  pq.write_table(columns_lib.records_to_table(rows, columns, DIM), path)
  _, _, vectors = load_parquet_output([path])
  first = [1.0] + [-1.0] * 14 + [1.0]
  assert vectors.tolist() == [first, [-v for v in first]]
