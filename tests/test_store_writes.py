"""WriteToStore in Beam pipelines against real stores: upserts and deletes land and counts add up (the
multi-process runner with a Qdrant folder: tests/test_vector_store_e2e.py)."""
from __future__ import annotations

import numpy as np
import psycopg
import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to
import apache_beam as beam
from qdrant_client import QdrantClient

from formats.records import EmbeddingRecord
from stores.base import StoreError
from stores.points import point_from_record
from stores.config import StoreConfig
from transforms.store_writes import WriteToStore

DIM = 8


def _records(n, seed, prefix="doc"):
  rng = np.random.default_rng(seed)
  return [EmbeddingRecord(id=f"{prefix}/{i}", embedding=rng.normal(size=DIM).astype(np.float32), num_tokens=3,
                          truncated=False, text_sha256=f"h{seed}-{i}", text=f"text {i}", source="c.jsonl")
          for i in range(n)]


def _seed(config: StoreConfig, records):
  store = config.make()
  store.ensure(DIM)
  store.upsert([point_from_record(r, keep_text=config.keep_text) for r in records])
  store.close()


def _run(config, rows, ids, target=None):
  with TestPipeline() as p:
    written = (p | "Rows" >> beam.Create(rows), p | "Ids" >> beam.Create(ids)) | WriteToStore(config, target)
    assert_that(written["upserted"] | "SumU" >> beam.CombineGlobally(sum), equal_to([len(rows)]), label="Up")
    assert_that(written["deleted"] | "SumD" >> beam.CombineGlobally(sum), equal_to([len(ids)]), label="Del")


def _qdrant_contents(folder, name):
  client = QdrantClient(path=folder)
  try:
    found, _ = client.scroll(name, limit=10_000, with_vectors=True, with_payload=True)
    return {p.payload["id"]: (np.asarray(p.vector["dense"]), p.payload) for p in found}
  finally:
    client.close()


def _postgres_contents(url, name):
  with psycopg.connect(url) as connection:
    rows = connection.execute(f'SELECT id, embedding::text, text FROM "{name}"').fetchall()
  return {r[0]: (np.asarray(r[1].strip("[]").split(","), np.float32), {"text": r[2]}) for r in rows}


def _check(contents, expected, keep_text):
  assert sorted(contents) == sorted(r.id for r in expected)
  for r in expected:
    vector, payload = contents[r.id]
    assert np.dot(vector, r.embedding) / (np.linalg.norm(vector) * np.linalg.norm(r.embedding)) > 0.99999
    assert payload.get("text") == (r.text if keep_text else None)


def test_qdrant_folder_sync_in_process(tmp_path):
  config = StoreConfig("qdrant", str(tmp_path / "q"), "emb", batch_size=7, keep_text=True)
  old = _records(20, seed=1)
  _seed(config, old)
  changed = _records(5, seed=2)  # doc/0..doc/4, new vectors
  new = _records(6, seed=3, prefix="new")
  deleted = [r.id for r in old[15:]]
  _run(config, changed + new, deleted)
  _check(_qdrant_contents(config.url, "emb"), changed + old[5:15] + new, keep_text=True)


def test_postgres_sync_and_rebuild_target(pg_password):
  config = StoreConfig("postgres", pg_password["url"], "sync_writes", batch_size=4)
  old = _records(20, seed=1)
  _seed(config, old)
  changed = _records(5, seed=2)
  _run(config, changed + _records(3, seed=3, prefix="new"), [r.id for r in old[17:]] + ["never/there"])
  _check(_postgres_contents(config.url, "sync_writes"), changed + old[5:17] + _records(3, seed=3, prefix="new"),
         keep_text=False)
  # Into a rebuild: NAME keeps its rows until the swap.
  store = config.make()
  physical = store.begin_rebuild(DIM, "t1")
  rebuilt = _records(9, seed=4, prefix="re")
  _run(config, rebuilt, [], target=physical)
  assert store.count() == 20 - 3 + 3
  store.drop(store.swap_in(physical))
  store.close()
  _check(_postgres_contents(config.url, "sync_writes"), rebuilt, keep_text=False)


def test_store_config_fails_at_construction_on_a_bad_name():
  with pytest.raises(StoreError, match="table name"):
    StoreConfig("postgres", "postgresql://u@127.0.0.1/db", "Not-A-Table")
  assert not StoreConfig("qdrant", "http://127.0.0.1:6333", "emb").single_writer
