"""The vector stores against real engines: Qdrant's embedded engine in a folder, and a PostgreSQL server with pgvector
started by the session (tests/conftest.py). Every read-back goes through the engine's own client, not the store."""
from __future__ import annotations

import hashlib
import pickle
import socket
import subprocess
import sys
import threading

import numpy as np
import psycopg
import pytest
from qdrant_client import QdrantClient

import stores
from formats.records import EmbeddingRecord
from stores.base import PAYLOAD_FIELDS, StoreError, StorePoint, VectorStore
from stores.config import StoreConfig
from stores.points import point_from_record
from stores.postgres_store import PostgresStore
from stores.qdrant_store import QdrantStore, point_id

DIM = 4
IDS = ["doc/7", "docs/a.txt:12", "x#0", "ünïcode id", "plain"]


def _points(ids, seed, dim=DIM, source="in.jsonl"):
  rng = np.random.default_rng(seed)
  return [StorePoint(i, rng.normal(size=dim).astype(np.float32), {"text_sha256": f"sha-{i}-{seed}", "source": source})
          for i in ids]


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


# --- reading back through each engine's own client ---


def _read_qdrant(store: QdrantStore, collection=None) -> dict:
  """{record id: (vector, payload)} of NAME (or `collection`), read by a fresh client on the folder."""
  store.close()
  client = QdrantClient(path=store.url)
  try:
    aliases = {a.alias_name: a.collection_name for a in client.get_aliases().aliases}
    name = collection or aliases.get(store.name, store.name)
    out = {}
    offset = None
    while True:
      found, offset = client.scroll(name, limit=100, offset=offset, with_vectors=True, with_payload=True)
      for p in found:
        assert p.id == point_id(p.payload["id"])
        assert p.payload["id"] not in out, "stored twice"
        out[p.payload["id"]] = (np.asarray(p.vector["dense"], np.float32), p.payload)
      if offset is None:
        return out
  finally:
    client.close()


def _read_postgres(store: PostgresStore, table=None) -> dict:
  with psycopg.connect(store.url) as connection:
    rows = connection.execute(
        f'SELECT id, embedding::text, text_sha256, source, text, parent_id, chunk_index FROM "{table or store.name}"'
    ).fetchall()
  out = {}
  for row in rows:
    payload = dict(zip(["text_sha256", "source", "text", "parent_id", "chunk_index"], row[2:]))
    out[row[0]] = (np.asarray(row[1].strip("[]").split(","), np.float32),
                   {k: v for k, v in payload.items() if v is not None})
  return out


def _read(store: VectorStore, target=None) -> dict:
  return _read_qdrant(store, target) if isinstance(store, QdrantStore) else _read_postgres(store, target)


def _cosine(a, b) -> float:
  return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


def _assert_holds(store, points, target=None):
  """The store holds exactly `points`: same ids, each vector equal up to Qdrant's normalisation, same payload."""
  found = _read(store, target)
  assert sorted(found) == sorted(p.id for p in points)
  for p in points:
    vector, payload = found[p.id]
    assert _cosine(vector, p.vector) > 0.99999
    if isinstance(store, PostgresStore):
      np.testing.assert_array_equal(vector, p.vector)  # pgvector keeps float32 exactly
    assert payload["text_sha256"] == p.payload["text_sha256"]


_COUNTER = iter(range(10**6))


@pytest.fixture(params=["qdrant", "postgres"])
def store(request, tmp_path):
  """A fresh store of each kind under a new NAME."""
  name = f"emb_{next(_COUNTER)}"
  if request.param == "qdrant":
    made = QdrantStore(str(tmp_path / "qdrant"), name, batch_size=2)
  else:
    facts = request.getfixturevalue("pg_password")
    made = PostgresStore(facts["url"], name, batch_size=2)
  yield made
  made.close()


# --- semantics of the one interface ---


def test_missing_name_is_reported_and_ensure_creates_it(store):
  state = store.check(DIM)
  assert (state.exists, state.dimension, state.count) == (False, None, 0)
  store.ensure(DIM)
  state = store.check(DIM)
  assert (state.exists, state.dimension, state.count) == (True, DIM, 0)
  store.ensure(DIM)  # a second time changes nothing
  assert store.check(DIM).count == 0


def test_upsert_overwrites_by_id_and_delete_removes(store):
  store.ensure(DIM)
  first = _points(IDS, seed=1)
  assert store.upsert(first) == len(IDS)
  assert store.upsert(first) == len(IDS)  # a retried batch or a rerun: no duplicates
  assert store.count() == len(IDS)
  _assert_holds(store, first)
  changed = _points(IDS[:2], seed=2) + _points(["new/1"], seed=3)
  store.upsert(changed)
  expected = changed + first[2:]
  assert store.count() == len(IDS) + 1
  _assert_holds(store, expected)
  assert store.delete(["doc/7", "x#0", "never/stored"]) == 3
  _assert_holds(store, [p for p in expected if p.id not in ("doc/7", "x#0")])
  assert store.count() == len(IDS) - 1


def test_rebuild_is_invisible_until_the_swap_then_replaces_everything(store):
  store.ensure(DIM)
  old = _points(IDS, seed=1)
  store.upsert(old)
  new = _points(IDS[1:] + ["only/new"], seed=5, dim=2 * DIM)  # another model: another dimension
  physical = store.begin_rebuild(2 * DIM, "run1")
  assert physical != store.name
  store.upsert(new[:3], target=physical)
  _assert_holds(store, old)  # readers of NAME: the old complete set
  assert store.check(DIM).count == len(IDS)
  store.upsert(new[3:], target=physical)
  assert store.count(physical) == len(new)
  _assert_holds(store, old)
  previous = store.swap_in(physical)
  assert previous is not None
  _assert_holds(store, new)  # the new complete set, nothing of the old
  assert store.swap_in(physical) is None  # a retried commit changes nothing
  _assert_holds(store, new)
  assert store.check(2 * DIM).dimension == 2 * DIM
  with pytest.raises(StoreError, match=f"dimension {2 * DIM}"):
    store.check(DIM)
  assert store.count(previous) == len(IDS)  # kept until dropped
  store.drop(previous)
  with pytest.raises(StoreError, match="not dropped"):
    store.drop(physical if isinstance(store, QdrantStore) else store.name)
  # Incremental changes now go to the rebuilt collection behind NAME.
  store.delete(["only/new"])
  assert store.count() == len(new) - 1


def test_first_rebuild_creates_name_and_rebuilds_with_a_reused_tag_work(store):
  first = _points(IDS[:2], seed=1)
  physical = store.begin_rebuild(DIM, "a")
  store.upsert(first, target=physical)
  assert store.swap_in(physical) is None
  _assert_holds(store, first)
  for round_ in range(2):  # the same tag again, twice
    again = _points(IDS[round_:round_ + 3], seed=10 + round_)
    physical = store.begin_rebuild(DIM, "b")
    store.upsert(again, target=physical)
    store.drop(store.swap_in(physical))
    _assert_holds(store, again)


def test_an_abandoned_rebuild_leaves_name_alone_and_is_dropped_by_the_next(store):
  store.ensure(DIM)
  old = _points(IDS, seed=1)
  store.upsert(old)
  physical = store.begin_rebuild(DIM, "killed")
  store.upsert(_points(["half/1", "half/2"], seed=2), target=physical)
  store.close()  # the run dies here: no swap
  _assert_holds(store, old)
  assert store.begin_rebuild(DIM, "killed") == physical
  assert store.count(physical) == 0
  _assert_holds(store, old)


def test_dimension_mismatch_is_one_line_and_changes_nothing(store):
  store.ensure(DIM)
  store.upsert(_points(IDS, seed=1))
  for call in (lambda: store.check(DIM + 1), lambda: store.ensure(DIM + 1)):
    with pytest.raises(StoreError) as info:
      call()
    message = str(info.value)
    assert "\n" not in message and f"dimension {DIM}" in message and f"is {DIM + 1}" in message
  assert store.count() == len(IDS)


def test_payload_carries_the_optional_fields(store):
  store.ensure(DIM)
  record = EmbeddingRecord(id="doc/7#1", embedding=np.arange(DIM, dtype=np.float32) + 1, num_tokens=5,
                           truncated=False, text_sha256="abc", text="the cat", parent_id="doc/7", chunk_index=1,
                           chunk_start_piece=np.int32(4), chunk_end_piece=9, source="in.jsonl")
  store.upsert([point_from_record(record, keep_text=True), point_from_record(record._replace(id="b"))])
  found = _read(store)
  assert found["doc/7#1"][1]["text"] == "the cat"
  assert found["doc/7#1"][1]["parent_id"] == "doc/7" and found["doc/7#1"][1]["chunk_index"] == 1
  assert found["doc/7#1"][1]["source"] == "in.jsonl"
  assert "text" not in found["b"][1]
  with pytest.raises(ValueError, match="unknown payload field"):
    store.upsert([StorePoint("z", np.ones(DIM, np.float32), {"colour": "red"})])
  with pytest.raises(ValueError, match="not finite"):
    store.upsert([StorePoint("z", np.full(DIM, np.nan, np.float32), {})])


def test_a_store_pickles_without_its_connection_and_reconnects(store):
  store.ensure(DIM)
  store.upsert(_points(IDS[:1], seed=1))
  copy = pickle.loads(pickle.dumps(store))
  assert copy._client is None  # pylint: disable=protected-access
  assert copy.count() == 1
  copy.close()


def test_make_store_and_names():
  with pytest.raises(StoreError, match="unknown vector store"):
    stores.make_store("milvus", "x", "n")
  with pytest.raises(StoreError, match="without '__'"):
    stores.make_store("qdrant", "/tmp/q", "a__b")
  with pytest.raises(StoreError, match="table name"):
    stores.make_store("postgres", "postgresql://u@h/db", "Bad-Name")
  with pytest.raises(StoreError, match="local folder"):
    stores.make_store("qdrant", "gs://bucket/q", "n")
  assert set(PAYLOAD_FIELDS) >= {"id", "text_sha256", "source", "text"}


def test_a_postgres_store_config_never_imports_qdrant_client():
  """Deciding how a PostgreSQL run writes (StoreConfig.single_writer, at graph construction) does not import the
  Qdrant client, which alone takes seconds to import."""
  code = ("import sys; from stores.config import StoreConfig; "
          "c = StoreConfig('postgres', 'postgresql://u@h/db', 'emb'); assert not c.single_writer; "
          "print(sorted(m for m in sys.modules if m.startswith(('qdrant_client', 'stores.qdrant'))))")
  done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
  assert done.stdout.strip() == "[]"
  assert StoreConfig("qdrant", "/tmp/q", "emb").single_writer
  assert not StoreConfig("qdrant", "http://h", "emb").single_writer


# --- Qdrant ---


def _uuid5_by_hand(namespace: str, name: str) -> str:
  """RFC 4122 name-based UUID, version 5: SHA-1 of namespace bytes + name, version and variant bits set."""
  digest = bytearray(hashlib.sha1(bytes.fromhex(namespace.replace("-", "")) + name.encode("utf-8")).digest()[:16])
  digest[6] = (digest[6] & 0x0F) | 0x50
  digest[8] = (digest[8] & 0x3F) | 0x80
  h = digest.hex()
  return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def test_point_ids_are_fixed_uuid5_of_the_record_id():
  # The namespace is part of the stored data: changing it would orphan every existing point.
  assert point_id("doc/7") == _uuid5_by_hand("16c6bab5-6356-40ed-b717-2d7afb3b444a", "doc/7")
  assert point_id("doc/7") == "996d7eaf-5175-52f2-b1b9-1b6abb3c3ef1"
  assert point_id("docs/a.txt:12") == _uuid5_by_hand("16c6bab5-6356-40ed-b717-2d7afb3b444a", "docs/a.txt:12")
  assert point_id("a") != point_id("b")


def test_qdrant_stores_of_one_folder_share_a_client_across_threads(tmp_path):
  folder = str(tmp_path / "q")
  writers = [QdrantStore(folder, "shared", batch_size=3) for _ in range(3)]
  writers[0].ensure(DIM)
  errors = []

  def write(k):
    try:
      writers[k].upsert(_points([f"t{k}/{i}" for i in range(20)], seed=k))
    except Exception as e:  # pylint: disable=broad-except
      errors.append(e)

  threads = [threading.Thread(target=write, args=(k,)) for k in range(3)]
  for t in threads:
    t.start()
  for t in threads:
    t.join()
  assert errors == []
  assert writers[1].count() == 60
  for w in writers:
    w.close()
  assert len(_read_qdrant(QdrantStore(folder, "shared"))) == 60


def test_qdrant_folder_held_by_another_process_is_one_line_error(tmp_path):
  folder = str(tmp_path / "q")
  holder = subprocess.Popen(
      [sys.executable, "-c", "import sys; from qdrant_client import QdrantClient; c = QdrantClient(path=sys.argv[1]);"
       " print('ready', flush=True); sys.stdin.read()", folder],
      stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
  try:
    assert holder.stdout.readline().strip() == "ready"
    with pytest.raises(StoreError, match="in use by another process") as info:
      QdrantStore(folder, "n").check(DIM)
    assert "\n" not in str(info.value)
  finally:
    holder.stdin.close()
    holder.wait(timeout=60)


def test_qdrant_server_url_unreachable_is_one_line_error(monkeypatch):
  monkeypatch.setenv("QDRANT_API_KEY", "secret-key-value")
  store = QdrantStore(f"http://127.0.0.1:{_free_port()}", "n", retries=0)
  with pytest.raises(StoreError, match="not reachable") as info:
    store.check(DIM)
  message = str(info.value)
  assert "\n" not in message and "secret-key-value" not in message


def test_qdrant_server_refusing_the_api_key_is_one_line_error(monkeypatch):
  """No Qdrant server runs offline: a loopback endpoint stands in for its authentication, answering every request
  without the right `api-key` header with 401 and Qdrant's JSON error body, as a server started with an API key
  does. The store must say the key was refused (and where it comes from) in one line, without the key."""
  import http.server  # pylint: disable=import-outside-toplevel
  import json  # pylint: disable=import-outside-toplevel

  seen = []

  class Auth(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # pylint: disable=invalid-name
      seen.append(self.headers.get("api-key"))
      body = json.dumps({"status": {"error": "Must provide an API key or an Authorization bearer token"},
                         "time": 0.0}).encode()
      self.send_response(401)
      self.send_header("Content-Type", "application/json")
      self.send_header("Content-Length", str(len(body)))
      self.end_headers()
      self.wfile.write(body)

    def log_message(self, *args):  # pylint: disable=arguments-differ
      pass

  server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Auth)
  thread = threading.Thread(target=server.serve_forever, daemon=True)
  thread.start()
  try:
    monkeypatch.setenv("QDRANT_API_KEY", "wrong-key-value")
    store = QdrantStore(f"http://127.0.0.1:{server.server_address[1]}", "n", retries=2)
    with pytest.raises(StoreError, match=r"refused the API key \(401; key from \$QDRANT_API_KEY\)") as info:
      store.check(DIM)
  finally:
    server.shutdown()
    server.server_close()
  message = str(info.value)
  assert "\n" not in message and "wrong-key-value" not in message
  assert seen == ["wrong-key-value"]  # the key went in the header, and a refusal is not retried


# --- PostgreSQL ---


@pytest.mark.parametrize("dim", [DIM, 384])  # pgvector's distance loops take other code paths from 16 dimensions on
def test_postgres_knn_through_sql_returns_the_brute_force_nearest(pg_password, dim):
  store = PostgresStore(pg_password["url"], f"knn{dim}")
  store.ensure(dim)
  points = _points([f"doc/{i}" for i in range(40)], seed=7, dim=dim)
  store.upsert(points)
  store.close()
  query = np.random.default_rng(8).normal(size=dim).astype(np.float32)
  sims = [_cosine(p.vector, query) for p in points]
  expected = [points[i].id for i in np.argsort(sims)[::-1][:3]]
  with psycopg.connect(pg_password["url"]) as connection:
    rows = connection.execute(f"SELECT id FROM knn{dim} ORDER BY embedding <=> %s::vector LIMIT 3",
                              ["[" + ",".join(map(str, query.tolist())) + "]"]).fetchall()
  assert [r[0] for r in rows] == expected


def test_postgres_adds_missing_payload_columns_to_an_existing_table(pg_password):
  with psycopg.connect(pg_password["url"]) as connection:
    connection.execute("CREATE EXTENSION IF NOT EXISTS vector")
    connection.execute("CREATE TABLE older (id text PRIMARY KEY, embedding vector(4), text_sha256 text)")
    connection.execute("COMMENT ON TABLE older IS 'bert-embed rebuild older__r1'")  # an earlier version's
  store = PostgresStore(pg_password["url"], "older")
  assert store.check(DIM).exists
  store.ensure(DIM)
  store.upsert(_points(["a"], seed=1, source="s.txt"))
  assert _read_postgres(store)["a"][1]["source"] == "s.txt"
  store.close()


def test_postgres_wrong_password_and_unreachable_port_are_one_line_errors(pgvector_server, monkeypatch):
  monkeypatch.setenv("PGPASSWORD", "wrong")
  with pytest.raises(StoreError, match="refused the login|password") as info:
    PostgresStore(pgvector_server["url"], "n").check(DIM)
  assert "\n" not in str(info.value)
  monkeypatch.setenv("PGPASSWORD", pgvector_server["password"])
  with pytest.raises(StoreError, match="not reachable") as info:
    PostgresStore(f"postgresql://postgres@127.0.0.1:{_free_port()}/postgres", "n").check(DIM)
  assert "\n" not in str(info.value)


def test_postgres_url_with_a_password_is_refused():
  with pytest.raises(StoreError, match="PGPASSWORD"):
    PostgresStore("postgresql://u:hunter2@127.0.0.1:5432/db", "n")
  with pytest.raises(StoreError, match="postgresql://"):
    PostgresStore("mysql://u@h/db", "n")
