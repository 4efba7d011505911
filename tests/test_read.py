"""Reading inputs: every format's rules (called directly, fast) and a few DirectRunner pipelines."""
from __future__ import annotations

import bz2
import errno
import gzip
import io
import json
import lzma
import os
import random
import tempfile
import zlib

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from apache_beam.io.filesystem import CompressionTypes, FileMetadata
from apache_beam.io.localfilesystem import LocalFileSystem
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.testing import test_pipeline
from apache_beam.testing.util import assert_that, equal_to
from hypothesis import given, settings
from hypothesis import strategies as st

from formats.fields import FileStats, ReadOptions, cut_utf8
from formats.inputs import read_file
from formats.read_errors import InputReadError
from transforms.read import INPUT_FORMATS, InputError, ReadTexts, match_inputs
from formats.records import DeadLetter, TextRecord


# --- Helpers ------------------------------------------------------------------------------------

def write(directory, name: str, data, compress: bool = True) -> str:
  """Writes bytes (or UTF-8 text) to directory/name, compressed by its extension unless told not to."""
  path = os.path.join(str(directory), name)
  if isinstance(data, str):
    data = data.encode("utf-8")
  compressor = {".gz": gzip.compress, ".bz2": bz2.compress, ".xz": lzma.compress, ".deflate": zlib.compress,
              ".zst": _zstd_compress}.get(os.path.splitext(name)[1])
  with open(path, "wb") as f:
    f.write(compressor(data) if compress and compressor else data)
  return path


def _zstd_compress(data: bytes) -> bytes:
  import zstandard  # pylint: disable=import-outside-toplevel
  return zstandard.ZstdCompressor().compress(data)


def read(path: str, input_format: str = "text", **options):
  """read_file() collected: (records, dead letters, stats)."""
  stats = FileStats()
  items = list(read_file(path, ReadOptions(input_format, **options), stats))
  records = [i for i in items if isinstance(i, TextRecord)]
  dead = [i for i in items if isinstance(i, DeadLetter)]
  assert len(records) + len(dead) == len(items)
  return records, dead, stats


def pairs(records) -> list:
  return [(r.id, r.text) for r in records]


def dead_pairs(dead) -> list:
  return [(d.id, d.stage) for d in dead]


def tf_example(**features) -> bytes:
  """A serialized tf.Example: str/bytes -> bytes_list, int -> int64_list, float -> float_list, list -> as is."""
  from tensorflow.core.example import example_pb2  # pylint: disable=import-outside-toplevel
  example = example_pb2.Example()
  for name, value in features.items():
    values = value if isinstance(value, list) else [value]
    feature = example.features.feature[name]
    for v in values:
      if isinstance(v, str):
        v = v.encode("utf-8")
      if isinstance(v, bytes):
        feature.bytes_list.value.append(v)
      elif isinstance(v, int):
        feature.int64_list.value.append(v)
      else:
        feature.float_list.value.append(v)
  return example.SerializeToString()


def tfrecord_bytes(payloads) -> bytes:
  """TFRecord frames as TensorFlow's own writer makes them (an implementation independent of the reader's)."""
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  with tempfile.TemporaryDirectory() as directory:
    path = os.path.join(directory, "records.tfrecord")
    with tf.io.TFRecordWriter(path) as writer:
      for payload in payloads:
        writer.write(payload)
    with open(path, "rb") as f:
      return f.read()


# --- text ---------------------------------------------------------------------------------------

def test_text_one_record_per_line_ids_and_blank_lines(tmp_path):
  path = write(tmp_path, "a.txt", "first line\r\n\n   \t\nsecond\rstill second\n\nlast without newline")
  records, dead, stats = read(path)
  assert pairs(records) == [(f"{path}:1", "first line"), (f"{path}:4", "second"), (f"{path}:5", "still second"),
                            (f"{path}:7", "last without newline")]
  assert [r.position for r in records] == [1, 4, 5, 7]
  assert {r.source for r in records} == {path}
  assert not any(r.truncated for r in records) and all(r.text_pair is None for r in records)
  assert dead == [] and stats.blank_lines == 3 and not stats.failed


def test_text_gz_and_other_compressions_read_like_plain_text(tmp_path):
  content = "\ufeffalpha\nbeta\n\ngamma\n"
  for name in ("c.txt.gz", "c.txt.bz2", "c.txt.xz", "c.txt.zst", "c.txt.deflate"):
    path = write(tmp_path, name, content)
    records, dead, stats = read(path)
    assert pairs(records) == [(f"{path}:1", "alpha"), (f"{path}:2", "beta"), (f"{path}:4", "gamma")], name
    assert dead == [] and stats.blank_lines == 1 and not stats.failed


def test_text_invalid_utf8_and_nul_lines_are_dead_letters_and_the_file_goes_on(tmp_path):
  path = write(tmp_path, "bad.txt", b"ok\nab\xc3(x\nnul\x00here\nstill ok\n")
  records, dead, stats = read(path)
  assert pairs(records) == [(f"{path}:1", "ok"), (f"{path}:4", "still ok")]
  assert dead_pairs(dead) == [(f"{path}:2", "decode"), (f"{path}:3", "decode")]
  assert "invalid UTF-8 at byte offset 2" in dead[0].reason
  assert dead[0].snippet == "ab\ufffd(x" and dead[0].source == path
  assert dead[1].reason == "NUL byte"
  assert not stats.failed


def test_text_a_50_mb_line_is_one_record(tmp_path):
  line = "é" * (25 << 20)  # 50 MiB of UTF-8
  path = write(tmp_path, "big.txt", "short\n" + line + "\n")
  records, _, _ = read(path, max_text_bytes=11)
  assert [(r.text, r.truncated) for r in records] == [("short", False), ("é" * 5, True)]
  records, _, _ = read(path)
  assert len(records[1].text) == len(line)


def test_truncated_gz_keeps_the_records_before_the_damage(tmp_path):
  lines = [f"line number {i} " + "x" * (i % 50) for i in range(1, 2001)]
  data = gzip.compress(("\n".join(lines) + "\n").encode(), compresslevel=1)
  path = write(tmp_path, "cut.txt.gz", data[:len(data) // 2], compress=False)
  records, dead, stats = read(path)
  assert 0 < len(records) < len(lines)
  assert pairs(records) == [(f"{path}:{i}", lines[i - 1]) for i in range(1, len(records) + 1)]
  assert dead_pairs(dead) == [(f"{path}:{len(records) + 1}", "read")]
  assert "EOFError" in dead[0].reason
  assert stats.failed


def _complete_lines_recoverable(name: str, damaged: bytes) -> int:
  """The complete lines a streaming decompressor gets out of a damaged file before the damage."""
  extension = os.path.splitext(name)[1]
  if extension == ".zst":
    import zstandard  # pylint: disable=import-outside-toplevel
    decompressor = zstandard.ZstdDecompressor().decompressobj()
  else:
    decompressor = {".bz2": bz2.BZ2Decompressor, ".xz": lzma.LZMADecompressor, ".deflate": zlib.decompressobj}[
        extension]()
  return decompressor.decompress(damaged).count(b"\n")


@pytest.mark.parametrize("name", ["cut.txt.bz2", "cut.txt.xz", "cut.txt.zst", "cut.txt.deflate"])
def test_truncated_compressed_files_are_reported(tmp_path, name):
  full = write(tmp_path, "full" + name, "".join(f"line {i}\n" for i in range(5000)))
  with open(full, "rb") as f:
    data = f.read()
  path = os.path.join(str(tmp_path), name)
  with open(path, "wb") as f:
    f.write(data[:-10])
  records, dead, stats = read(path)
  # Every complete line before the damage is kept (xz loses only its check: all 5000; zst's one block: none).
  assert len(records) == _complete_lines_recoverable(name, data[:-10])
  assert [d.stage for d in dead] == ["read"] and stats.failed
  assert pairs(records) == [(f"{path}:{i + 1}", f"line {i}") for i in range(len(records))]


def test_unreadable_file_is_one_read_dead_letter_named_by_path(tmp_path):
  path = os.path.join(str(tmp_path), "missing.txt")
  records, dead, stats = read(path)
  assert records == [] and dead_pairs(dead) == [(path, "read")] and stats.failed
  assert dead[0].source == path and "FileNotFoundError" in dead[0].reason


def test_broken_gz_header_is_one_read_dead_letter_named_by_path(tmp_path):
  path = write(tmp_path, "junk.txt.gz", b"this is not gzip at all\n", compress=False)
  records, dead, stats = read(path)
  assert records == [] and dead_pairs(dead) == [(path, "read")] and stats.failed


# --- max_text_bytes -----------------------------------------------------------------------------

def test_cut_utf8_cuts_on_a_character_boundary():
  text = "aé€😀b"  # 1 + 2 + 3 + 4 + 1 bytes
  assert cut_utf8(text, None) == (text, False)
  assert cut_utf8(text, 11) == (text, False)
  assert cut_utf8(text, 100) == (text, False)
  assert cut_utf8(text, 10) == ("aé€😀", True)
  assert cut_utf8(text, 9) == ("aé€", True)
  assert cut_utf8(text, 4) == ("aé", True)
  assert cut_utf8(text, 2) == ("a", True)
  assert cut_utf8(text, 1) == ("a", True)


def test_max_text_bytes_cuts_text_and_pair_and_marks_truncated(tmp_path):
  path = write(tmp_path, "p.jsonl", "\n".join([
      json.dumps({"id": 1, "text": "ab€", "pair": "x"}),
      json.dumps({"id": 2, "text": "ok", "pair": "€€"}),
      json.dumps({"id": 3, "text": "abc", "pair": "xy"}),
  ]))
  records, _, _ = read(path, "jsonl", text_pair_field="pair", max_text_bytes=4)
  assert [(r.id, r.text, r.text_pair, r.truncated) for r in records] == [
      ("1", "ab", "x", True), ("2", "ok", "€", True), ("3", "abc", "xy", False)]


# --- jsonl --------------------------------------------------------------------------------------

def test_jsonl_ids_texts_and_every_kind_of_bad_line(tmp_path):
  lines = [
      {"id": "a", "text": "string id"},
      {"id": 7, "text": "integer id"},
      {"id": True, "text": "bool id"},
      {"id": 1.5, "text": "float id"},
      {"id": None, "text": "null id"},
      {"text": "missing id"},
      {"id": "b"},
      {"id": "c", "text": 12},
      {"id": "d", "text": None},
      {"id": "e", "text": " \t "},
      "{not json",
      "[1, 2]",
      "",
      "   ",
      {"id": "", "text": "empty id"},
      {"id": "f", "text": "bad \ud800 surrogate"},
      {"id": "g", "text": "fine", "other": [1, {"x": None}]},
  ]
  text = "\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines) + "\n"
  path = write(tmp_path, "d.jsonl", text.encode("utf-8", "surrogatepass"))
  records, dead, stats = read(path, "jsonl")
  assert pairs(records) == [("a", "string id"), ("7", "integer id"), ("g", "fine")]
  assert [r.position for r in records] == [1, 2, 17]
  assert dead_pairs(dead) == [
      (f"{path}:3", "parse"), (f"{path}:4", "parse"), (f"{path}:5", "parse"), (f"{path}:6", "parse"),
      ("b", "parse"), ("c", "parse"), ("d", "parse"), ("e", "parse"),
      (f"{path}:11", "parse"), (f"{path}:12", "parse"), (f"{path}:15", "parse"), ("f", "decode")]
  reasons = {d.id: d.reason for d in dead}
  assert reasons["e"] == "empty text"
  assert "malformed JSON" in reasons[f"{path}:11"]
  assert "must be a string" in reasons["c"] and "missing" in reasons["b"]
  assert stats.blank_lines == 2 and not stats.failed


def test_jsonl_pair_field_and_custom_field_names(tmp_path):
  path = write(tmp_path, "q.jsonl.gz", "\n".join(json.dumps(o) for o in [
      {"key": 1, "body": "question", "answer": "reply"},
      {"key": 2, "body": "no pair"},
      {"key": 3, "body": "null pair", "answer": None},
      {"key": 4, "body": "empty pair", "answer": " "},
  ]))
  records, dead, _ = read(path, "jsonl", id_field="key", text_field="body", text_pair_field="answer")
  assert [(r.id, r.text, r.text_pair) for r in records] == [("1", "question", "reply")]
  assert dead_pairs(dead) == [("2", "parse"), ("3", "parse"), ("4", "parse")]


def test_jsonl_invalid_utf8_and_nul_lines(tmp_path):
  path = write(tmp_path, "u.jsonl", b'{"id": 1, "text": "a\xff"}\n{"id": 2, "text": "a\x00"}\n'
                                    b'{"id": 3, "text": "escaped \\u0000 nul"}\n{"id": 4, "text": "ok"}\n')
  records, dead, _ = read(path, "jsonl")
  assert pairs(records) == [("4", "ok")]
  assert dead_pairs(dead) == [(f"{path}:1", "decode"), (f"{path}:2", "decode"), ("3", "decode")]


# --- csv ----------------------------------------------------------------------------------------

def test_csv_quoted_commas_newlines_and_a_bad_row(tmp_path):
  path = write(tmp_path, "t.csv", (
      'id,text,label\r\n'
      '1,"hello, world",a\r\n'
      '007,"multi\nline ""quoted""",b\r\n'
      '3,too,many,fields\r\n'
      '\r\n'
      '4,plain,c\r\n'
      '5,,d\r\n'
      '6,"unterminated,e\r\n'))
  records, dead, stats = read(path, "csv")
  assert pairs(records) == [("1", "hello, world"), ("007", 'multi\nline "quoted"'), ("4", "plain")]
  assert [r.position for r in records] == [2, 3, 7]
  assert dead_pairs(dead) == [(f"{path}:5", "parse"), ("5", "parse"), (f"{path}:9", "parse")]
  assert "expected 3 fields, got 4" in dead[0].reason
  assert stats.blank_lines == 1 and not stats.failed


def test_csv_invalid_utf8_field_huge_field_missing_column_and_pair(tmp_path):
  huge = "w" * 300_000  # over the csv module's default field limit
  path = write(tmp_path, "h.csv", b"\xef\xbb\xbfid,text,pair\n1,ok,p\n2,bad \xff byte,p\n3," +
               huge.encode() + b",p\n4,no pair,\n")
  records, dead, _ = read(path, "csv", text_pair_field="pair")
  assert [(r.id, len(r.text), r.text_pair) for r in records] == [("1", 2, "p"), ("3", len(huge), "p")]
  assert dead_pairs(dead) == [("2", "decode"), ("4", "parse")]
  assert "invalid UTF-8 at byte offset 4" in dead[0].reason
  _, dead, _ = read(path, "csv", text_field="body")
  assert [d.reason for d in dead] == ["missing text field 'body'"] * 4


# --- parquet ------------------------------------------------------------------------------------

def test_parquet_rows_with_integer_ids_and_bad_rows(tmp_path):
  path = os.path.join(str(tmp_path), "p.parquet")
  table = pa.table({"id": pa.array([10, None, 12, 13, 14], pa.int64()),
                    "text": ["ten", "no id", None, "thirteen", " "],
                    "extra": [1.0, 2.0, 3.0, 4.0, 5.0]})
  pq.write_table(table, path, row_group_size=2)
  records, dead, stats = read(path, "parquet")
  assert pairs(records) == [("10", "ten"), ("13", "thirteen")]
  assert [r.position for r in records] == [0, 3]
  assert dead_pairs(dead) == [(f"{path}:1", "parse"), ("12", "parse"), ("14", "parse")]
  assert not stats.failed


def test_parquet_binary_text_string_ids_and_pair(tmp_path):
  path = os.path.join(str(tmp_path), "b.parquet")
  pq.write_table(pa.table({"doc": ["a", "b"], "body": pa.array([b"caf\xc3\xa9", b"\xff"], pa.binary()),
                           "pair": ["x", "y"]}), path)
  records, dead, _ = read(path, "parquet", id_field="doc", text_field="body", text_pair_field="pair")
  assert [(r.id, r.text, r.text_pair) for r in records] == [("a", "café", "x")]
  assert dead_pairs(dead) == [("b", "decode")]


def test_corrupt_parquet_is_one_read_dead_letter(tmp_path):
  path = write(tmp_path, "bad.parquet", b"PAR1" + os.urandom(200) + b"garbage")
  records, dead, stats = read(path, "parquet")
  assert records == [] and dead_pairs(dead) == [(path, "read")] and stats.failed


# --- tfrecord -----------------------------------------------------------------------------------

def test_tfrecord_examples(tmp_path):
  payloads = [
      tf_example(id=1, text="int id"),
      tf_example(id="s", text=b"bytes id"),
      tf_example(id=2.5, text="float id"),
      tf_example(id=3, text=b"bad \xff"),
      tf_example(id=4),
      tf_example(id=5, text=["two", "values"]),
      b"\xff\xff not a proto",
      tf_example(id=6, text="last", pair="second"),
  ]
  path = write(tmp_path, "e.tfrecord.gz", tfrecord_bytes(payloads))
  records, dead, stats = read(path, "tfrecord")
  assert pairs(records) == [("1", "int id"), ("s", "bytes id"), ("6", "last")]
  assert [r.position for r in records] == [0, 1, 7]
  assert dead_pairs(dead) == [(f"{path}:2", "parse"), ("3", "decode"), ("4", "parse"), ("5", "parse"),
                              (f"{path}:6", "parse")]
  assert not stats.failed
  records, dead, _ = read(path, "tfrecord", text_pair_field="pair")
  assert [(r.id, r.text_pair) for r in records] == [("6", "second")]


def test_truncated_and_corrupt_tfrecords(tmp_path):
  data = tfrecord_bytes([tf_example(id=i, text=f"t{i}") for i in range(3)])
  path = write(tmp_path, "cut.tfrecord", data[:-5])
  records, dead, stats = read(path, "tfrecord")
  assert pairs(records) == [("0", "t0"), ("1", "t1")]
  assert dead_pairs(dead) == [(f"{path}:2", "read")] and stats.failed
  corrupt = bytearray(data)
  corrupt[20] ^= 0xFF  # inside the first payload: its checksum no longer matches, its frame is intact
  path = write(tmp_path, "crc.tfrecord", bytes(corrupt))
  records, dead, stats = read(path, "tfrecord")
  assert pairs(records) == [("1", "t1"), ("2", "t2")]
  assert dead_pairs(dead) == [(f"{path}:0", "read")] and "payload checksum" in dead[0].reason
  assert not stats.failed


# --- damaged inputs: every line, row or record ends in a record or a dead letter ----------------

@pytest.mark.parametrize("name", ["mac.txt", "mac.txt.gz"])
def test_text_a_lone_cr_ends_a_line_and_crlf_is_one_line_end(tmp_path, name):
  path = write(tmp_path, name, "a\rb\rc\r")
  records, dead, stats = read(path)
  assert pairs(records) == [(f"{path}:1", "a"), (f"{path}:2", "b"), (f"{path}:3", "c")]
  assert dead == [] and stats.blank_lines == 0
  path = write(tmp_path, "mixed-" + name, b"\xef\xbb\xbfone\r\ntwo\r\rthree\n\r\nbad \xff\rfour")
  records, dead, stats = read(path)
  assert pairs(records) == [(f"{path}:1", "one"), (f"{path}:2", "two"), (f"{path}:4", "three"),
                            (f"{path}:7", "four")]
  assert dead_pairs(dead) == [(f"{path}:6", "decode")]
  assert stats.blank_lines == 2 and not stats.failed


def test_text_line_ends_split_across_read_chunks(tmp_path, monkeypatch):
  import formats.lines as line_formats  # pylint: disable=import-outside-toplevel
  data = b"ab\r\ncd\r\r\nef\n\n\rgh\r" + b"x" * 40 + b"\r\n\r\nlast"
  expected = [line.decode() for line in data.splitlines()]  # bytes split at \n, \r\n and \r only
  path = write(tmp_path, "chunks.txt", data)
  for size in (1, 2, 3, 5, 7):
    monkeypatch.setattr(line_formats, "_READ_CHUNK_BYTES", size)
    records, _, stats = read(path)
    assert [(r.position, r.text) for r in records] == [(i, t) for i, t in enumerate(expected, 1) if t], size
    assert stats.blank_lines == expected.count("")


@pytest.mark.parametrize("name", ["q.csv", "q.csv.gz"])
def test_csv_an_unterminated_quote_costs_one_row_not_the_rest_of_the_file(tmp_path, name):
  path = write(tmp_path, name, 'id,text\nu0,before\nu1,"unterminated quote\nu2,second\nu3,third\n')
  records, dead, stats = read(path, "csv")
  assert [(r.id, r.text, r.position) for r in records] == [
      ("u0", "before", 2), ("u2", "second", 4), ("u3", "third", 5)]
  assert dead_pairs(dead) == [(f"{path}:3", "parse")]
  assert "never closed" in dead[0].reason and "lines 4-5 are read again" in dead[0].reason
  assert dead[0].snippet.startswith('u1,"unterminated')
  assert not stats.failed


def test_csv_a_stray_quote_pairing_with_a_later_one_does_not_swallow_the_rows_between(tmp_path):
  path = write(tmp_path, "s.csv", 'id,text\r\nu1,"opens\r\nu2,two\r\nu3,"closes" late\r\nu4,four\r\nu5,"x"y\r\n')
  records, dead, _ = read(path, "csv")
  assert pairs(records) == [("u2", "two"), ("u4", "four")]
  assert dead_pairs(dead) == [(f"{path}:2", "parse"), (f"{path}:4", "parse"), (f"{path}:6", "parse")]
  assert "on line 4; lines 3-4 are read again" in dead[0].reason
  assert dead[1].reason == dead[2].reason == "malformed CSV: ',' expected after '\"'"


def test_csv_a_quoted_field_never_grows_past_max_text_bytes(tmp_path):
  rows = "".join(f"r{i},row number {i}\n" for i in range(200))  # ~3.4 kB after the open quote
  path = write(tmp_path, "runaway.csv.gz", 'id,text\nok,"fine\nacross lines"\nbad,"never closed\n' + rows)
  records, dead, stats = read(path, "csv", max_text_bytes=100)
  assert pairs(records) == [("ok", "fine\nacross lines")] + [(f"r{i}", f"row number {i}") for i in range(200)]
  assert [r.position for r in records] == [2] + list(range(5, 205))
  assert dead_pairs(dead) == [(f"{path}:4", "parse")]
  reason = dead[0].reason
  assert "still inside a quoted field" in reason and "100-byte text limit" in reason and "never" not in reason
  rows_read = int(reason.split(" lines and ")[0].rsplit(" ", 1)[1])
  assert 1 < rows_read < 10  # stopped near the limit, not at the end of the file
  assert reason.endswith(f"lines 5-{3 + rows_read} are read again as rows")
  assert not stats.failed


def test_csv_a_closed_quoted_field_longer_than_max_text_bytes_is_cut_not_dead_lettered(tmp_path):
  path = write(tmp_path, "long.csv", 'id,text\nlong,"' + "w" * 500 + ', on one line"\nnext,x\n')
  records, dead, _ = read(path, "csv", max_text_bytes=100)
  assert [(r.id, r.text, r.truncated) for r in records] == [("long", "w" * 100, True), ("next", "x", False)]
  assert dead == []


def _frame_offsets(payloads) -> list:
  offsets, offset = [], 0
  for payload in payloads:
    offsets.append(offset)
    offset += 12 + len(payload) + 4
  return offsets + [offset]


@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_tfrecord_a_damaged_payload_is_dead_lettered_and_the_records_after_it_are_read(tmp_path, suffix):
  payloads = [tf_example(id=i, text=f"text {i}") for i in range(5)]
  data = bytearray(tfrecord_bytes(payloads))
  offsets = _frame_offsets(payloads)
  data[offsets[1] + 12 + 3] ^= 0x01  # a payload byte of record 1
  data[offsets[3 + 1] - 1] ^= 0x80  # record 3's payload checksum
  path = write(tmp_path, "d.tfrecord" + suffix, bytes(data))
  records, dead, stats = read(path, "tfrecord")
  assert pairs(records) == [("0", "text 0"), ("2", "text 2"), ("4", "text 4")]
  assert [r.position for r in records] == [0, 2, 4]
  assert dead_pairs(dead) == [(f"{path}:1", "read"), (f"{path}:3", "read")]
  assert f"payload checksum mismatch in the record at byte {offsets[1]}" in dead[0].reason
  assert f"at byte {offsets[3]}" in dead[1].reason
  assert not stats.failed


@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_tfrecord_a_broken_frame_ends_the_file_saying_how_many_bytes_were_skipped(tmp_path, suffix):
  payloads = [tf_example(id=i, text=f"text {i}") for i in range(4)]
  good = tfrecord_bytes(payloads)
  offsets = _frame_offsets(payloads)
  bad_length = bytearray(good)
  bad_length[offsets[2]] ^= 0x01  # record 2's length no longer matches its checksum
  cases = {
      "length": (bytes(bad_length), 2, f"length checksum mismatch at byte {offsets[2]}",
                 f"skipped the rest of the file: 12 + {len(good) - offsets[2] - 12} bytes"),
      "payload": (good[:offsets[3] + 12 + 7], 3, f"ends inside the record at byte {offsets[3]}",
                  "skipped its last 19 bytes"),
      "header": (good[:offsets[3] + 5], 3, f"ends inside a record's header at byte {offsets[3]}",
                 "skipped its last 5 bytes"),
      "first": (bytes([good[0] ^ 1]) + good[1:], 0, "length checksum mismatch at byte 0",
                f"skipped the rest of the file: 12 + {len(good) - 12} bytes"),
  }
  for name, (data, kept, where, skipped) in cases.items():
    path = write(tmp_path, f"{name}.tfrecord{suffix}", data)
    records, dead, stats = read(path, "tfrecord")
    assert pairs(records) == [(str(i), f"text {i}") for i in range(kept)], name
    assert dead_pairs(dead) == [(f"{path}:{kept}" if kept else path, "read")], name
    assert where in dead[0].reason and skipped in dead[0].reason, (name, dead[0].reason)
    assert stats.failed


def test_a_file_named_with_glob_characters_is_read_once_as_itself(tmp_path):
  bracket = write(tmp_path, "br[1].txt", "from the bracket file\n")
  plain = write(tmp_path, "br1.txt", "from br1\n")
  found = match_inputs([os.path.join(str(tmp_path), "br*.txt")])
  assert found == sorted([bracket, plain])
  assert match_inputs(found) == found  # matched paths are paths: not matched again as patterns
  os.remove(plain)
  assert match_inputs([bracket]) == [bracket]  # a name that matches nothing as a glob but is a file
  write(tmp_path, "br1.txt", "from br1\n")
  with test_pipeline.TestPipeline() as p:
    result = p | ReadTexts(found)  # as the job does with the paths it matched
    assert_that(result.records | beam.Map(lambda r: (r.id, r.text)),
                equal_to([(f"{bracket}:1", "from the bracket file"), (f"{plain}:1", "from br1")]))


def test_a_directory_as_input_is_a_clear_error(tmp_path):
  directory = os.path.join(str(tmp_path), "corpus")
  os.mkdir(directory)
  inside = write(directory, "a.txt", "x\n")
  message = r"^input '.*corpus' is a directory, not a file or a glob; use e\.g\. '.*corpus/\*'$"
  with pytest.raises(InputError, match=message):
    match_inputs([directory])
  assert match_inputs([directory + os.sep]) == [inside]  # Beam reads `dir/` as `dir/*`


# --- matching and options -----------------------------------------------------------------------

def test_match_inputs_expands_sorts_and_deduplicates(tmp_path):
  paths = [write(tmp_path, name, "x\n") for name in ("b.txt", "a.txt", "c.txt.gz", "notes.md")]
  os.mkdir(os.path.join(str(tmp_path), "sub.txt"))
  found = match_inputs([os.path.join(str(tmp_path), "*.txt*"), paths[1]])
  assert found == sorted(paths[:3])


def test_match_inputs_raises_input_error_naming_the_empty_pattern(tmp_path):
  write(tmp_path, "a.txt", "x\n")
  missing = os.path.join(str(tmp_path), "nothing-*.jsonl")
  with pytest.raises(InputError, match="nothing-"):
    match_inputs([os.path.join(str(tmp_path), "*.txt"), missing])
  with pytest.raises(InputError):
    match_inputs([])


def test_read_texts_rejects_bad_options():
  assert INPUT_FORMATS == ("text", "jsonl", "csv", "parquet", "tfrecord")
  for kwargs in ({"input_format": "xml"}, {"max_text_bytes": 0}, {"text_field": ""}):
    with pytest.raises(InputError):
      ReadTexts(["x"], **kwargs)


# --- property -----------------------------------------------------------------------------------

_LINE_CHARS = st.characters(blacklist_categories=("Cs",), blacklist_characters="\n\ufeff")
_TEXT_LINE_CHARS = st.characters(blacklist_categories=("Cs",), blacklist_characters="\n\r\ufeff")
_LINES = st.lists(st.tuples(st.text(_TEXT_LINE_CHARS, max_size=12), st.sampled_from(["\n", "\r\n", "\r"])),
                  min_size=0, max_size=15)


def _is_blank(line: str) -> bool:
  return not line.strip()


@settings(max_examples=25, deadline=None)
@given(ended_lines=_LINES, last_ended=st.booleans())
def test_property_text_every_non_blank_line_is_a_record_or_a_dead_letter(ended_lines, last_ended):
  content = "".join(line + end for line, end in ended_lines)
  if ended_lines and not last_ended:
    content = content[:-len(ended_lines[-1][1])]  # a last line without its end is still a line
  lines = content.encode("utf-8").splitlines()  # bytes split at \n, \r\n and \r only: universal newlines
  lines = [line.decode("utf-8") for line in lines]
  with tempfile.TemporaryDirectory() as directory:
    path = write(directory, "r.txt", content)
    records, dead, stats = read(path)
  non_blank = [i for i, line in enumerate(lines, 1) if not _is_blank(line)]
  assert len(records) + len(dead) == len(non_blank)
  assert sorted(r.position for r in records) == [r.position for r in records]
  ids = [r.id for r in records] + [d.id for d in dead]
  assert len(set(ids)) == len(ids) and sorted(ids) == sorted(f"{path}:{i}" for i in non_blank)
  for r in records:
    assert r.text == lines[r.position - 1]
  assert stats.blank_lines == len(lines) - len(non_blank) and not stats.failed


@settings(max_examples=25, deadline=None)
@given(lines=st.lists(st.one_of(st.text(_LINE_CHARS, max_size=12),
                                st.tuples(st.text(_LINE_CHARS, max_size=12), st.booleans())),
                      max_size=15))
def test_property_jsonl_every_non_blank_line_is_a_record_or_a_dead_letter(lines):
  rendered = []
  for i, line in enumerate(lines):
    if isinstance(line, tuple):  # a JSON object; integer or string id, escaped or raw unicode
      text, ascii_only = line
      line = json.dumps({"id": i if ascii_only else f"r{i}", "text": text}, ensure_ascii=ascii_only)
    rendered.append(line)
  with tempfile.TemporaryDirectory() as directory:
    path = write(directory, "r.jsonl", "".join(line + "\n" for line in rendered))
    records, dead, stats = read(path, "jsonl")
  blank = sum(1 for line in rendered if _is_blank(line))
  assert len(records) + len(dead) == len(rendered) - blank == len(rendered) - stats.blank_lines
  ids = [r.id for r in records] + [d.id for d in dead]
  assert len(set(ids)) == len(ids)


# --- pipelines ----------------------------------------------------------------------------------

def _counter(result, name: str) -> int:
  counters = result.metrics().query(MetricsFilter().with_namespace("bert_embed").with_name(name))["counters"]
  return sum(c.committed for c in counters)


def test_pipeline_reads_a_glob_of_text_files(tmp_path):
  a = write(tmp_path, "part-0.txt", "one\n\ntwo\n")
  b = write(tmp_path, "part-1.txt.gz", "three\n \nbad \xff\n".encode("latin-1"))
  data = gzip.compress(b"".join(b"line %d\n" % i for i in range(3000)), compresslevel=1)
  c = write(tmp_path, "part-2.txt.gz", data[:len(data) // 2], compress=False)
  expected_c = read(c)[0]
  p = test_pipeline.TestPipeline()
  result = p | "Read" >> ReadTexts([os.path.join(str(tmp_path), "part-*")])
  assert_that(result.records | beam.Map(lambda r: (r.id, r.text)),
              equal_to([(f"{a}:1", "one"), (f"{a}:3", "two"), (f"{b}:1", "three")] + pairs(expected_c)))
  assert_that(result.dead_letters | beam.Map(lambda d: (d.id, d.stage)),
              equal_to([(f"{b}:3", "decode"), (f"{c}:{len(expected_c) + 1}", "read")]), label="CheckDead")
  assert_that(result.blank_lines, equal_to([1, 1, 0]), label="CheckBlank")
  assert_that(result.files_failed, equal_to([c]), label="CheckFailed")
  outcome = p.run()
  outcome.wait_until_finish()
  assert _counter(outcome, "records_read") == 3 + len(expected_c)
  assert _counter(outcome, "blank_lines") == 2
  assert _counter(outcome, "files_failed") == 1
  assert _counter(outcome, "records_dead_lettered_read") == 2


def test_pipeline_reads_jsonl_and_csv_and_reports_a_corrupt_parquet(tmp_path):
  j = write(tmp_path, "in-0.jsonl.gz", '{"id": 1, "text": "uno"}\n\n{"id": 2}\n')
  write(tmp_path, "in-1.csv.gz", 'id,text\n3,"tres, three"\n')
  bad = write(tmp_path, "broken.parquet", b"not parquet")
  with test_pipeline.TestPipeline() as p:
    jsonl = p | "Jsonl" >> ReadTexts([j], input_format="jsonl")
    rows = p | "Csv" >> ReadTexts([os.path.join(str(tmp_path), "*.csv*")], input_format="csv")
    parquet = p | "Parquet" >> ReadTexts([bad], input_format="parquet")
    records = (jsonl.records, rows.records, parquet.records) | beam.Flatten()
    dead = (jsonl.dead_letters, rows.dead_letters, parquet.dead_letters) | "FlattenDead" >> beam.Flatten()
    assert_that(records | beam.Map(lambda r: (r.id, r.text)), equal_to([("1", "uno"), ("3", "tres, three")]))
    assert_that(dead | beam.Map(lambda d: (d.id, d.stage)), equal_to([("2", "parse"), (bad, "read")]),
                label="CheckDead")
    assert_that(jsonl.blank_lines, equal_to([1]), label="CheckBlank")
    assert_that(parquet.files_failed, equal_to([bad]), label="CheckFailed")


def test_read_texts_fails_before_the_job_when_a_pattern_matches_nothing(tmp_path):
  p = test_pipeline.TestPipeline()
  with pytest.raises(InputError, match="nope"):
    _ = p | ReadTexts([os.path.join(str(tmp_path), "nope*.txt")])


# --- I/O errors are raised (the runner retries the file), damage is dead-lettered ----------------

class FlakyFileSystem(LocalFileSystem):
  """`flaky://<local path>`: a local file whose first read at or past half its size raises an OSError, as a
  network read may after its client's own retries. Whether it has failed is kept in `<path>.failed`, so that a
  retry (by the runner, or by the test) reads the file whole."""

  @classmethod
  def scheme(cls):
    return "flaky"

  @staticmethod
  def local(path: str) -> str:
    return path[len("flaky://"):] if path.startswith("flaky://") else path

  def exists(self, path):
    return super().exists(self.local(path))

  def size(self, path):
    return super().size(self.local(path))

  def metadata(self, path):
    return FileMetadata(path, self.size(path), os.path.getmtime(self.local(path)))

  def open(self, path, mime_type="application/octet-stream", compression_type=CompressionTypes.AUTO):
    local = self.local(path)
    return _FlakyStream(open(local, "rb"), os.path.getsize(local), local + ".failed")


class _FlakyStream(io.RawIOBase):
  def __init__(self, file, size: int, marker: str):
    super().__init__()
    self._file, self._half, self._marker = file, size // 2, marker

  def readable(self):
    return True

  def seekable(self):
    return True

  def seek(self, offset, whence=io.SEEK_SET):
    return self._file.seek(offset, whence)

  def tell(self):
    return self._file.tell()

  def readinto(self, buffer):
    if self._file.tell() >= self._half and not os.path.exists(self._marker):
      with open(self._marker, "w", encoding="utf-8"):
        pass
      raise ConnectionResetError(errno.ECONNRESET, "connection reset by peer (injected)")
    return self._file.readinto(buffer)

  def close(self):
    self._file.close()
    super().close()


def _hex_lines(n: int, seed: int = 0) -> list[str]:
  """Distinct lines that compress only about 2x, so that a compressed file spans several 64 KiB reads."""
  rng = random.Random(seed)
  return [f"{i} {rng.randbytes(24).hex()}" for i in range(n)]


def _flaky_input(tmp_path, input_format: str, suffix: str = "", n: int = 6000) -> tuple[str, list[str]]:
  """A file of n records (texts) in input_format, and its flaky:// path."""
  texts = _hex_lines(n)
  name = f"in.{input_format}{suffix}"
  if input_format == "text" and suffix == ".bz2":  # 100 kB blocks: records come out before the end of the file
    local = write(tmp_path, name, bz2.compress("".join(t + "\n" for t in texts).encode(), 1), compress=False)
  elif input_format == "text":
    local = write(tmp_path, name, "".join(t + "\n" for t in texts))
  elif input_format == "jsonl":
    local = write(tmp_path, name, "".join(json.dumps({"id": str(i), "text": t}) + "\n" for i, t in enumerate(texts)))
  elif input_format == "csv":
    local = write(tmp_path, name, "id,text\n" + "".join(f"{i},{t}\n" for i, t in enumerate(texts)))
  elif input_format == "tfrecord":
    local = write(tmp_path, name, tfrecord_bytes([tf_example(id=str(i), text=t) for i, t in enumerate(texts)]))
  else:
    local = os.path.join(str(tmp_path), name)
    pq.write_table(pa.table({"id": [str(i) for i in range(n)], "text": texts}), local, row_group_size=500)
  return "flaky://" + local, texts


@pytest.mark.parametrize("input_format,suffix", [("text", ""), ("text", ".gz"), ("text", ".bz2"), ("jsonl", ".zst"),
                                                 ("csv", ""), ("tfrecord", ".deflate"), ("parquet", "")])
def test_an_io_error_part_way_through_a_file_is_raised_and_a_retry_reads_it_whole(tmp_path, input_format, suffix):
  path, texts = _flaky_input(tmp_path, input_format, suffix)
  stats, before = FileStats(), []
  with pytest.raises(InputReadError, match="connection reset by peer") as raised:
    for item in read_file(path, ReadOptions(input_format), stats):
      before.append(item)
  assert isinstance(raised.value.__cause__, ConnectionResetError)
  assert os.path.exists(FlakyFileSystem.local(path) + ".failed")  # it did fail, part-way through
  assert not any(isinstance(i, DeadLetter) for i in before) and not stats.failed
  if input_format != "parquet":  # the streaming formats had handed out records before the error
    assert 0 < len(before) < len(texts)
  records, dead, stats = read(path, input_format)  # what the runner's retry does: the file again, from its start
  assert [r.text for r in records] == texts and dead == [] and not stats.failed


def _read_in_pipeline(paths, runner=None):
  """(records as (id, text), dead letters as (id, stage), files failed) of ReadTexts on `runner`."""
  got = {}
  p = beam.Pipeline(runner=runner) if runner else test_pipeline.TestPipeline()
  result = p | ReadTexts(paths)
  for name, pcoll in (("records", result.records | beam.Map(lambda r: (r.id, r.text))),
                      ("dead", result.dead_letters | "Dead" >> beam.Map(lambda d: (d.id, d.stage))),
                      ("failed", result.files_failed)):
    got[name] = pcoll | f"List{name}" >> beam.combiners.ToList()
  outputs = {name: os.path.join(os.path.dirname(FlakyFileSystem.local(paths[0])), f"{name}.json") for name in got}
  for name, pcoll in got.items():
    _ = pcoll | f"Save{name}" >> beam.Map(_save_json, outputs[name])
  p.run().wait_until_finish()
  return {name: _load_json(path) for name, path in outputs.items()}


def _save_json(value, path):
  with open(path, "w", encoding="utf-8") as f:
    json.dump(value, f)


def _load_json(path):
  with open(path, encoding="utf-8") as f:
    return [tuple(v) if isinstance(v, list) else v for v in json.load(f)]


def test_the_bundle_based_direct_runner_retries_a_file_whose_read_failed_no_record_lost_or_duplicated(tmp_path):
  path, texts = _flaky_input(tmp_path, "text", ".gz")
  other = write(tmp_path, "other.txt", "steady one\nsteady two\n")
  got = _read_in_pipeline([path, other], runner="BundleBasedDirectRunner")
  assert os.path.exists(FlakyFileSystem.local(path) + ".failed")  # the first attempt failed part-way
  expected = [(f"{path}:{i + 1}", t) for i, t in enumerate(texts)] + [(f"{other}:1", "steady one"),
                                                                       (f"{other}:2", "steady two")]
  assert sorted(got["records"]) == sorted(expected)  # each once: the failed attempt's records were discarded
  assert got["dead"] == [] and got["failed"] == []


def test_the_in_process_direct_runner_fails_the_job_on_an_io_error_rather_than_dead_lettering(tmp_path):
  # The default DirectRunner (Beam's FnApiRunner) does not retry bundles: the error ends the run.
  path, _ = _flaky_input(tmp_path, "text")
  with pytest.raises(Exception, match="connection reset by peer") as raised:
    _read_in_pipeline([path])
  assert "InputReadError" in str(raised.value) or isinstance(raised.value, InputReadError)
  assert not os.path.exists(os.path.join(str(tmp_path), "dead.json"))


def _previous_output(tmp_path, output_format: str, n: int = 3000) -> tuple[list[str], dict]:
  """A previous output of n rows in 2 shards, written by the real sink: (its files, {file: ShardIdentity})."""
  import hashlib  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  from formats.records import EmbeddingRecord  # pylint: disable=import-outside-toplevel
  from transforms import previous_rows, write  # pylint: disable=import-outside-toplevel
  rng = np.random.default_rng(1)
  rows = [EmbeddingRecord(f"r{i}", rng.standard_normal(8).astype(np.float32), 3, False, f"{i:064x}") for i in range(n)]
  p = test_pipeline.TestPipeline()
  prefix = os.path.join(str(tmp_path), output_format, "emb")
  _ = p | beam.Create(rows, reshuffle=False) | write.WriteEmbeddings(prefix, write.WriteConfig(output_format, 8,
                                                                                               num_shards=2))
  p.run().wait_until_finish()
  files = sorted(os.path.join(os.path.dirname(prefix), f) for f in os.listdir(os.path.dirname(prefix))
                 if f.startswith("emb-0000") and f.endswith(output_format))
  assert len(files) == 2, files
  identities = {}
  for path in files:
    data = open(path, "rb").read()
    identities[path] = previous_rows.ShardIdentity(len(data), hashlib.sha256(data).hexdigest())
  return files, identities


@pytest.mark.parametrize("output_format", ["parquet", "tfrecord"])
def test_an_io_error_reading_a_previous_shard_is_retried_not_taken_for_damage(tmp_path, output_format):
  from formats.columns import OutputColumns  # pylint: disable=import-outside-toplevel
  from transforms.previous_rows import ReadPreviousEmbeddings  # pylint: disable=import-outside-toplevel
  files, identities = _previous_output(tmp_path, output_format)
  flaky = ["flaky://" + path for path in files]
  got = {}
  p = beam.Pipeline(runner="BundleBasedDirectRunner")  # retries a failed bundle, as Dataflow does
  read = p | ReadPreviousEmbeddings(flaky, output_format, 8, OutputColumns(),
                                    {"flaky://" + path: i for path, i in identities.items()})
  for name, pcoll in (("rows", read.rows | beam.Map(lambda r: r.id)), ("unreadable", read.unreadable)):
    got[name] = os.path.join(str(tmp_path), f"{name}.json")
    _ = (pcoll | f"List{name}" >> beam.combiners.ToList()
         | f"Save{name}" >> beam.Map(lambda xs, path: _save_json(sorted(xs), path), got[name]))
  p.run().wait_until_finish()
  assert all(os.path.exists(path + ".failed") for path in files)  # each shard's first read failed part-way
  assert _load_json(got["unreadable"]) == []  # not damage: read again, whole
  assert sorted(_load_json(got["rows"])) == sorted(f"r{i}" for i in range(3000))
  with pytest.raises(Exception, match="connection reset by peer"):  # the in-process runner: the error ends the run
    for path in files:
      os.remove(path + ".failed")
    p = test_pipeline.TestPipeline()
    _ = p | ReadPreviousEmbeddings(flaky, output_format, 8, OutputColumns())
    p.run().wait_until_finish()


def test_damage_that_python_reports_as_an_oserror_is_still_a_dead_letter(tmp_path):
  lines = _hex_lines(6000)
  data = bytearray(bz2.compress("".join(t + "\n" for t in lines).encode(), 1))  # 100 kB blocks
  data[len(data) // 2] ^= 0xFF  # bz2 reports corrupt data as a bare OSError("Invalid data stream")
  path = write(tmp_path, "corrupt.txt.bz2", bytes(data), compress=False)
  records, dead, stats = read(path)
  assert dead_pairs(dead) == [(f"{path}:{len(records) + 1}", "read")] and "corrupt bz2 data" in dead[0].reason
  assert 0 < len(records) < len(lines) and [r.text for r in records] == lines[:len(records)] and stats.failed
  data = bytearray(gzip.compress(b"one\ntwo\n"))
  data[-5] ^= 0xFF  # the CRC-32 in the trailer: gzip.BadGzipFile, an OSError subclass
  path = write(tmp_path, "crc.txt.gz", bytes(data), compress=False)
  records, dead, stats = read(path)
  assert [r.text for r in records] == ["one", "two"] and stats.failed
  assert dead_pairs(dead) == [(f"{path}:3", "read")] and "BadGzipFile: CRC check failed" in dead[0].reason
  table = io.BytesIO()
  pq.write_table(pa.table({"id": [str(i) for i in range(5000)], "text": lines[:5000]}), table, row_group_size=500)
  data = bytearray(table.getvalue())
  for i in range(len(data) // 3, len(data) // 3 + 300):
    data[i] ^= 0x5A  # inside a page: Arrow raises a bare OSError ("Corrupt snappy compressed data")
  path = write(tmp_path, "corrupt.parquet", bytes(data))
  records, dead, stats = read(path, "parquet")
  assert [d.stage for d in dead] == ["read"] and stats.failed and len(records) < 5000
