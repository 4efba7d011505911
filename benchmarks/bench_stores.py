"""Points/s written to each vector store through the stores/ interface (one process, one writer).

Writes N random float32 vectors (dimension 384, MiniLM's) with a payload like the pipeline's (id, text_sha256,
source) into a fresh NAME: into a Qdrant folder (the embedded engine), and into PostgreSQL with pgvector (the server
the tests use, pgserver's PostgreSQL 16 on loopback), then deletes 2% of them and upserts 2% again (an incremental
run's share). Prints seconds and points/s per step.
The embedded engine commits every point to SQLite on its own (one fsync each), so it gets fewer points.
usage: .venv/bin/python benchmarks/bench_stores.py [--points 20000] [--qdrant-points 2000] [--batch-size 256]
"""
import argparse
import os
import pathlib
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from stores.base import StorePoint  # noqa: E402
from stores.postgres_store import PostgresStore  # noqa: E402
from stores.qdrant_store import QdrantStore  # noqa: E402

DIM = 384


def points(n, seed):
  rng = np.random.default_rng(seed)
  vectors = rng.normal(size=(n, DIM)).astype(np.float32)
  return [StorePoint(f"doc/{i}", vectors[i], {"text_sha256": f"{i:064x}", "source": "corpus.jsonl"})
          for i in range(n)]


def timed(label, n, fn):
  start = time.perf_counter()
  fn()
  seconds = time.perf_counter() - start
  print(f"  {label:<28} {n:>7} points  {seconds:7.2f} s  {n / seconds:9.0f} points/s", flush=True)


def bench(store, n):
  all_points = points(n, 0)
  changed = points(n, 1)[: n // 50]
  store.ensure(DIM)
  timed("upsert (first run)", n, lambda: store.upsert(all_points))
  timed("delete 2%", len(changed), lambda: store.delete([p.id for p in changed]))
  timed("upsert 2%", len(changed), lambda: store.upsert(changed))
  physical = store.begin_rebuild(DIM, "bench")
  timed("rebuild + swap", n, lambda: (store.upsert(all_points, target=physical), store.drop(store.swap_in(physical))))
  assert store.count() == n
  store.close()


def postgres_server(base):
  """Starts pgserver's PostgreSQL on a loopback port (as tests/conftest.py does); returns (url, password, stop)."""
  from pgserver._commands import POSTGRES_BIN_PATH  # pylint: disable=import-outside-toplevel
  user = None
  if os.geteuid() == 0:
    import pwd  # pylint: disable=import-outside-toplevel
    import stat  # pylint: disable=import-outside-toplevel
    from pgserver import utils  # pylint: disable=import-outside-toplevel
    user = "pgserver"
    utils.ensure_user_exists(user)
    utils.ensure_prefix_permissions(POSTGRES_BIN_PATH)
    utils.ensure_folder_permissions(POSTGRES_BIN_PATH, stat.S_IXOTH | stat.S_IROTH)
    os.chown(base, pwd.getpwnam(user).pw_uid, -1)
  password = secrets.token_hex(8)
  (base / "pw").write_text(password + "\n", encoding="utf-8")
  if user is not None:
    os.chown(base / "pw", pwd.getpwnam(user).pw_uid, -1)
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]

  def pg(*args):
    subprocess.run([str(POSTGRES_BIN_PATH / args[0]), *args[1:]], check=True, capture_output=True, user=user)

  pg("initdb", "-D", str(base / "data"), "-U", "postgres", "--auth-host=scram-sha-256", f"--pwfile={base / 'pw'}")
  pg("pg_ctl", "-D", str(base / "data"), "-w", "-l", str(base / "log"), "-o", f"-h 127.0.0.1 -p {port} -k {base}",
     "start")
  return (f"postgresql://postgres@127.0.0.1:{port}/postgres", password,
          lambda: pg("pg_ctl", "-D", str(base / "data"), "-m", "fast", "-w", "stop"))


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--points", type=int, default=20000)
  parser.add_argument("--qdrant-points", type=int, default=2000)
  parser.add_argument("--batch-size", type=int, default=256)
  parser.add_argument("--stores", default="qdrant,postgres")
  args = parser.parse_args()
  work = pathlib.Path(tempfile.mkdtemp(prefix="bench-stores-", dir="/tmp"))
  work.chmod(0o755)  # the server's own user (as root: pgserver) must reach its folder
  try:
    if "qdrant" in args.stores:
      print(f"Qdrant folder (embedded engine), batch {args.batch_size}:")
      bench(QdrantStore(str(work / "qdrant"), "bench", batch_size=args.batch_size), args.qdrant_points)
    if "postgres" not in args.stores:
      return
    print(f"PostgreSQL 16 + pgvector on loopback, batch {args.batch_size}:")
    (work / "pg").mkdir()
    url, password, stop = postgres_server(work / "pg")
    os.environ["PGPASSWORD"] = password
    try:
      bench(PostgresStore(url, "bench", batch_size=args.batch_size), args.points)
    finally:
      stop()
  finally:
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
  main()
