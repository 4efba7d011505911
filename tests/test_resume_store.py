"""Resume with --vector-store (issue 25 item 4): a run that fails after encoding part of the corpus leaves NAME as it
was (the previous committed snapshot); the rerun of the same command resumes its checkpoints and writes NAME from
the output's rows (resumed and encoded alike), in sync. PostgreSQL (pgserver); the stop_after fixture is conftest's."""
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from apache_beam.testing.test_pipeline import TestPipeline

from pipeline.run import run
from stores.postgres_store import PostgresStore

RECORDS = 48
WORDS = "the cat dog bird fish sat run walk jump play on mat hat house tree car hello world good bad".split()


def _corpus(path, n, seed):
  rng = np.random.default_rng(seed)
  path.write_text("".join(json.dumps({"id": f"doc-{i:03d}", "text": " ".join(rng.choice(WORDS, size=5))}) + "\n"
                          for i in range(n)), encoding="utf-8")
  return str(path)


def _run(model, corpus, output, url, name):
  argv = ["--model", model, "--input", corpus, "--input-format", "jsonl", "--output", output, "--seq-length", "16",
          "--pooling", "cls", "--batch-size", "4", "--vector-store", "postgres", "--vector-store-url", url,
          "--vector-collection", name, "--vector-store-batch-size", "16"]
  return run(argv, test_pipeline=TestPipeline(argv=argv))


def _output_rows(manifest, directory):
  table = pa.concat_tables([pq.read_table(directory / f) for f in manifest["shards"] if f.endswith(".parquet")])
  return {i: np.asarray(e, np.float32) for i, e in zip(table.column("id").to_pylist(),
                                                       table.column("embedding").to_pylist())}


def _store(url, name):
  """(NAME's ids and vectors, the job's other tables of NAME: staging or rebuilds not committed)."""
  store = PostgresStore(url, name)
  try:
    ids = sorted(store.fingerprints())
    return store.vectors(ids), store.abandoned()
  finally:
    store.close()


def test_a_failed_run_leaves_the_store_as_it_was_and_its_rerun_resumes_into_it(tmp_path, tiny_model_dir, pg_password,
                                                                                stop_after):
  url, name = pg_password["url"], "resume_store"
  earlier = _run(tiny_model_dir, _corpus(tmp_path / "earlier.jsonl", 8, seed=1), str(tmp_path / "earlier" / "emb"),
                 url, name)
  before, _ = _store(url, name)
  assert len(before) == 8 and earlier.manifest["vector_store"]["in_sync"]
  corpus, output = _corpus(tmp_path / "corpus.jsonl", RECORDS, seed=3), str(tmp_path / "out" / "emb")
  disarm = stop_after(6)  # 24 of 48 records encoded (and checkpointed) before the job fails
  with pytest.raises(Exception, match="stopped after 6"):
    _run(tiny_model_dir, corpus, output, url, name)
  disarm()
  held, left = _store(url, name)
  assert sorted(held) == sorted(before)  # nothing reached NAME: it holds the earlier committed snapshot
  for key, vector in before.items():
    np.testing.assert_array_equal(held[key], vector)
  outcome = _run(tiny_model_dir, corpus, output, url, name)
  counts, section = outcome.manifest["counts"], outcome.manifest["vector_store"]
  assert counts["resumed"] > 0 and counts["resumed"] + counts["encoded"] == counts["written"] == RECORDS
  assert section["in_sync"] and section["mode"] == "rebuild"
  # The resumed rebuild does not reuse the failed run's staging table: its start (CreateStoreTarget) drops every
  # table the job left for NAME as abandoned, and writes a new one from the run's rows, resumed and encoded alike.
  assert section["abandoned_dropped"] == left
  rows = _output_rows(outcome.manifest, tmp_path / "out")
  held, left = _store(url, name)
  assert sorted(held) == sorted(rows) and left == []
  for key, vector in rows.items():
    np.testing.assert_allclose(held[key], vector, atol=1e-5)
