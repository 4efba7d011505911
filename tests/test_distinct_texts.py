"""--dedupe-texts: each distinct (text, pair) goes through the model once; every id still gets its vector."""
import json

import numpy as np
import pyarrow.parquet as pq
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.testing.test_pipeline import TestPipeline

from formats.records import text_sha256
from pipeline.run import run

BOILERPLATE = "the cat sat on the mat."
UNIQUE = ["hello world!", "a dog is on the mat.", "the dog sat.", "is the world hello?"]


def _rows(outcome):
  """{(id, text_sha256): row}: with --on-duplicate-id keep an id may name several records."""
  rows = {}
  for f in outcome.manifest["output_files"]:
    for r in pq.read_table(f).to_pylist():
      assert (r["id"], r["text_sha256"]) not in rows
      rows[(r["id"], r["text_sha256"])] = r
  return rows


def test_dedupe_encodes_each_distinct_text_once_and_matches_the_plain_run(tmp_path, tiny_model_dir):
  lines = []
  for i, u in enumerate(UNIQUE):
    lines += [{"id": f"u{i}", "text": u}, {"id": f"b{i}", "text": BOILERPLATE}]
  lines += [{"id": "dup-of-u0", "text": UNIQUE[0]}, {"id": "blank-a", "text": "\u200b"}, {"id": "blank-b",
                                                                                       "text": "\u200b"}]
  # One id for two texts that each have a duplicate under another id (kept with --on-duplicate-id keep): each
  # record must get the vector of its own text, whichever record of its group is encoded.
  colliding = [{"id": "X", "text": "a cat"}, {"id": "Y", "text": "a cat"}, {"id": "X", "text": "big dog"},
               {"id": "Z", "text": "big dog"}]
  lines += colliding
  (tmp_path / "in.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n", encoding="utf-8")
  common = ["--model", tiny_model_dir, "--input", str(tmp_path / "in.jsonl"), "--input-format", "jsonl",
            "--seq-length", "32", "--pooling", "mean", "--on-duplicate-id", "keep",
            "--max-dead-letter-fraction", "1"]  # the blank records are dead-lettered on purpose
  plain_argv = common + ["--output", str(tmp_path / "plain")]
  plain = run(plain_argv, test_pipeline=TestPipeline(argv=plain_argv))
  dedupe_argv = common + ["--output", str(tmp_path / "dedupe"), "--dedupe-texts"]
  dedupe = run(dedupe_argv, test_pipeline=TestPipeline(argv=dedupe_argv))
  a, b = _rows(plain), _rows(dedupe)
  assert sorted(a) == sorted(b) and len(b) == 13
  assert sorted(k for k in b if k[0] in "XYZ") == sorted((x["id"], text_sha256(x["text"])) for x in colliding)
  for k in a:
    assert a[k]["embedding"] == b[k]["embedding"] or max(
        abs(x - y) for x, y in zip(a[k]["embedding"], b[k]["embedding"])) < 1e-5
  cat, dog = (np.array(b[(i, text_sha256(t))]["embedding"]) for i, t in (("X", "a cat"), ("X", "big dog")))
  assert np.abs(cat - dog).max() > 1e-3  # the two texts of X have different vectors, so a swap would be seen
  c = dedupe.manifest["counts"]
  assert (c["read"], c["written"], c["encoded"], c["dead_lettered"]) == (15, 13, 7, 2)
  assert plain.manifest["counts"]["encoded"] == 13
  dead = [json.loads(line) for f in dedupe.manifest["error_files"] for line in open(f, encoding="utf-8")]
  assert sorted(d["id"] for d in dead) == ["blank-a", "blank-b"]
  encoded = dedupe.result.metrics().query(MetricsFilter().with_name("records_encoded"))["counters"]
  assert sum(r.committed for r in encoded) == 7
