"""Inputs are read once and as text: one file reached through several spellings is one input, and a file with a
UTF-16 byte-order mark is decoded rather than split into NUL-ridden lines."""
import codecs
import gzip
import os

import apache_beam as beam
from apache_beam.testing import test_pipeline
from apache_beam.testing.util import assert_that, equal_to

from formats.fields import FileStats, ReadOptions
from formats.inputs import read_file
from formats.records import DeadLetter
from transforms.read import ReadTexts, match_inputs

_TEXT = "héllo wörld\r\nthe cat\n\n𝄞 music\n"


def _read(path, input_format: str = "text"):
  stats = FileStats()
  items = list(read_file(str(path), ReadOptions(input_format, "id", "text", None, 1 << 20), stats))
  return [(i.id, i.text) if not isinstance(i, DeadLetter) else (i.id, i.stage, i.reason) for i in items], stats


def test_utf16_text_with_a_byte_order_mark_is_decoded(tmp_path):
  for name, data in (("le.txt", _TEXT.encode("utf-16-le")), ("be.txt", _TEXT.encode("utf-16-be"))):
    bom = codecs.BOM_UTF16_LE if name == "le.txt" else codecs.BOM_UTF16_BE
    (tmp_path / name).write_bytes(bom + data)
    path = str(tmp_path / name)
    items, stats = _read(path)
    assert items == [(f"{path}:1", "héllo wörld"), (f"{path}:2", "the cat"), (f"{path}:4", "𝄞 music")]
    assert stats.blank_lines == 1 and not stats.failed


def test_utf16_jsonl_csv_and_gzip_are_decoded_and_a_utf8_bom_is_dropped(tmp_path):
  (tmp_path / "a.jsonl").write_bytes('{"id": "x", "text": "ü one"}\n{"id": "y", "text": "two"}\n'.encode("utf-16"))
  (tmp_path / "a.csv").write_bytes('id,text\nx,"ü one"\ny,two\n'.encode("utf-16"))
  (tmp_path / "b.jsonl").write_bytes(codecs.BOM_UTF8 + b'{"id": "x", "text": "one"}\n')
  (tmp_path / "a.txt.gz").write_bytes(gzip.compress("zip ü\nzap\n".encode("utf-16")))
  assert _read(tmp_path / "a.jsonl", "jsonl")[0] == [("x", "ü one"), ("y", "two")]
  assert _read(tmp_path / "a.csv", "csv")[0] == [("x", "ü one"), ("y", "two")]
  assert _read(tmp_path / "b.jsonl", "jsonl")[0] == [("x", "one")]
  path = str(tmp_path / "a.txt.gz")
  assert _read(path)[0] == [(f"{path}:1", "zip ü"), (f"{path}:2", "zap")]


def test_utf16_without_a_byte_order_mark_is_dead_lettered_saying_so(tmp_path):
  (tmp_path / "a.txt").write_bytes("hello\nworld\n".encode("utf-16-le"))
  path = str(tmp_path / "a.txt")
  reason = "NUL bytes: the file looks like UTF-16 without a byte-order mark (save it as UTF-8)"
  items, _ = _read(path)
  assert items[:2] == [(f"{path}:1", "decode", reason), (f"{path}:2", "decode", reason)]
  assert all(item[1] == "decode" for item in items)


def test_damaged_utf16_keeps_the_lines_before_the_damage(tmp_path):
  (tmp_path / "a.txt").write_bytes("ab\ncd\n".encode("utf-16") + b"\x00")  # one byte short of a code unit
  path = str(tmp_path / "a.txt")
  items, stats = _read(path)
  assert items[:2] == [(f"{path}:1", "ab"), (f"{path}:2", "cd")]
  assert len(items) == 3 and items[2][0] == f"{path}:3" and "utf-16" in items[2][2] and stats.failed


def test_one_file_through_several_spellings_is_matched_once(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  (tmp_path / "d").mkdir()
  (tmp_path / "d" / "a.txt").write_text("one\ntwo\n", encoding="utf-8")
  (tmp_path / "d" / "b.txt").write_text("three\n", encoding="utf-8")
  os.symlink(tmp_path / "d" / "a.txt", tmp_path / "d" / "link.txt")
  os.link(tmp_path / "d" / "b.txt", tmp_path / "d" / "hard.txt")
  spellings = ["d/a.txt", "./d/a.txt", str(tmp_path / "d" / "a.txt"), f"{tmp_path}//d/./a.txt", "d/*.txt",
               "./d/*.txt"]
  # The first pattern that matches a file gives its spelling; within a pattern, the first in sorted order.
  assert match_inputs(spellings) == ["d/a.txt", "d/b.txt"]
  assert match_inputs(["./d/*.txt", "d/a.txt"]) == ["./d/a.txt", "./d/b.txt"]
  assert match_inputs([str(tmp_path / "d" / "link.txt"), "d/a.txt"]) == [str(tmp_path / "d" / "link.txt")]


def test_text_read_through_two_spellings_and_two_globs_gives_each_line_once(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  (tmp_path / "a.txt").write_text("one\ntwo\n", encoding="utf-8")
  with test_pipeline.TestPipeline() as p:
    read = p | ReadTexts(["a.txt", "./a.txt", str(tmp_path / "a.txt"), "./*.txt", f"{tmp_path}/a*"])
    assert_that(read.records | beam.Map(lambda r: (r.id, r.text)), equal_to([("a.txt:1", "one"), ("a.txt:2", "two")]))
