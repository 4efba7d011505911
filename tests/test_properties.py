"""Property-based: generated corpora through the whole pipeline; every record is accounted for exactly once.

Each example is one DirectRunner run (seconds), so examples are few; the corpora are varied instead: random
unicode without surrogates (controls, NUL, combining marks, whitespace of every kind), empty and blank lines, long
lines cut by --max-text-bytes, empty files, and for JSON lines duplicate ids, non-string texts and garbage lines.
"""
import json
import os
import tempfile

import numpy as np
import pyarrow.parquet as pq
from apache_beam.testing.test_pipeline import TestPipeline
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.run import run

DIM = 32
MAX_TEXT_BYTES = 2048
_CHARS = st.characters(blacklist_categories=("Cs",), blacklist_characters="\n\ufeff")
_SHORT = st.text(_CHARS, max_size=40)
_LONG = st.builds(lambda piece, times: piece * times, st.text(_CHARS, min_size=1, max_size=8),
                  st.integers(300, 3000))  # up to 24k characters, cut to MAX_TEXT_BYTES
_BLANK = st.text(st.sampled_from(" \t\r\x0b\x0c\u00a0\u2003\u3000"), max_size=5)
_LINE = st.one_of(_SHORT, _SHORT, _SHORT, _BLANK, _LONG)

_ID = st.one_of(st.sampled_from(["a", "b", "c", "\u00e9t\u00e9"]), st.integers(0, 3))  # collide often
_JSON_RECORD = st.one_of(
    st.fixed_dictionaries({"id": _ID, "text": _LINE}),
    st.fixed_dictionaries({"id": _ID, "text": st.one_of(st.none(), st.integers(), st.lists(_SHORT, max_size=2))}),
    st.fixed_dictionaries({"text": _SHORT}),  # no id
)
_JSON_LINE = st.one_of(_JSON_RECORD, _JSON_RECORD, _JSON_RECORD, _SHORT)  # a bare string: usually not JSON



def _files(line):
  """1-3 files (some may be empty) with at least 5 lines in all (test_reliability.py has the empty corpus)."""
  return st.lists(st.lists(line, max_size=40), min_size=1, max_size=3).filter(lambda fs: sum(map(len, fs)) >= 5)


_CORPUS = st.one_of(st.tuples(st.just("text"), _files(_LINE)), st.tuples(st.just("jsonl"), _files(_JSON_LINE)))


def _render(input_format, line):
  if input_format == "jsonl" and isinstance(line, dict):
    return json.dumps(line, ensure_ascii=False)
  return line


def _is_blank(line: str) -> bool:
  return not line or line.isspace()


def _run_corpus(directory, input_format, files, model_dir):
  """Writes the corpus; returns the run's outcome, the ids expected and the counts of non-blank and of all lines."""
  expected_ids, non_blank, all_lines = set(), 0, 0
  for f, lines in enumerate(files):
    path = os.path.join(directory, f"part-{f}.{input_format}")
    content = "".join(_render(input_format, line) + "\n" for line in lines)
    with open(path, "w", encoding="utf-8", newline="") as out:
      out.write(content)
    if input_format == "text":  # a lone \r ends a text line too: bytes.splitlines splits as the reader does
      physical = [line.decode("utf-8") for line in content.encode("utf-8").splitlines()]
    else:
      physical = content.split("\n")[:-1]
    all_lines += len(physical)
    for number, line in enumerate(physical, start=1):
      if not _is_blank(line):
        non_blank += 1
        expected_ids.add(f"{path}:{number}")
  argv = ["--model", model_dir, "--input", os.path.join(directory, "part-*"), "--input-format", input_format,
          "--output", os.path.join(directory, "out", "emb"), "--seq-length", "32", "--pooling", "mean",
          "--max-text-bytes", str(MAX_TEXT_BYTES), "--batch-size", "8",
          "--max-dead-letter-fraction", "1"]  # generated corpora may be mostly bad records
  return run(argv, test_pipeline=TestPipeline(argv=argv)), expected_ids, non_blank, all_lines


@settings(max_examples=8, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example])
@given(corpus=_CORPUS)
def test_every_record_is_written_once_or_dead_lettered(corpus, tiny_model_dir):
  input_format, files = corpus
  with tempfile.TemporaryDirectory() as directory:
    outcome, expected_ids, non_blank, all_lines = _run_corpus(directory, input_format, files, tiny_model_dir)
    m = outcome.manifest
    rows = [r for f in m["output_files"] for r in pq.read_table(f).to_pylist()]
    dead = [json.loads(line) for f in m["error_files"] for line in open(f, encoding="utf-8") if line.strip()]
  c = m["counts"]
  assert c["read"] == c["written"] + c["dead_lettered"] == non_blank
  assert (len(rows), len(dead)) == (c["written"], c["dead_lettered"])
  assert c["blank_lines"] == all_lines - non_blank
  ids = [r["id"] for r in rows]
  assert len(ids) == len(set(ids))
  for r in rows:
    vector = np.asarray(r["embedding"], dtype=np.float32)
    assert vector.shape == (DIM,) and np.all(np.isfinite(vector))
    assert 3 <= r["num_tokens"] <= 32
  if input_format == "text":  # ids are <file>:<line>: each non-blank line is either written or dead-lettered
    dead_ids = [d["id"] for d in dead]
    assert sorted(ids + dead_ids) == sorted(expected_ids)
  else:
    given_ids = {str(line["id"]) for lines in files for line in lines if isinstance(line, dict) and "id" in line}
    assert set(ids) <= given_ids
    assert all(d["stage"] in ("decode", "parse", "preprocess") for d in dead)
