"""The store is as trustworthy as the files (issue 24): nothing reaches NAME before the run's checks pass, the store
records which snapshot it holds, the commit is verified and repaired, and what the job did not create is left alone.
Against PostgreSQL (pgserver) and Qdrant's embedded engine."""
from __future__ import annotations

import json
import socket
import tempfile
import types

import numpy as np
import psycopg
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from qdrant_client import QdrantClient, models

from cli import main as cli
from snapshot import store_plan as vector_store
from snapshot.commit import CommittedRun
from formats.columns import OutputColumns, records_to_examples, records_to_table
from formats.records import EmbeddingRecord
from formats.sinks import tfrecord_frame
from formats.usage import UsageError
from pipeline.run import run
from snapshot.staging import WrittenFile
from snapshot.store_commit import StoreFinalizer
from snapshot.store_verify import VerifyFacts, output_pairs
from stores.base import APPLYING, DIFFERS, HELD, Marker, StoreError, StorePoint
from stores.postgres_store import PostgresStore
from stores.config import StoreConfig
from stores.digest import digest

DIM = 4
_COUNTER = iter(range(10**6))


def _points(ids, seed):
  rng = np.random.default_rng(seed)
  return [StorePoint(i, rng.normal(size=DIM).astype(np.float32), {"text_sha256": f"sha-{i}-{seed}"}) for i in ids]


def _config(kind, url, name):
  return StoreConfig(kind, url, name, batch_size=2)


@pytest.fixture(params=["qdrant", "postgres"])
def config(request, tmp_path):
  name = f"tc_{next(_COUNTER)}"
  if request.param == "qdrant":
    return _config("qdrant", str(tmp_path / "qdrant"), name)
  return _config("postgres", request.getfixturevalue("pg_password")["url"], name)


def _launch(config):
  store = config.make()
  try:
    return vector_store.StoreLaunch(config, store.check(DIM))
  finally:
    store.close()


def _first_plan(config, tag):
  never = types.SimpleNamespace(incremental=False, reason="first", previous=None)
  return vector_store.plan_store(_launch(config), never, tag=tag)


def _sync_plan(config, tag, snapshot, rows):
  launch = _launch(config)
  section = {"kind": config.kind, "url": config.url, "collection": config.name, "physical": launch.state.physical,
             "snapshot": snapshot}
  manifest = {"vector_store": section, "counts": {"rows": rows}}
  previous = types.SimpleNamespace(incremental=True, reason="", previous=types.SimpleNamespace(manifest=manifest))
  return vector_store.plan_store(launch, previous, tag=tag)


def _commit(plan, points, prefix="/out/emb", staged=None, sample=None):
  """What the job and the commit step do for a plan: write its target (`staged`, by default `points`), then
  StoreFinalizer.commit with `points` as the output (in a staged Parquet file of ids and text_sha256, and the job's
  VerifyFacts: their digest, `sample` of them, by default all)."""
  store = plan.config.make()
  begin = store.begin_rebuild if plan.mode == "rebuild" else store.begin_staging
  assert begin(DIM, plan.tag) == plan.target
  staged = points if staged is None else staged
  if staged:
    store.upsert(staged, target=plan.target)
  store.close()
  pairs = [(p.id, p.payload["text_sha256"]) for p in points]
  sample = points if sample is None else sample
  facts = VerifyFacts(digest(pairs), len(sample), tuple((0.0, p) for p in sample))
  with tempfile.TemporaryDirectory() as folder:
    path = f"{folder}/embeddings-0.parquet"
    pq.write_table(pa.table({"id": [i for i, _ in pairs], "text_sha256": [sha for _, sha in pairs]}), path)
    files = (WrittenFile("embeddings", path, 0, "", len(pairs)),)
    run_ = CommittedRun(prefix, {"rows": len(points)}, files, {vector_store.VERIFY_FIELD: facts})
    return StoreFinalizer(plan).commit(run_)


def _staged_sync(config):
  """A sync plan onto snapshot r1 (one point "a"), its staging holding point "b" as the job writes it."""
  plan = _sync_plan(config, "s2", "r1", 1)
  store = config.make()
  store.begin_staging(DIM, "s2")
  store.upsert(_points(["b"], 2), target=plan.target)
  store.close()
  return plan


def _held(config) -> dict:
  store = config.make()
  try:
    return {i: sha for i, sha in store.fingerprints().items()}
  finally:
    store.close()


def test_two_runs_that_saw_one_snapshot_never_both_commit(config):
  first = _commit(_first_plan(config, "r1"), _points(["a", "b"], 1))["vector_store"]
  assert first["snapshot"] == "r1" and first["in_sync"]
  one = _sync_plan(config, "s2", "r1", 2)
  two = _sync_plan(config, "s3", "r1", 2)
  assert one.mode == two.mode == "incremental" and one.expected == Marker("r1", HELD)
  _commit(one, _points(["a", "b", "c"], 2))
  with pytest.raises(StoreError, match="this run saw r1 \\(held\\) at launch") as info:
    _commit(two, _points(["a", "z"], 3))
  assert "applied nothing" in str(info.value) and "\n" not in str(info.value)
  assert _held(config) == {i: f"sha-{i}-2" for i in "abc"}


def test_the_store_records_its_snapshot_and_a_mismatch_means_rebuild(config):
  _commit(_first_plan(config, "r1"), _points(["a", "b"], 1))
  assert _sync_plan(config, "s2", "r1", 2).mode == "incremental"
  other = _sync_plan(config, "s2", "r0", 2)  # the previous output is not what NAME holds: another root wrote it
  assert other.mode == "rebuild" and "holds snapshot r1, the previous output's is r0" in other.reason
  store = config.make()
  store.set_marker(Marker("r1", APPLYING))  # an apply stopped half-way
  store.close()
  interrupted = _sync_plan(config, "s2", "r1", 2)
  assert interrupted.mode == "rebuild" and "apply of snapshot r1" in interrupted.reason


def test_hand_edits_are_found_and_repaired_by_the_verify(config):
  points = _points(["a", "b", "c"], 1)
  _commit(_first_plan(config, "r1"), points)
  store = config.make()
  store.upsert([StorePoint("a", np.ones(DIM, np.float32), {"text_sha256": "sha-a-1"}),  # vector edited by hand
                StorePoint("stray", np.ones(DIM, np.float32), {"text_sha256": "x"})])  # a point of no record
  store.delete(["b"])  # deleted by hand
  store.close()
  section = _commit(_sync_plan(config, "s2", "r1", 3), points, staged=[])["vector_store"]  # a sync writing nothing
  verify = section["verify"]
  assert (verify["missing"], verify["extra"], verify["vectors_differ"], verify["repaired"]) == (1, 1, 1, 3)
  assert section["in_sync"] and _held(config) == {p.id: p.payload["text_sha256"] for p in points}
  store = config.make()
  vector = store.vectors(["a"])["a"]
  store.close()
  if config.kind == "qdrant":  # cosine: the direction is what Qdrant keeps
    vector, expected = vector / np.linalg.norm(vector), points[0].vector / np.linalg.norm(points[0].vector)
    np.testing.assert_allclose(vector, expected, atol=1e-6)
  else:
    np.testing.assert_array_equal(vector, points[0].vector)


def test_the_verify_compares_digests_and_finds_a_hand_edit_outside_the_sample(config):
  points = _points(["a", "é\n漢字 'q'", "c"], 1)  # the store's digest (PostgreSQL: in SQL) equals the output's
  first = _commit(_first_plan(config, "r1"), points, sample=[])["vector_store"]["verify"]
  assert (first["ids_compared"], first["ids_checked"], first["missing"] + first["extra"]) == ("digest", 3, 0)
  store = config.make()
  assert store.digest() == digest((p.id, p.payload["text_sha256"]) for p in points)
  store.upsert([StorePoint("c", points[2].vector, {"text_sha256": "edited"})])  # by hand: the count stays 3
  store.close()
  section = _commit(_sync_plan(config, "s2", "r1", 3), points, staged=[], sample=[])["vector_store"]
  verify = section["verify"]
  assert verify["ids_compared"].startswith("one by one") and (verify["text_changed"], verify["missing"]) == (1, 0)
  assert verify["left_for_next_run"] == 1 and verify["examples"] == ["c"] and not section["in_sync"]
  assert _launch(config).state.marker == Marker("s2", DIFFERS)  # the next run rebuilds


def test_a_verify_that_fails_after_the_apply_keeps_the_run_and_the_next_run_rebuilds(config):
  """Once the apply committed, NAME holds the run's snapshot: a verify that cannot be made (here an output file is
  gone) must not fail the run (LATEST would stay on the previous output), and the next run must not sync onto it."""
  _commit(_first_plan(config, "r1"), _points(["a"], 1))
  plan = _staged_sync(config)
  facts = VerifyFacts(digest([("a", "not-the-output")]), 0, ())  # digests differ: the ids are read from the files
  gone = WrittenFile("embeddings", "/nonexistent-bert-embed/embeddings-0.parquet", 0, "", 2)
  section = StoreFinalizer(plan).commit(
      CommittedRun("/out/emb", {"rows": 2}, (gone,), {vector_store.VERIFY_FIELD: facts}))["vector_store"]
  assert section["in_sync"] is False and "error" in section["verify"]
  assert "verifying it failed" in section["warnings"][0] and "\n" not in section["warnings"][0]
  assert _held(config) == {"a": "sha-a-1", "b": "sha-b-2"}
  manifest = {"vector_store": section, "counts": {"rows": 2}}
  previous = types.SimpleNamespace(incremental=True, reason="", previous=types.SimpleNamespace(manifest=manifest))
  following = vector_store.plan_store(_launch(config), previous, tag="s3")
  assert following.mode == "rebuild" and "unverified" in following.reason
  assert "not verified" in vector_store.summary_line({"vector_store": section, "counts": {}})


def test_the_outputs_pairs_are_read_from_its_parquet_and_tfrecord_files(tmp_path):
  """The one-by-one comparison's expectation: id and text_sha256 of every row of the embeddings files only."""
  records = [EmbeddingRecord(f"doc/{i}", np.full(DIM, i, np.float32), 3, False, f"sha-{i}") for i in range(7)]
  columns = OutputColumns()
  pq.write_table(records_to_table(records[:4], columns, DIM), tmp_path / "embeddings-a.parquet")
  (tmp_path / "embeddings-b.tfrecord").write_bytes(b"".join(
      tfrecord_frame(example) for example in records_to_examples(records[4:], columns, DIM)))
  files = [WrittenFile("embeddings", str(tmp_path / f"embeddings-{n}"), 0, "", 0) for n in ("a.parquet", "b.tfrecord")]
  files.append(WrittenFile("errors", str(tmp_path / "errors-c.jsonl"), 0, "", 0))  # not read (it does not exist)
  assert sorted(output_pairs(files)) == [(r.id, r.text_sha256) for r in records]


def test_a_store_that_fails_during_the_apply_says_what_name_holds(config):
  _commit(_first_plan(config, "r1"), _points(["a"], 1))
  plan = _staged_sync(config)
  if config.kind == "postgres":
    broken = config.url.replace("postgresql://postgres@", "postgresql://nobody@")
  else:
    with socket.socket() as s:
      s.bind(("127.0.0.1", 0))
      broken = f"http://127.0.0.1:{s.getsockname()[1]}"  # nothing listens there
  plan = plan._replace(config=StoreConfig(config.kind, broken, config.name, retries=0))
  with pytest.raises(StoreError, match="nothing was replaced at /out/emb and tc_\\d+ ") as info:
    StoreFinalizer(plan).commit(CommittedRun("/out/emb", {"rows": 2}, (), {}))
  assert "\n" not in str(info.value)
  assert _held(config) == {"a": "sha-a-1"}


def test_an_alias_to_a_collection_the_job_did_not_create_is_refused_and_kept(tmp_path):
  folder = str(tmp_path / "q")
  client = QdrantClient(path=folder)
  client.create_collection("mine", vectors_config={"dense": models.VectorParams(size=DIM,
                                                                                distance=models.Distance.COSINE)})
  client.upsert("mine", points=[models.PointStruct(id=i, vector={"dense": [1.0, 0, 0, 0]}) for i in range(5)])
  client.update_collection_aliases(change_aliases_operations=[models.CreateAliasOperation(
      create_alias=models.CreateAlias(collection_name="mine", alias_name="emb"))])
  client.close()
  options = types.SimpleNamespace(vector_store="qdrant", vector_store_url=folder, vector_collection="emb",
                                  vector_store_batch_size=None, vector_store_retries=0, keep_text=False)
  with pytest.raises(UsageError, match="alias of 'mine' that bert-embed did not create"):
    vector_store.check_store(options, DIM)
  client = QdrantClient(path=folder)
  assert client.count("mine").count == 5
  client.close()


def test_a_postgres_table_the_job_did_not_create_is_refused(pg_password):
  with psycopg.connect(pg_password["url"]) as connection:
    connection.execute("CREATE EXTENSION IF NOT EXISTS vector")
    connection.execute("CREATE TABLE users_own (id text PRIMARY KEY, embedding vector(4))")
  with pytest.raises(StoreError, match="not created by bert-embed"):
    PostgresStore(pg_password["url"], "users_own").check(DIM)


def test_a_replaced_table_that_cannot_be_dropped_is_a_warning_not_a_failure(pg_password):
  config = _config("postgres", pg_password["url"], f"tc_{next(_COUNTER)}")
  _commit(_first_plan(config, "r1"), _points(["a"], 1))
  plan = _first_plan(config, "r2")
  with psycopg.connect(pg_password["url"]) as connection:  # a view made after the launch: the drop fails
    connection.execute(f"CREATE VIEW {config.name}_v AS SELECT id FROM {config.name}")
  section = _commit(plan, _points(["a", "b"], 2))["vector_store"]
  assert section["in_sync"] and len(section["warnings"]) == 1 and "could not be dropped" in section["warnings"][0]
  assert _held(config) == {"a": "sha-a-2", "b": "sha-b-2"}
  store = config.make()
  assert store.abandoned() == [section["replaced"]]
  store.close()


def test_a_postgres_rebuild_keeps_the_users_setup_and_a_view_refuses_it_at_launch(pg_password):
  url, name = pg_password["url"], f"tc_{next(_COUNTER)}"
  config = StoreConfig("postgres", url, name, index="hnsw")
  _commit(_first_plan(config, "r1"), _points(["a", "b"], 1))
  with psycopg.connect(url) as connection:
    connection.execute(f"CREATE INDEX {name}_src ON {name} (source)")
    connection.execute("DO $$ BEGIN CREATE ROLE reader_24; EXCEPTION WHEN duplicate_object THEN NULL; END $$")
    connection.execute(f"GRANT SELECT ON {name} TO reader_24")
    connection.execute(f"ALTER TABLE {name} ENABLE ROW LEVEL SECURITY")
    connection.execute(f"CREATE POLICY only_a ON {name} FOR SELECT TO reader_24 USING (id = 'a')")
  _commit(_first_plan(config, "r2"), _points(["a", "b", "c"], 2))
  with psycopg.connect(url) as connection:
    methods = sorted(r[0] for r in connection.execute(
        "SELECT am.amname FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_am am ON am.oid = c.relam "
        "WHERE i.indrelid = to_regclass(%s)", [name]).fetchall())
    grants = connection.execute("SELECT privilege_type FROM information_schema.role_table_grants "
                                "WHERE table_name = %s AND grantee = 'reader_24'", [name]).fetchall()
    policies = connection.execute("SELECT policyname, qual FROM pg_policies WHERE tablename = %s", [name]).fetchall()
    secure = connection.execute("SELECT relrowsecurity FROM pg_class WHERE oid = to_regclass(%s)", [name]).fetchone()
    connection.execute(f"CREATE VIEW {name}_v AS SELECT id FROM {name}")
  assert methods == ["btree", "btree", "hnsw"]  # the primary key, the user's index, the HNSW index
  assert grants == [("SELECT",)] and secure == (True,)
  assert policies == [("only_a", "(id = 'a'::text)")]
  with pytest.raises(UsageError, match=f"views depend on it \\({name}_v\\)"):
    _first_plan(config, "r3")


# --- through the pipeline (PostgreSQL: one table, few runs) ---


def _run_job(model, corpus, output, url, name, *extra):
  argv = ["--model", model, "--input", corpus, "--input-format", "jsonl", "--output", output, "--seq-length", "32",
          "--vector-store", "postgres", "--vector-store-url", url, "--vector-collection", name,
          "--vector-store-batch-size", "16", *extra]
  return run(argv, test_pipeline=TestPipeline(argv=argv))


def _table(url, name) -> dict:
  with psycopg.connect(url) as connection:
    return dict(connection.execute(f"SELECT id, embedding::text FROM {name}").fetchall())


def test_a_failed_sync_leaves_name_as_it_was_and_the_next_run_repairs_hand_edits(tmp_path, tiny_model_dir,
                                                                                 pg_password, capsys):
  url, root, name = pg_password["url"], tmp_path / "root", f"job_{next(_COUNTER)}"
  corpus = tmp_path / "c.jsonl"
  long_id = "x" * 10240  # over PostgreSQL's btree limit: one dead letter, not a failed run
  corpus.write_text("".join(json.dumps({"id": i, "text": "the cat sat on the mat."}) + "\n"
                            for i in [f"doc/{i}" for i in range(40)] + [long_id]), encoding="utf-8")
  latest = ["--previous", f"latest:{root}"]
  first = _run_job(tiny_model_dir, str(corpus), str(root / "run1" / "emb"), url, name, *latest)
  before = _table(url, name)
  assert len(before) == 40 and first.manifest["vector_store"]["in_sync"]
  assert first.manifest["counts"]["dead_lettered"] == 1 and long_id not in before
  # A rerun with a wrong --id-field dead-letters every record: in sync mode every row counts as deleted.
  argv = ["run", "--model", tiny_model_dir, "--input", str(corpus), "--input-format", "jsonl", "--output",
          str(root / "run2" / "emb"), "--seq-length", "32", "--vector-store", "postgres", "--vector-store-url", url,
          "--vector-collection", name, "--id-field", "nope", *latest]
  assert cli.main(argv) == 1
  err = [line for line in capsys.readouterr().err.splitlines() if "progress" not in line]
  assert len(err) == 1 and "dead-lettered" in err[0] and f"{name} was not changed" in err[0]
  assert _table(url, name) == before  # nothing reached NAME
  second_tag = err[0].split(f"this run's {name}__")[1].split(" ")[0]
  with psycopg.connect(url) as connection:  # hand edits: a vector changed, a row deleted, a row of no record
    connection.execute(f"UPDATE {name} SET embedding = ('[' || repeat('0.5,', 31) || '0.5]')::vector "
                       f"WHERE id = 'doc/1'")
    connection.execute(f"DELETE FROM {name} WHERE id = 'doc/2'")
    connection.execute(f"INSERT INTO {name} (id, embedding) SELECT 'stray', embedding FROM {name} LIMIT 1")
  third = _run_job(tiny_model_dir, str(corpus), str(root / "run3" / "emb"), url, name, *latest,
                   "--vector-store-verify", "all")
  section, counts = third.manifest["vector_store"], third.manifest["counts"]
  assert section["mode"] == "incremental"  # same snapshot, same count: the edits are found by the verify
  assert (section["verify"]["vectors_differ"], section["verify"]["missing"], section["verify"]["extra"]) == (1, 1, 1)
  assert counts["store_repaired"] == 3 and section["in_sync"] and _table(url, name) == before
  assert section["abandoned_dropped"] == [f"{name}__{second_tag}"]  # the failed run's staging table


def test_a_swap_behind_a_readers_transaction_gives_up_in_one_line_and_changes_nothing(pg_password):
  config = StoreConfig("postgres", pg_password["url"], f"tc_{next(_COUNTER)}", retries=0)
  _commit(_first_plan(config, "r1"), _points(["a"], 1))
  plan = _first_plan(config, "r2")
  store = config.make()
  store.begin_rebuild(DIM, "r2")
  store.upsert(_points(["a", "b"], 2), target=plan.target)
  store.close()
  with psycopg.connect(pg_password["url"]) as reader:  # an idle reader's open transaction on NAME
    reader.execute(f"SELECT count(*) FROM {config.name}").fetchone()
    with pytest.raises(StoreError, match="lock timeout") as info:
      StoreFinalizer(plan).commit(CommittedRun("/out/emb", {"rows": 2}, (), {}))
    assert "\n" not in str(info.value) and f"{config.name} was not changed" in str(info.value)
  assert _held(config) == {"a": "sha-a-1"}
  section = StoreFinalizer(plan).commit(CommittedRun("/out/emb", {"rows": 2}, (), {}))["vector_store"]  # retried
  assert section["snapshot"] == "r2" and _held(config) == {"a": "sha-a-2", "b": "sha-b-2"}


CANARY = "canary-pw-7f3a"


def test_a_canary_password_never_appears_in_a_store_error(pgvector_server, monkeypatch):
  monkeypatch.setenv("PGPASSWORD", CANARY)  # wrong: refused
  messages = []
  for url in (pgvector_server["url"], "postgresql://postgres@127.0.0.1:1/postgres"):  # refused; unreachable
    with pytest.raises(StoreError) as info:
      PostgresStore(url, "emb").check(DIM)
    messages.append(str(info.value))
  monkeypatch.setenv("PGPASSWORD", pgvector_server["password"])
  config = _config("postgres", pgvector_server["url"], f"tc_{next(_COUNTER)}")
  section = _commit(_first_plan(config, "r1"), _points(["a"], 1))
  plan = _sync_plan(config, "s2", "r1", 1)
  store = config.make()
  store.begin_staging(DIM, "s2")
  store.close()
  monkeypatch.setenv("PGPASSWORD", CANARY)  # the password is refused by the time of the commit
  with pytest.raises(StoreError) as info:
    StoreFinalizer(plan).commit(CommittedRun("/out/emb", {"rows": 1}, (), {}))
  messages.append(str(info.value))
  assert all(CANARY not in m and "\n" not in m for m in messages), messages
  assert "tc_" in messages[-1] and "was not changed" in messages[-1]
  assert CANARY not in json.dumps(section)
