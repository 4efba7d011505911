"""A run whose staged embedding shards are its checkpoints (snapshot/resume.py checkpoint_form; transforms/checkpoint.py
WriteParts): while it runs, its staging holds no second copy of the rows it encoded; killed, it leaves shards in the
output's form (text, float16, truncated vectors), and its rerun resumes from them and writes what an uninterrupted
run writes. Shards are closed every 4 rows (the stop_after fixture patches transforms.checkpoint.MAX_ROWS)."""
import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.testing.test_pipeline import TestPipeline

from formats import checkpoint_files
from pipeline.run import run
from snapshot import staging as staging_lib

RECORDS = 40
DIMS = 16
OPTIONS = ("--keep-text", "--output-dtype", "float16", "--truncate-dim", str(DIMS))


def _job(model, corpus, output):
  argv = ["--model", model, "--input", corpus, "--input-format", "jsonl", "--output", output, "--seq-length", "16",
          "--batch-size", "4", *OPTIONS]
  return run(argv, test_pipeline=TestPipeline(argv=argv))


def _table(output):
  directory, stem = os.path.split(output)
  shards = sorted(os.path.join(directory, f) for f in os.listdir(directory)
                  if f.startswith(stem + "-") and f.endswith(".parquet"))
  return pa.concat_tables([pq.read_table(s) for s in shards]).sort_by("id"), len(shards)


def test_staged_shards_are_the_checkpoints_and_a_rerun_resumes_from_them(tmp_path, tiny_model_dir, stop_after,
                                                                         monkeypatch):
  words = "one two three four five six seven eight nine ten alpha beta gamma delta".split()
  rng = np.random.default_rng(11)
  corpus = tmp_path / "corpus.jsonl"
  corpus.write_text("".join(json.dumps({"id": f"r{i:02d}", "text": " ".join(rng.choice(words, 2 + i % 7))}) + "\n"
                            for i in range(RECORDS)), encoding="utf-8")
  listings = []
  commit_files = staging_lib.commit_files

  def listing_first(prefix, staging_dir, written, kinds):
    listings.append((sorted(f for f in os.listdir(staging_dir) if f.endswith(".parquet")),
                     sorted(os.path.basename(w.path) for w in written if w.path.endswith(".parquet"))))
    return commit_files(prefix, staging_dir, written, kinds)

  monkeypatch.setattr(staging_lib, "commit_files", listing_first)
  whole = str(tmp_path / "whole" / "emb")
  _job(tiny_model_dir, str(corpus), whole)
  [(staged, committed)] = listings
  assert staged == committed  # at the commit, the staged shards are all the Parquet there is: no checkpoint copy
  assert all(checkpoint_files.parse_checkpoint_name(name) for name in committed)
  want, shards = _table(whole)
  assert shards >= RECORDS // 4 and want.num_rows == RECORDS
  part = pq.ParquetFile(os.path.join(tmp_path, "whole", "emb-00000-of-" + f"{shards:05d}.parquet")).metadata
  encodings = {part.row_group(0).column(i).path_in_schema: part.row_group(0).column(i).encodings
               for i in range(part.num_columns)}
  # Vectors hardly repeat: a dictionary would only add up to 1 MiB to each shard (formats/sinks.py).
  assert "RLE_DICTIONARY" not in encodings["embedding.list.element"] and "RLE_DICTIONARY" in encodings["num_tokens"]

  output = str(tmp_path / "out" / "emb")
  disarm = stop_after(4)
  try:
    _job(tiny_model_dir, str(corpus), output)
    raise AssertionError("the run was not stopped")
  except Exception as e:  # pylint: disable=broad-except
    assert "stopped after 4" in str(e)
  disarm()
  [folder] = [os.path.join(tmp_path, "out", d) for d in os.listdir(tmp_path / "out") if d.startswith("bert-embed-tmp")]
  parquet = [f for f in os.listdir(folder) if f.endswith(".parquet")]
  assert parquet and all(checkpoint_files.parse_checkpoint_name(f) for f in parquet)  # nothing but the shards
  checkpointed = 0
  for name in parquet:  # each an output shard: the output's schema and form
    part = pq.read_table(os.path.join(folder, name))
    assert part.schema.names == want.schema.names and part.schema.field("embedding").type == pa.list_(pa.float16())
    assert {len(v) for v in part.column("embedding").to_pylist()} == {DIMS}
    checkpointed += part.num_rows
  assert 0 < checkpointed < RECORDS

  outcome = _job(tiny_model_dir, str(corpus), output)
  counts = outcome.manifest["counts"]
  assert (counts["resumed"], counts["encoded"], counts["written"]) == (checkpointed, RECORDS - checkpointed, RECORDS)
  got, _ = _table(output)
  for column in ("id", "text", "text_sha256", "num_tokens"):
    assert got.column(column).to_pylist() == want.column(column).to_pylist()
  # float16 holds ~3 significant digits: a value within 1e-5 in float32 is the same float16 or the next one
  np.testing.assert_allclose(np.asarray(got.column("embedding").to_pylist(), np.float32),
                             np.asarray(want.column("embedding").to_pylist(), np.float32), atol=1e-3)
  assert not [d for d in os.listdir(tmp_path / "out") if d.startswith("bert-embed-tmp")]
