"""Bad input end to end: every record is written or dead-lettered with a reason, and the job goes on.

Each DirectRunner run costs seconds, so one run per input format gathers several kinds of bad input. The reader
rules themselves are tested in test_read.py; here they are proven through `run()`, the manifest and the files.
Problems that must stop the job (a glob matching nothing, a missing, corrupt or mismatched model, duplicate ids
under --on-duplicate-id fail) are checked to fail before anything is written, or without a manifest.
"""
import gzip
import json
import os
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from apache_beam.testing.test_pipeline import TestPipeline

from cli import main as cli
from formats.usage import UsageError
from pipeline.run import run
from transforms.duplicate_ids import DuplicateIdError

SEQ = 32
S = ["the cat sat on the mat.", "hello world!", "a dog is on the mat, the cat is not.", "is the world hello?",
     "the dog sat.", "cats and dogs are sitting on mats in the world."]


def _run(tiny_model_dir, pattern, output, *extra):
  argv = ["--model", tiny_model_dir, "--input", pattern, "--output", output, "--seq-length", str(SEQ),
          "--pooling", "mean", "--max-dead-letter-fraction", "1", *extra]  # small corpora of mostly bad records
  return run(argv, test_pipeline=TestPipeline(argv=argv))


def _rows(outcome):
  tables = [pq.read_table(f) for f in outcome.manifest["output_files"]]
  return pa.concat_tables(tables).to_pylist()


def _dead(outcome):
  out = []
  for path in outcome.manifest["error_files"]:
    with open(path, encoding="utf-8") as f:
      out += [json.loads(line) for line in f if line.strip()]
  return out


def _check_accounting(outcome, written, dead_lettered):
  """The manifest's counts and files agree with each other and with what is on disk."""
  rows, dead, c = _rows(outcome), _dead(outcome), outcome.manifest["counts"]
  assert (c["written"], c["dead_lettered"]) == (len(rows), len(dead)) == (written, dead_lettered), c
  assert c["read"] == c["written"] + c["dead_lettered"]
  assert outcome.manifest["invariant"]["read_equals_written_plus_dead_lettered"] is True
  for r in rows:
    vector = np.asarray(r["embedding"], dtype=np.float32)
    assert vector.shape == (32,) and np.all(np.isfinite(vector))
  on_disk = sorted(os.path.join(d, f) for d, _, fs in os.walk(os.path.dirname(outcome.config.output)) for f in fs
                   if f.startswith(os.path.basename(outcome.config.output) + "-"))
  assert on_disk == sorted(outcome.manifest["files"] + [outcome.config.output + "-manifest.json"])
  return rows, dead


def _by_id(dead):
  return {d["id"]: d for d in dead}


# --- text: invalid UTF-8, NUL, blank lines, a 50 MB line, a truncated .gz, an empty file --------

def test_text_bad_lines_a_50_mb_line_and_a_truncated_gz(tmp_path, tiny_model_dir):
  src = tmp_path / "in"
  src.mkdir()
  (src / "a.txt").write_bytes(b"\n".join([S[0].encode(), b"caf\xc3 au lait", b"nul\x00byte", b"", b"   \t",
                                          S[1].encode(), "\u3000".encode()]) + b"\n")
  huge = ("the cat sat on the mat. " * ((50 << 20) // 24 + 1))[:50 << 20]
  (src / "big.txt").write_text(f"{S[2]}\n{huge}\n{S[3]}\n", encoding="utf-8")
  lines = [f"{S[i % len(S)]} number {i}" for i in range(3000)]
  packed = gzip.compress(("\n".join(lines) + "\n").encode(), compresslevel=1)
  (src / "cut.txt.gz").write_bytes(packed[:len(packed) // 2])
  (src / "empty.txt").write_bytes(b"")
  out = str(tmp_path / "out" / "emb")
  outcome = _run(tiny_model_dir, str(src / "*"), out, "--keep-text")

  rows = {r["id"]: r for r in _rows(outcome)}
  a, big, cut = (str(src / n) for n in ("a.txt", "big.txt", "cut.txt.gz"))
  kept = sorted(int(i.rsplit(":", 1)[1]) for i in rows if i.startswith(cut))
  assert 0 < len(kept) < len(lines) and kept == list(range(1, len(kept) + 1))  # everything before the damage
  assert all(rows[f"{cut}:{n}"]["text"] == lines[n - 1] for n in kept)
  rows, dead = _check_accounting(outcome, written=len(kept) + 5, dead_lettered=3)
  ids = {r["id"] for r in rows}
  assert {f"{a}:1", f"{a}:6", f"{big}:1", f"{big}:2", f"{big}:3"} <= ids
  # The 50 MB line is cut to --max-text-bytes (1 MiB by default), marked truncated and embedded; its neighbours too.
  line = next(r for r in rows if r["id"] == f"{big}:2")
  assert line["truncated"] and line["num_tokens"] == SEQ
  assert len(line["text"].encode()) <= 1 << 20 and huge.startswith(line["text"]) and len(line["text"]) > 1000
  assert not any(r["truncated"] for r in rows if r["id"] != f"{big}:2")
  dead = _by_id(dead)
  assert dead[f"{a}:2"]["stage"] == "decode" and "invalid UTF-8" in dead[f"{a}:2"]["reason"]
  assert dead[f"{a}:3"]["stage"] == "decode" and dead[f"{a}:3"]["reason"] == "NUL byte"
  assert dead[f"{cut}:{len(kept) + 1}"]["stage"] == "read" and "EOFError" in dead[f"{cut}:{len(kept) + 1}"]["reason"]
  c = outcome.manifest["counts"]
  assert (c["blank_lines"], c["files_failed"], c["truncated"]) == (3, 1, 1)
  assert outcome.manifest["inputs"]["files"] == 4


def test_empty_input_succeeds_with_zero_counts_and_a_manifest(tmp_path, tiny_model_dir):
  (tmp_path / "empty.txt").write_bytes(b"")
  (tmp_path / "blank.txt").write_text("\n  \n", encoding="utf-8")
  outcome = _run(tiny_model_dir, str(tmp_path / "*.txt"), str(tmp_path / "emb"))
  assert os.path.exists(tmp_path / "emb-manifest.json")
  _check_accounting(outcome, written=0, dead_lettered=0)
  c = outcome.manifest["counts"]
  assert c["blank_lines"] == 2 and {"read", "written", "dead_lettered", "files_failed", "tokens"} <= set(c)
  assert all(value == 0 for name, value in c.items() if name != "blank_lines"), c


# --- jsonl: NUL, empty and non-string texts, missing fields, duplicate ids ----------------------

def _jsonl(path, objects):
  path.write_text("".join((o if isinstance(o, str) else json.dumps(o)) + "\n" for o in objects), encoding="utf-8")
  return str(path)


def test_jsonl_bad_fields_and_duplicate_ids_are_dead_lettered(tmp_path, tiny_model_dir):
  a = _jsonl(tmp_path / "a.jsonl", [
      {"id": "ok-1", "text": S[0]},
      {"id": "nul", "text": "nul\u0000inside"},  # a JSON-escaped NUL
      {"id": "empty", "text": ""},
      {"id": "num", "text": 42},
      {"id": "list", "text": ["a", "b"]},
      {"text": "a record without an id"},
      {"id": "null-text", "text": None},
      {"id": True, "text": "a boolean id"},
      {"id": "dup", "text": S[1]},
      {"id": "dup-bad", "text": ""},  # dead-lettered before the duplicate check: b's record with this id is kept
      {"id": "tri", "text": S[2]},
      {"id": 7, "text": S[3]},  # integer 7 and string "7" are the same id
      '{"id": "lone", "text": "\\ud800"}',
  ])
  b = _jsonl(tmp_path / "b.jsonl", [
      {"id": "dup", "text": S[4]},
      {"id": "tri", "text": S[5]},
      {"id": "dup-bad", "text": S[0]},
      {"id": "tri", "text": S[3]},
      {"id": "7", "text": S[5]},
      {"id": "ok-2", "text": S[1]},
      {"id": "ok-2", "text": S[2]},
  ])
  outcome = _run(tiny_model_dir, str(tmp_path / "*.jsonl"), str(tmp_path / "out" / "emb"), "--input-format",
                 "jsonl", "--keep-text")
  rows, dead = _check_accounting(outcome, written=6, dead_lettered=14)
  assert {r["id"]: r["text"] for r in rows} == {"ok-1": S[0], "dup": S[1], "tri": S[2], "7": S[3],
                                                "dup-bad": S[0], "ok-2": S[1]}
  parse = {d["id"]: d for d in dead if d["source"] == a and "duplicate" not in d["reason"]}
  assert {k: v["stage"] for k, v in parse.items()} == {
      "nul": "decode", "empty": "parse", "num": "parse", "list": "parse", f"{a}:6": "parse", "null-text": "parse",
      f"{a}:8": "parse", "dup-bad": "parse", "lone": "decode"}
  assert "must be a string, not int" in parse["num"]["reason"] and "missing id" in parse[f"{a}:6"]["reason"]
  duplicates = sorted((d["id"], d["source"], d["snippet"], d["reason"]) for d in dead if "duplicate" in d["reason"])
  kept = "duplicate id; kept the record at "
  assert duplicates == sorted([
      ("7", b, S[5], f"{kept}{a}:12"),
      ("dup", b, S[4], f"{kept}{a}:9"),
      ("ok-2", b, S[2], f"{kept}{b}:6"),
      ("tri", b, S[3], f"{kept}{a}:11"),
      ("tri", b, S[5], f"{kept}{a}:11"),
  ])
  assert all(d["stage"] == "parse" for d in dead if "duplicate" in d["reason"])
  assert outcome.manifest["options"]["on_duplicate_id"] == "dead-letter"


def test_duplicate_ids_fail_the_job_when_asked_and_no_manifest_is_written(tmp_path, tiny_model_dir, capsys):
  src = _jsonl(tmp_path / "in.jsonl", [{"id": "x", "text": S[0]}, {"id": "y", "text": S[1]},
                                       {"id": "x", "text": S[2]}])
  with pytest.raises(DuplicateIdError, match=r"duplicate id 'x': records at .*in.jsonl:1 and .*in.jsonl:3"):
    _run(tiny_model_dir, src, str(tmp_path / "emb"), "--input-format", "jsonl", "--on-duplicate-id", "fail")
  assert not os.path.exists(tmp_path / "emb-manifest.json")
  code = cli.main(["run", "--model", tiny_model_dir, "--input", src, "--output", str(tmp_path / "cli"),
                   "--seq-length", str(SEQ), "--input-format", "jsonl", "--on-duplicate-id", "fail"])
  err = capsys.readouterr().err
  assert code == 1 and "bert-embed run: error: duplicate id 'x'" in err and "Traceback" not in err
  assert not os.path.exists(tmp_path / "cli-manifest.json")


# --- csv: malformed rows, missing values, invalid UTF-8; duplicate ids kept when asked ----------

def test_csv_malformed_rows_are_dead_lettered_and_duplicates_kept_on_request(tmp_path, tiny_model_dir):
  (tmp_path / "in.csv").write_bytes(b"\r\n".join([
      b"id,text",
      f"c1,{S[0]}".encode(),
      f'c2,"{S[1]} quoted, with a comma"'.encode(),
      b"c3",  # one field
      b"c4,two,many",  # three fields
      b"c5,",  # empty text
      b"c6,caf\xc3 au lait",  # invalid UTF-8
      b'c7,"nul\x00inside"',
      f'c1,"{S[2]}"'.encode(),  # a duplicate id, kept with --on-duplicate-id keep
  ]) + b"\r\n")
  outcome = _run(tiny_model_dir, str(tmp_path / "in.csv"), str(tmp_path / "emb"), "--input-format", "csv",
                 "--on-duplicate-id", "keep", "--keep-text")
  rows, dead = _check_accounting(outcome, written=3, dead_lettered=5)
  assert sorted((r["id"], r["text"]) for r in rows) == sorted([("c1", S[0]), ("c1", S[2]),
                                                               ("c2", f"{S[1]} quoted, with a comma")])
  path = str(tmp_path / "in.csv")
  stages = {d["id"]: (d["stage"], d["reason"]) for d in dead}
  assert stages[f"{path}:4"] == ("parse", "expected 2 fields, got 1")
  assert stages[f"{path}:5"] == ("parse", "expected 2 fields, got 3")
  assert stages["c5"] == ("parse", "empty text")
  assert stages["c6"][0] == "decode" and "invalid UTF-8" in stages["c6"][1]
  assert stages["c7"] == ("decode", "NUL byte in field 'text'")


def test_csv_an_unterminated_quote_in_a_file_named_with_glob_characters(tmp_path, tiny_model_dir):
  """The glob's matches are read as paths (`in[1].csv.gz` is not matched again as a pattern, where it would mean
  `in1.csv.gz`), and an unterminated quote dead-letters its own row, not the rows after it."""
  bracket = tmp_path / "in[1].csv.gz"
  bracket.write_bytes(gzip.compress(f'id,text\nu1,"{S[0]}\nu2,{S[1]}\nu3,{S[3]}\n'.encode()))
  (tmp_path / "in1.csv").write_text(f"id,text\nc1,{S[4]}\n", encoding="utf-8")
  outcome = _run(tiny_model_dir, str(tmp_path / "in*.csv*"), str(tmp_path / "emb"), "--input-format", "csv",
                 "--keep-text")
  rows, dead = _check_accounting(outcome, written=3, dead_lettered=1)
  assert sorted((r["id"], r["text"]) for r in rows) == [("c1", S[4]), ("u2", S[1]), ("u3", S[3])]
  assert [(d["id"], d["stage"]) for d in dead] == [(f"{bracket}:2", "parse")]
  assert "never closed" in dead[0]["reason"]
  assert outcome.manifest["inputs"]["files"] == 2


# --- parquet: a corrupt file, a truncated file, null / empty / non-string texts -----------------

def test_parquet_corrupt_and_truncated_files_and_bad_rows(tmp_path, tiny_model_dir):
  pq.write_table(pa.table({"id": [1, 2, 3, 4], "text": [S[0], None, "", S[1]]}), tmp_path / "good.parquet")
  pq.write_table(pa.table({"id": ["n1", "n2"], "text": [5, 6]}), tmp_path / "numbers.parquet")
  (tmp_path / "garbage.parquet").write_bytes(b"PAR1 this is not a parquet file")
  whole = pa.BufferOutputStream()
  pq.write_table(pa.table({"id": list(range(100, 200)), "text": [S[2]] * 100}), whole)
  data = whole.getvalue().to_pybytes()
  (tmp_path / "truncated.parquet").write_bytes(data[:len(data) * 2 // 3])
  outcome = _run(tiny_model_dir, str(tmp_path / "*.parquet"), str(tmp_path / "out" / "emb"), "--input-format",
                 "parquet")
  rows, dead = _check_accounting(outcome, written=2, dead_lettered=6)
  assert sorted(r["id"] for r in rows) == ["1", "4"]
  stages = {d["id"]: d["stage"] for d in dead}
  assert stages == {"2": "parse", "3": "parse", "n1": "parse", "n2": "parse",
                    str(tmp_path / "garbage.parquet"): "read", str(tmp_path / "truncated.parquet"): "read"}
  assert outcome.manifest["counts"]["files_failed"] == 2


# --- fails before the job: globs, models --------------------------------------------------------

@pytest.fixture(scope="module")
def other_vocab_model(tmp_path_factory, tiny_config_file, tiny_vocab_tokens):
  """An export whose vocab (and so encoder word embeddings) is smaller than the tiny model's."""
  from modeling import export  # pylint: disable=import-outside-toplevel
  root = tmp_path_factory.mktemp("other_vocab")
  tokens = tiny_vocab_tokens[:100]
  (root / "vocab.txt").write_text("".join(t + "\n" for t in tokens), encoding="utf-8")
  with open(tiny_config_file, encoding="utf-8") as f:
    config = json.load(f)
  (root / "config.json").write_text(json.dumps(dict(config, vocab_size=len(tokens))), encoding="utf-8")
  export.export_model(f"random:{root / 'config.json'}", str(root / "export"), vocab=str(root / "vocab.txt"),
                      seq_length=SEQ, seed=5)
  return str(root / "export")


def _corrupt(tiny_model_dir, tmp_path, how):
  """A copy of the tiny model broken in one way; returns the flags that select it."""
  model = tmp_path / "model"
  shutil.copytree(tiny_model_dir, model)
  if how == "garbage saved_model.pb":
    (model / "encoder" / "saved_model.pb").write_bytes(b"\x08\x01garbage, not a SavedModel proto")
  elif how == "truncated variables":
    data = model / "encoder" / "variables" / "variables.data-00000-of-00001"
    data.write_bytes(data.read_bytes()[:100])
  elif how == "no saved_model.pb":
    os.remove(model / "preprocessor" / "saved_model.pb")
  elif how == "empty dir":
    shutil.rmtree(model)
    model.mkdir()
  return ["--model", str(model)]


@pytest.mark.parametrize("how,message", [
    ("garbage saved_model.pb", "cannot load the encoder"),
    ("truncated variables", "cannot load the encoder"),
    ("no saved_model.pb", "preprocessor SavedModel .* has no saved_model.pb"),
    ("empty dir", "does not exist or has no saved_model.pb"),
])
def test_a_broken_model_fails_at_start_up(tmp_path, tiny_model_dir, how, message):
  (tmp_path / "in.txt").write_text(S[0] + "\n", encoding="utf-8")
  argv = ["--input", str(tmp_path / "in.txt"), "--output", str(tmp_path / "out" / "emb"),
          *_corrupt(tiny_model_dir, tmp_path, how)]
  with pytest.raises(UsageError, match=message):
    run(argv)
  assert not os.path.exists(tmp_path / "out")


def test_a_vocab_mismatch_fails_at_start_up(tmp_path, tiny_model_dir, other_vocab_model):
  (tmp_path / "in.txt").write_text(S[0] + "\n", encoding="utf-8")
  for preprocessor, encoder in ((tiny_model_dir, other_vocab_model), (other_vocab_model, tiny_model_dir)):
    argv = ["--input", str(tmp_path / "in.txt"), "--output", str(tmp_path / "out" / "emb"),
            "--preprocessor", os.path.join(preprocessor, "preprocessor"),
            "--encoder", os.path.join(encoder, "encoder")]
    with pytest.raises(UsageError, match=r"vocab mismatch: .* has \d+ tokens but the encoder .* has \d+ word"):
      run(argv)
  assert not os.path.exists(tmp_path / "out")


def test_a_glob_matching_nothing_fails_before_the_model_is_loaded(tmp_path):
  (tmp_path / "in.txt").write_text(S[0] + "\n", encoding="utf-8")
  argv = ["--input", f"{tmp_path / 'in.txt'},{tmp_path / 'part-*.jsonl'}", "--output", str(tmp_path / "emb"),
          "--model", str(tmp_path / "no-model-needed")]
  with pytest.raises(UsageError, match=r"part-\*\.jsonl' matches no files"):
    run(argv)
  assert sorted(os.listdir(tmp_path)) == ["in.txt"]


# --- scale: the packer sees few batch shapes ------------------------------------------------------

def test_padding_a_tokenizer_batch_to_a_power_of_two_changes_no_record(tiny_model_dir):
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  from runtime.tokenizer import Tokenizer, padded_batch_size  # pylint: disable=import-outside-toplevel
  from formats.records import TextRecord  # pylint: disable=import-outside-toplevel
  from runtime.saved_models import load_preprocessor  # pylint: disable=import-outside-toplevel
  assert [padded_batch_size(n) for n in (0, 1, 2, 3, 5, 64, 65, 256)] == [1, 1, 2, 4, 8, 64, 128, 256]
  pre = load_preprocessor(os.path.join(tiny_model_dir, "preprocessor")).obj
  tokenizer = Tokenizer(pre, SEQ)
  records = [TextRecord(id=str(i), text=s, text_pair=S[-1 - i]) for i, s in enumerate(S[:5])]
  batch = tokenizer.pack(records)  # padded from 5 to 8
  direct = pre.bert_pack_inputs([pre.tokenize(tf.constant([r.text for r in records])),
                                 pre.tokenize(tf.constant([r.text_pair for r in records]))],
                                seq_length=tf.constant(SEQ, tf.int32))
  assert [e.record for e in batch] == records
  for i, (together, alone) in enumerate(zip(batch, (tokenizer.pack([r])[0] for r in records))):
    for name in ("input_word_ids", "input_mask", "input_type_ids"):
      np.testing.assert_array_equal(getattr(together, name), direct[name].numpy()[i])
      np.testing.assert_array_equal(getattr(together, name), getattr(alone, name))
    assert (together.num_tokens, together.truncated) == (alone.num_tokens, alone.truncated)


def test_a_directory_as_input_fails_before_the_model_is_loaded(tmp_path):
  (tmp_path / "corpus").mkdir()
  (tmp_path / "corpus" / "a.txt").write_text(S[0] + "\n", encoding="utf-8")
  argv = ["--input", str(tmp_path / "corpus"), "--output", str(tmp_path / "emb"),
          "--model", str(tmp_path / "no-model-needed")]
  with pytest.raises(UsageError, match=r"^input '.*corpus' is a directory, not a file or a glob; use e\.g\. '.*/\*'$"):
    run(argv)
  assert sorted(os.listdir(tmp_path)) == ["corpus"]
