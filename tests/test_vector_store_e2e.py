"""--vector-store end to end: after every run the store holds exactly the run's Parquet rows.

Qdrant (embedded engine in a folder): v1 of a corpus, v2 with records deleted, changed (one of them now
dead-lettered) and added, a rerun that writes nothing, another --pooling that rebuilds and swaps, and a failed run
that leaves NAME on the last complete collection. PostgreSQL with pgvector: v1, v2 and a kNN query through SQL.
Launch checks: unreachable store, dimension mismatch."""
from __future__ import annotations

import json
import socket
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
from formats.usage import UsageError
from pipeline.run import run
from stores.base import HELD, Marker, StorePoint
from stores.qdrant_store import QdrantStore, point_id

SEQ = 32
WORDS = ("the cat dog bird fish sat run walk jump play on the mat hat house tree car hello world good bad big "
         "small red blue green quick brown fox lazy over under up down day night").split()


def _texts(rng, n):
  return [" ".join(rng.choice(WORDS, size=rng.integers(3, 12))) + "." for _ in range(n)]


def _corpus(path, records):
  with open(path, "w", encoding="utf-8") as f:
    for record_id, text in records.items():
      f.write(json.dumps({"id": record_id, "text": text}) + "\n")
  return str(path)


def _argv(model, corpus, output, store, url, name, *extra):
  return ["--model", model, "--input", corpus, "--input-format", "jsonl", "--output", output, "--seq-length",
          str(SEQ), "--vector-store", store, "--vector-store-url", url, "--vector-collection", name,
          "--vector-store-batch-size", "16", *extra]


def _run(argv):
  return run(argv, test_pipeline=TestPipeline(argv=argv))


def _parquet(outcome) -> dict:
  tables = [pq.read_table(f) for f in outcome.manifest["output_files"]]
  return {r["id"]: np.asarray(r["embedding"], np.float32) for r in pa.concat_tables(tables).to_pylist()}


def _qdrant(folder, name) -> tuple[dict, str]:
  """{record id: vector} behind NAME, and the physical collection it resolves to (read by a fresh client)."""
  client = QdrantClient(path=folder)
  try:
    physical = {a.alias_name: a.collection_name for a in client.get_aliases().aliases}[name]
    found, offset, out = [], None, {}
    while True:
      page, offset = client.scroll(name, limit=256, offset=offset, with_vectors=True)
      found += page
      if offset is None:
        break
    for p in found:
      assert p.payload["id"] not in out, "stored twice"
      assert p.id == point_id(p.payload["id"])
      out[p.payload["id"]] = np.asarray(p.vector["dense"], np.float32)
    return out, physical
  finally:
    client.close()


def _same_vectors(store: dict, parquet: dict):
  assert sorted(store) == sorted(parquet)
  for record_id, vector in parquet.items():
    got = store[record_id]
    assert np.dot(got, vector) / (np.linalg.norm(got) * np.linalg.norm(vector)) > 0.99999, record_id


def _versions(tmp):
  """v1: 120 records doc/0..doc/119; v2: 10 deleted, 15 changed (one of them to a blank text: dead-lettered),
  10 added."""
  rng = np.random.default_rng(11)
  v1 = {f"doc/{i}": text for i, text in enumerate(_texts(rng, 120))}
  v2 = dict(v1)
  deleted = [f"doc/{i}" for i in range(0, 100, 10)]
  changed = [f"doc/{i}" for i in range(5, 80, 5) if i % 10]  # 5, 15, ..., 75: 8; plus 7 more below
  changed += [f"doc/{i}" for i in (101, 103, 105, 107, 109, 111, 113)]
  for record_id in deleted:
    del v2[record_id]
  for record_id, text in zip(changed, _texts(rng, len(changed))):
    v2[record_id] = text
  v2[changed[0]] = "   "  # changed, and now dead-lettered: it must leave the store
  added = {f"new/{i}": text for i, text in enumerate(_texts(rng, 10))}
  v2.update(added)
  assert len(changed) == 15
  return types.SimpleNamespace(v1=_corpus(tmp / "v1.jsonl", v1), v2=_corpus(tmp / "v2.jsonl", v2),
                               deleted=deleted, changed=changed, added=list(added), dead=changed[0])


@pytest.fixture(scope="module")
def qdrant_cycle(tmp_path_factory, tiny_model_dir):
  tmp = tmp_path_factory.mktemp("qdrant_cycle")
  root, folder = tmp / "root", str(tmp / "qdrant")
  versions = _versions(tmp)
  latest = ["--previous", f"latest:{root}"]

  def go(corpus, run_name, *extra):
    return _run(_argv(tiny_model_dir, corpus, str(root / run_name / "emb"), "qdrant", folder, "emb", *latest,
                      *extra))

  out = types.SimpleNamespace(folder=folder, versions=versions)
  out.run1 = go(versions.v1, "run1", "--pooling", "cls")
  out.after1 = _qdrant(folder, "emb")
  out.run2 = go(versions.v2, "run2", "--pooling", "cls")
  out.after2 = _qdrant(folder, "emb")
  out.run3 = go(versions.v2, "run3", "--pooling", "cls")
  out.after3 = _qdrant(folder, "emb")
  out.run4 = go(versions.v2, "run4", "--pooling", "mean")
  out.after4 = _qdrant(folder, "emb")
  # A run that fails its checks after writing a whole rebuild (another pooling): every record but one is blank.
  rng = np.random.default_rng(3)
  failing = _corpus(tmp / "v3.jsonl", {**{f"blank/{i}": " " for i in range(30)}, "doc/1": _texts(rng, 1)[0]})
  with pytest.raises(Exception, match="dead-lettered"):
    go(failing, "run5", "--pooling", "cls")
  out.after5 = _qdrant(folder, "emb")
  client = QdrantClient(path=folder)
  out.collections = sorted(c.name for c in client.get_collections().collections)
  client.close()
  return out


def test_first_run_creates_the_collection_and_alias_with_the_output(qdrant_cycle):
  m = qdrant_cycle.run1.manifest
  assert m["vector_store"]["mode"] == "rebuild" and "emb does not exist yet" in m["vector_store"]["reason"] or \
      "re-embeds every record" in m["vector_store"]["reason"]
  assert m["counts"]["store_upserted"] == 120 and m["counts"]["store_deleted"] == 0
  store, physical = qdrant_cycle.after1
  assert physical.startswith("emb__") and m["vector_store"]["physical"] == physical
  _same_vectors(store, _parquet(qdrant_cycle.run1))


def test_second_run_syncs_new_changed_deleted_and_dead_lettered(qdrant_cycle):
  v, m = qdrant_cycle.versions, qdrant_cycle.run2.manifest
  c = m["counts"]
  assert m["vector_store"]["mode"] == "incremental" and m["vector_store"]["in_sync"]
  # The blank text is dead-lettered when read, before the join: it counts as deleted, not changed.
  assert (c["new"], c["changed"], c["deleted"], c["dead_lettered"]) == (10, 14, 11, 1)
  assert c["store_upserted"] == 10 + 14  # new + changed that encoded
  assert c["store_deleted"] == 10 + 1  # deleted + changed-now-dead-lettered
  store, physical = qdrant_cycle.after2
  assert physical == qdrant_cycle.after1[1]  # synced in place, no new collection
  parquet = _parquet(qdrant_cycle.run2)
  _same_vectors(store, parquet)
  assert v.dead not in store and not set(v.deleted) & set(store) and set(v.added) <= set(store)
  assert len(store) == 120 - 10 + 10 - 1
  unchanged = [i for i in qdrant_cycle.after1[0] if i not in v.changed and i not in v.deleted]
  for record_id in unchanged:
    np.testing.assert_array_equal(store[record_id], qdrant_cycle.after1[0][record_id])


def test_a_rerun_of_the_same_input_writes_nothing(qdrant_cycle):
  assert vector_store.summary_line(qdrant_cycle.run3.manifest) == (
      "bert-embed: qdrant emb synced: 0 upserted, 0 deleted, 119 points; verified 119 ids and 119 vectors, "
      "0 repaired")
  c = qdrant_cycle.run3.manifest["counts"]
  assert (c["encoded"], c["store_upserted"], c["store_deleted"]) == (0, 0, 0)
  assert qdrant_cycle.after3[1] == qdrant_cycle.after2[1]
  _same_vectors(qdrant_cycle.after3[0], _parquet(qdrant_cycle.run3))


def test_another_pooling_rebuilds_and_swaps_the_alias(qdrant_cycle):
  m = qdrant_cycle.run4.manifest
  assert m["vector_store"]["mode"] == "rebuild" and "fingerprint changed" in m["vector_store"]["reason"]
  assert m["counts"]["store_upserted"] == m["counts"]["rows"] == 119
  store, physical = qdrant_cycle.after4
  assert physical != qdrant_cycle.after3[1] and m["vector_store"]["replaced"] == qdrant_cycle.after3[1]
  parquet = _parquet(qdrant_cycle.run4)
  _same_vectors(store, parquet)
  old = qdrant_cycle.after3[0]
  cosines = [float(np.dot(old[i], parquet[i]) / (np.linalg.norm(old[i]) * np.linalg.norm(parquet[i]))) for i in parquet]
  assert max(cosines) < 0.99999  # every vector replaced


def test_a_failed_run_leaves_the_alias_on_the_last_complete_collection(qdrant_cycle):
  store, physical = qdrant_cycle.after5
  assert physical == qdrant_cycle.after4[1]
  _same_vectors(store, _parquet(qdrant_cycle.run4))
  # The failed run's rebuild stays until the next run; the replaced ones were dropped; emb__meta holds the marker.
  assert qdrant_cycle.after3[1] not in qdrant_cycle.collections
  assert len(qdrant_cycle.collections) == 3 and {physical, "emb__meta"} <= set(qdrant_cycle.collections)


def test_sync_cycle_on_the_multi_process_runner_writes_the_folder_from_one_process(tmp_path, tiny_model_dir):
  """The embedded engine locks its folder to one process: the writes of both runs are gathered to one writer."""
  root, folder = tmp_path / "root", str(tmp_path / "qdrant")
  versions = _versions(tmp_path)
  for name, corpus, mode, runner in (
      ("run1", versions.v1, "rebuild", None),  # in-process: only the second run needs the other runner
      ("run2", versions.v2, "incremental", ["--direct_num_workers=2", "--direct_running_mode=multi_processing"])):
    argv = _argv(tiny_model_dir, corpus, str(root / name / "emb"), "qdrant", folder, "emb", "--previous",
                 f"latest:{root}", "--pooling", "cls", *(runner or []))
    outcome = run(argv) if runner else _run(argv)
    assert outcome.manifest["vector_store"]["mode"] == mode
    _same_vectors(_qdrant(folder, "emb")[0], _parquet(outcome))
  assert (outcome.manifest["counts"]["store_upserted"], outcome.manifest["counts"]["store_deleted"]) == (24, 11)


# --- PostgreSQL with pgvector ---


def _postgres(url, table) -> dict:
  with psycopg.connect(url) as connection:
    rows = connection.execute(f'SELECT id, embedding::text FROM "{table}"').fetchall()
  return {r[0]: np.asarray(r[1].strip("[]").split(","), np.float32) for r in rows}


def test_postgres_cycle_and_knn_through_sql(tmp_path, tiny_model_dir, pg_password):
  url, root = pg_password["url"], tmp_path / "root"
  versions = _versions(tmp_path)
  runs = []
  for name, corpus in (("run1", versions.v1), ("run2", versions.v2)):
    runs.append(_run(_argv(tiny_model_dir, corpus, str(root / name / "emb"), "postgres", url, "emb_pg",
                           "--previous", f"latest:{root}", "--pooling", "cls")))
    parquet = _parquet(runs[-1])
    stored = _postgres(url, "emb_pg")
    assert sorted(stored) == sorted(parquet)
    for record_id, vector in parquet.items():
      np.testing.assert_array_equal(stored[record_id], vector)  # pgvector keeps float32 exactly
  c = runs[1].manifest["counts"]
  assert runs[1].manifest["vector_store"]["mode"] == "incremental"
  assert (c["store_upserted"], c["store_deleted"]) == (24, 11)
  ids = sorted(parquet)
  matrix = np.stack([parquet[i] for i in ids])
  query = parquet["new/3"] + 0.01
  cosine = matrix @ query / (np.linalg.norm(matrix, axis=1) * np.linalg.norm(query))
  with psycopg.connect(url) as connection:
    nearest = connection.execute("SELECT id FROM emb_pg ORDER BY embedding <=> %s::vector LIMIT 1",
                                 ["[" + ",".join(map(repr, query.tolist())) + "]"]).fetchone()[0]
  assert nearest == ids[int(np.argmax(cosine))] == "new/3"


# --- launch checks ---


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@pytest.mark.parametrize("case", ["unreachable", "dimension"])
def test_store_problems_fail_at_launch_in_one_line_before_anything_is_written(
    case, tmp_path, tiny_model_dir, capsys, monkeypatch):
  corpus = _corpus(tmp_path / "c.jsonl", {"a": "the cat sat.", "b": "a dog ran."})
  output = tmp_path / "out" / "emb"
  if case == "unreachable":
    store = ["qdrant", f"http://127.0.0.1:{_free_port()}", "emb"]
    expected = "not reachable"
  else:
    folder = str(tmp_path / "q")
    made = QdrantStore(folder, "emb")
    made.ensure(8)  # the tiny model's vectors have 32 dimensions
    made.close()
    store = ["qdrant", folder, "emb"]
    expected = "dimension 8, the model's is 32"
  monkeypatch.setenv("QDRANT_API_KEY", "")
  code = cli.main(["run", *_argv(tiny_model_dir, corpus, str(output), *store), "--vector-store-retries", "0"])
  err = capsys.readouterr().err.strip().splitlines()
  assert code == 2
  assert len(err) == 1 and err[0].startswith("bert-embed run: error: --vector-store") and expected in err[0]
  assert not output.parent.exists()  # nothing written or encoded


def _launch_options(url, **over):
  return types.SimpleNamespace(**{"vector_store": "qdrant", "vector_store_url": url, "vector_collection": "emb",
                                  "vector_store_batch_size": 16, "vector_store_retries": 0, "keep_text": False,
                                  **over})


def test_a_qdrant_folder_is_refused_for_a_remote_runner(tmp_path):
  with pytest.raises(UsageError, match="remote workers cannot reach"):
    vector_store.check_store(_launch_options(str(tmp_path / "q")), 32, remote_runner=True)
  assert not (tmp_path / "q").exists()


def test_the_plan_rebuilds_when_the_store_is_not_what_the_previous_run_left(tmp_path):
  folder = str(tmp_path / "q")
  store = QdrantStore(folder, "emb")
  store.swap_in(store.begin_rebuild(4, "a"))
  store.upsert([StorePoint("x", np.ones(4, np.float32), {})])
  store.close()
  launch = vector_store.check_store(_launch_options(folder), 4)
  section = {"kind": "qdrant", "url": folder, "collection": "emb", "physical": "emb__a"}

  def plan(rows=1, **changes):
    manifest = {"vector_store": {**section, **changes}, "counts": {"rows": rows}}
    previous = types.SimpleNamespace(incremental=True, reason="", previous=types.SimpleNamespace(manifest=manifest))
    return vector_store.plan_store(launch, previous, tag="t")

  assert "records no snapshot" in plan().reason  # written without a marker (as by an earlier version)
  store = QdrantStore(folder, "emb")
  store.set_marker(Marker("r0", HELD))
  store.close()
  launch = vector_store.check_store(_launch_options(folder), 4)
  section["snapshot"] = "r0"
  assert plan().mode == "incremental" and plan().target == "emb__t"  # staged in emb__t, applied at the commit
  assert plan(rows=2).mode == "rebuild" and "holds 1 points, the previous output 2 rows" in plan(rows=2).reason
  assert "another job replaced it" in plan(physical="emb__b").reason
  assert "did not write emb" in plan(url="/elsewhere").reason
  assert plan(rows=2).target == "emb__t"
  # A NAME that is a plain collection was not made by the job: refused at launch.
  client = QdrantClient(path=folder)
  client.create_collection("plain", vectors_config={"dense": models.VectorParams(size=4,
                                                                                 distance=models.Distance.COSINE)})
  client.close()
  with pytest.raises(UsageError, match="not an alias"):
    vector_store.check_store(_launch_options(folder, vector_collection="plain"), 4)


@pytest.mark.parametrize("extra, expected", [
    (["--output-dtype", "int8"], "does not go with --output-dtype"),
    ([], "needs --vector-collection"),
    (["--vector-collection", "emb", "--no-embeddings", "--mlm-scores"], "needs embeddings"),
])
def test_store_options_that_do_not_go_together_are_refused_before_anything_loads(tmp_path, capsys, extra, expected):
  corpus = _corpus(tmp_path / "c.jsonl", {"a": "the cat sat."})
  argv = ["run", "--model", "default", "--input", corpus, "--input-format", "jsonl", "--output", str(tmp_path / "o"),
          "--vector-store", "qdrant", "--vector-store-url", str(tmp_path / "q"), *extra]
  if "--vector-collection" not in extra and expected != "needs --vector-collection":
    argv += ["--vector-collection", "emb"]
  assert cli.main(argv) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and expected in err[0]


@pytest.mark.parametrize("flag", ["--vector-store-batch-size", "--vector-store-retries"])
def test_store_tuning_without_a_store_is_refused(tmp_path, capsys, flag):
  corpus = _corpus(tmp_path / "c.jsonl", {"a": "the cat sat."})
  argv = ["run", "--model", "default", "--input", corpus, "--input-format", "jsonl", "--output", str(tmp_path / "o"),
          flag, "10"]
  assert cli.main(argv) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and f"{flag} need(s) --vector-store" in err[0]
