"""PostgreSQL with pgvector as a vector store, through psycopg 3.

NAME is a table: `id text primary key, embedding vector(H)` and one nullable column per payload field of
stores.base.PAYLOAD_FIELDS (text or integer), created when missing (missing payload columns are added to an existing
table). Upserts are `INSERT ... ON CONFLICT (id) DO UPDATE`, one transaction per batch; deletes are
`DELETE ... WHERE id = ANY(...)`. A whole replacement builds a new table `NAME__TAG` and swaps the names in one
transaction (NAME -> `NAME__old_XXXXXXXX`, `NAME__TAG` -> NAME): a reader's query runs against either the old or
the new table, never a mix. Primary keys get names of their own, so tables can be renamed freely.

The URL is a libpq connection URI (`postgresql://user@host:port/db`, or `postgresql:///db?service=NAME` for a
service file). The password comes from PGPASSWORD, a service file or ~/.pgpass, never from the URL or an option:
a URL holding a password is refused. Every worker process may write; a batch that fails on a lost connection is
retried on a new one `retries` times. Beam's own JDBC-based Postgres writer needs a Java expansion service, which
is why this is a small Python writer instead.
"""
from __future__ import annotations

import re
import time
import uuid
from typing import Any, Optional, Sequence

import numpy as np
import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from stores import postgres_setup
from stores.digest import POSTGRES_PAIR_HASH, Digest
from stores import postgres_staging as staging_lib
from stores.base import (HELD, PAYLOAD_FIELDS, Marker, StoreError, StorePoint, StoreState, VectorStore,
                         backoff_seconds, batches, checked_point, one_line, rebuild_name, redacted,
                         refuse_password_in_url)

_SQL_TYPES = {"text": "text", "int": "integer"}
_PAYLOAD_COLUMNS = [name for name in PAYLOAD_FIELDS if name != "id"]
_CONNECT_TIMEOUT_S = 10
_REBUILD_MARK = staging_lib.MARK + "rebuild "


def _vector_literal(vector) -> str:
  """pgvector's text form; each float32 printed so that it parses back to the same float32."""
  return "[" + ",".join(repr(x) for x in vector.tolist()) + "]"


class PostgresStore(VectorStore):
  """A pgvector table NAME (see the module docstring)."""

  kind = "postgres"

  def __init__(self, url: str, name: str, index: Optional[str] = None, **kwargs: Any):
    if index not in (None, *postgres_setup.INDEX_KINDS):
      raise StoreError(f"PostgreSQL index must be one of {', '.join(postgres_setup.INDEX_KINDS)}, got {index!r}")
    self.index = index
    refuse_password_in_url("PostgreSQL", url, "set PGPASSWORD or use a service file / ~/.pgpass")
    super().__init__(url, name, **kwargs)
    if not url.startswith(("postgresql://", "postgres://")):
      raise StoreError(f"PostgreSQL URL must be postgresql://user@host:port/db, got {redacted(url)!r}")
    try:
      params = conninfo_to_dict(url)
    except psycopg.ProgrammingError as e:
      raise StoreError(f"PostgreSQL URL {redacted(url)!r} is not valid") from e
    if params.get("password"):
      raise StoreError("PostgreSQL URL must not hold a password: set PGPASSWORD or use a service file / ~/.pgpass")
    self._client: Optional[psycopg.Connection] = None

  @classmethod
  def check_name(cls, name: str) -> None:
    if not re.fullmatch(r"[a-z_][a-z0-9_]{0,29}", name or "") or "__" in name:
      raise StoreError(f"PostgreSQL table name must be 1-30 characters of [a-z0-9_] starting with a letter or _, "
                       f"without '__' (reserved for its rebuilds), got {name!r}")

  # --- connection ---

  def _connect(self) -> psycopg.Connection:
    if self._client is not None and not self._client.closed:
      return self._client
    try:
      self._client = psycopg.connect(self.url, connect_timeout=_CONNECT_TIMEOUT_S, autocommit=False)
    except psycopg.OperationalError as e:
      raise StoreError(f"PostgreSQL at {self._where()} is not reachable or refused the login: {one_line(e)}") from e
    return self._client

  def _where(self) -> str:
    params = conninfo_to_dict(self.url)
    host = params.get("host") or "localhost"
    return f"{host}:{params.get('port') or 5432}/{params.get('dbname') or ''}"

  def close(self) -> None:
    client, self._client = self._client, None
    if client is not None:
      client.close()

  def _run(self, what: str, work, *, retry: bool = False):
    """Runs `work(connection)` in one transaction; a lost connection is retried on a new one when `retry`."""
    attempt = 0
    while True:
      connection = self._connect()
      try:
        with connection.transaction():
          return work(connection)
      except psycopg.OperationalError as e:
        self.close()
        attempt += 1
        if not retry or attempt > self.retries:
          raise StoreError(f"PostgreSQL {what} on {self._where()} failed: {one_line(e)}") from e
        time.sleep(backoff_seconds(attempt))
      except psycopg.errors.InsufficientPrivilege as e:
        raise StoreError(f"PostgreSQL {what} on {self._where()} was refused: {one_line(e)}") from e
      except psycopg.errors.DataException:
        raise
      except psycopg.Error as e:  # any other refusal: one line
        raise StoreError(f"PostgreSQL {what} on {self._where()} failed: {one_line(e)}") from e

  # --- inspection ---

  @staticmethod
  def _table_dimension(connection: psycopg.Connection, table: str) -> Optional[int]:
    """The dimension of `table`'s embedding column; None when the table does not exist."""
    row = connection.execute("SELECT to_regclass(%s) IS NOT NULL", [table]).fetchone()
    if not row[0]:
      return None
    row = connection.execute(
        "SELECT format_type(atttypid, atttypmod), atttypmod FROM pg_attribute "
        "WHERE attrelid = to_regclass(%s) AND attname = 'embedding' AND NOT attisdropped", [table]).fetchone()
    if row is None or not row[0].startswith("vector"):
      raise StoreError(f"PostgreSQL table {table!r} has no pgvector column 'embedding': it was not made by "
                       f"bert-embed; choose another --vector-collection")
    return int(row[1]) if row[1] > 0 else None

  def check(self, dimension: Optional[int] = None) -> StoreState:

    def work(connection):
      extension = connection.execute(
          "SELECT (SELECT 1 FROM pg_extension WHERE extname = 'vector'), "
          "(SELECT 1 FROM pg_available_extensions WHERE name = 'vector')").fetchone()
      if extension[0] is None and extension[1] is None:
        raise StoreError(f"PostgreSQL at {self._where()} has no pgvector extension: install pgvector on the server")
      if extension[0] is None:
        return StoreState(False, None, None, 0)
      found = self._table_dimension(connection, self.name)
      if found is None:
        exists = connection.execute("SELECT to_regclass(%s) IS NOT NULL", [self.name]).fetchone()[0]
        return StoreState(bool(exists), None, self.name if exists else None, 0)
      if dimension is not None and found != dimension:
        raise StoreError(f"PostgreSQL table {self.name!r} holds vectors of dimension {found}, the model's is "
                         f"{dimension}: choose another --vector-collection or drop the table")
      if not staging_lib.is_marked(connection, self.name):
        raise StoreError(f"PostgreSQL table {self.name!r} was not created by bert-embed (its comment does not start "
                         f"with {staging_lib.MARK.strip()!r}); it is left alone: choose another --vector-collection")
      count = connection.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(self.name))).fetchone()[0]
      return StoreState(True, found, self.name, int(count), staging_lib.read_marker(connection, self.name),
                        postgres_setup.blocker(connection, self.name))

    return self._run("inspecting the table", work)

  def count(self, target: Optional[str] = None) -> int:
    query = sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(target or self.name))
    return int(self._run("counting", lambda c: c.execute(query).fetchone()[0], retry=True))

  # --- changes ---

  def _create_table(self, connection: psycopg.Connection, table: str, dimension: int, like: bool = False) -> None:
    """Creates `table` (marked) with the columns of a NAME; `like`: with the setup of NAME (stores/postgres_setup.py)
    when NAME is a table of the job of this dimension."""
    connection.execute("CREATE EXTENSION IF NOT EXISTS vector")
    key_name = f"{self.name}_pk_{uuid.uuid4().hex[:8]}"
    if like and self._table_dimension(connection, self.name) == dimension and staging_lib.is_marked(connection,
                                                                                                    self.name):
      postgres_setup.create_like(connection, self.name, table, key_name)
      for column in _PAYLOAD_COLUMNS:
        connection.execute(sql.SQL("ALTER TABLE {} ADD COLUMN IF NOT EXISTS {} {}").format(
            sql.Identifier(table), sql.Identifier(column), sql.SQL(_SQL_TYPES[PAYLOAD_FIELDS[column]])))
      staging_lib.mark_table(connection, table, "rebuild " + table)
      return
    columns = [sql.SQL("id text NOT NULL"),
               sql.SQL("embedding vector({}) NOT NULL").format(sql.Literal(int(dimension)))]
    columns += [sql.SQL("{} {}").format(sql.Identifier(c), sql.SQL(_SQL_TYPES[PAYLOAD_FIELDS[c]]))
                for c in _PAYLOAD_COLUMNS]
    key = sql.SQL("CONSTRAINT {} PRIMARY KEY (id)").format(sql.Identifier(key_name))
    connection.execute(sql.SQL("CREATE TABLE {} ({})").format(sql.Identifier(table),
                                                              sql.SQL(", ").join(columns + [key])))
    # Kept through renames: what the job made (and a repeated swap_in sees that NAME already is this rebuild).
    connection.execute(sql.SQL("COMMENT ON TABLE {} IS {}").format(sql.Identifier(table),
                                                                  sql.Literal(_REBUILD_MARK + table)))

  def ensure(self, dimension: int) -> None:

    def work(connection):
      connection.execute("CREATE EXTENSION IF NOT EXISTS vector")
      found = self._table_dimension(connection, self.name)
      if found is None:
        self._create_table(connection, self.name, dimension)
        return
      if found != dimension:
        raise StoreError(f"PostgreSQL table {self.name!r} holds vectors of dimension {found}, the model's is "
                         f"{dimension}: choose another --vector-collection or drop the table")
      for column in _PAYLOAD_COLUMNS:
        connection.execute(sql.SQL("ALTER TABLE {} ADD COLUMN IF NOT EXISTS {} {}").format(
            sql.Identifier(self.name), sql.Identifier(column), sql.SQL(_SQL_TYPES[PAYLOAD_FIELDS[column]])))

    self._run("creating the table", work)

  def begin_rebuild(self, dimension: int, tag: str) -> str:
    physical = rebuild_name(self.name, tag)

    def work(connection):
      connection.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(physical)))
      self._create_table(connection, physical, dimension, like=True)

    self._run("creating a rebuild table", work)
    return physical

  def swap_in(self, physical: str) -> Optional[str]:
    previous = f"{self.name}__old_{uuid.uuid4().hex[:8]}"

    def work(connection):
      exists = connection.execute("SELECT to_regclass(%s) IS NOT NULL", [self.name]).fetchone()[0]
      if connection.execute("SELECT to_regclass(%s) IS NULL", [physical]).fetchone()[0]:
        mark = connection.execute("SELECT obj_description(to_regclass(%s), 'pg_class')", [self.name]).fetchone()
        if exists and mark[0] == _REBUILD_MARK + physical:  # swapped in by an earlier attempt
          return None
        raise StoreError(f"PostgreSQL rebuild table {physical!r} does not exist")
      if exists:
        connection.execute(sql.SQL("ALTER TABLE {} RENAME TO {}").format(sql.Identifier(self.name),
                                                                         sql.Identifier(previous)))
      connection.execute(sql.SQL("ALTER TABLE {} RENAME TO {}").format(sql.Identifier(physical),
                                                                       sql.Identifier(self.name)))
      return previous if exists else None

    return self._run("swapping the tables", work)

  def drop(self, physical: str) -> None:
    if physical == self.name:
      raise StoreError(f"PostgreSQL table {physical!r} is the live table; not dropped")
    self._run("dropping a table",
              lambda c: c.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(physical))), retry=True)

  def upsert(self, points: Sequence[StorePoint], target: Optional[str] = None) -> int:
    names = ["id", "embedding"] + _PAYLOAD_COLUMNS
    statement = sql.SQL(
        "INSERT INTO {table} ({columns}) VALUES ({values}) ON CONFLICT (id) DO UPDATE SET {updates}").format(
        table=sql.Identifier(target or self.name),
        columns=sql.SQL(", ").join(sql.Identifier(n) for n in names),
        values=sql.SQL(", ").join([sql.Placeholder(), sql.SQL("{}::vector").format(sql.Placeholder())]
                                  + [sql.Placeholder()] * len(_PAYLOAD_COLUMNS)),
        updates=sql.SQL(", ").join(sql.SQL("{0} = EXCLUDED.{0}").format(sql.Identifier(n)) for n in names[1:]))
    written = 0
    for batch in batches(list(points), self.batch_size):
      rows = []
      for point in batch:
        vector, payload = checked_point(point)
        rows.append([point.id, _vector_literal(vector)] + [payload.get(c) for c in _PAYLOAD_COLUMNS])

      def work(connection, rows=rows):
        with connection.cursor() as cursor:
          cursor.executemany(statement, rows)

      self._upsert_batch(work)
      written += len(rows)
    return written

  def _upsert_batch(self, work) -> None:
    try:
      self._run("upserting", work, retry=True)
    except psycopg.errors.DataException as e:
      raise StoreError(f"PostgreSQL rejected a row of {self.name!r}: {one_line(e)}") from e

  def delete(self, ids: Sequence[str], target: Optional[str] = None) -> int:
    ids = list(ids)
    statement = sql.SQL("DELETE FROM {} WHERE id = ANY(%s)").format(sql.Identifier(target or self.name))
    for batch in batches(ids, self.batch_size):
      self._run("deleting", lambda c, batch=batch: c.execute(statement, [list(batch)]), retry=True)
    return len(ids)

  # --- staged changes and their commit (stores/postgres_staging.py) ---

  def abandoned(self) -> list[str]:
    return [t for t in self._run("listing tables", lambda c: staging_lib.marked_tables(c, self.name)) if t != self.name]

  def begin_staging(self, dimension: int, tag: str) -> str:
    staging = rebuild_name(self.name, tag)

    def work(connection):
      connection.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(staging)))
      self._create_table(connection, staging, dimension)
      staging_lib.make_staging(connection, staging)

    self._run("creating a staging table", work)
    return staging

  def stage_deletes(self, ids: Sequence[str], staging: str) -> int:
    ids = list(ids)
    statement = staging_lib.stage_deletes_statement(staging)
    for batch in batches(ids, self.batch_size):
      self._run("staging deletes", lambda c, batch=batch: c.cursor().executemany(statement, [[i] for i in batch]),
                retry=True)
    return len(ids)

  def _committed(self, connection, snapshot: str, expected: Optional[Marker]) -> bool:
    """Takes NAME's lock and checks its marker; True when an earlier attempt of this commit already committed."""
    if staging_lib.read_marker(connection, self.name) == Marker(snapshot, HELD):
      return True
    staging_lib.lock_and_check(connection, self.name, expected)
    return False

  def apply_staged(self, staging: str, snapshot: str, expected: Optional[Marker]) -> None:

    def work(connection):
      if not self._committed(connection, snapshot, expected):
        staging_lib.merge(connection, self.name, staging, _PAYLOAD_COLUMNS)
        staging_lib.write_marker(connection, self.name, Marker(snapshot, HELD))

    self._run("applying the staged changes", work, retry=True)

  def commit_rebuild(self, physical: str, snapshot: str, expected: Optional[Marker]) -> Optional[str]:
    previous = f"{self.name}__old_{uuid.uuid4().hex[:8]}"

    def indexes(connection):  # after the bulk load, before the swap (not again on a retried commit)
      if connection.execute("SELECT to_regclass(%s) IS NOT NULL", [physical]).fetchone()[0]:
        postgres_setup.build_indexes(connection, self.name, physical, self.index)

    self._run("building the indexes", indexes, retry=True)

    def work(connection):
      if self._committed(connection, snapshot, expected):
        return None
      return staging_lib.swap(connection, self.name, physical, previous, snapshot)

    return self._run("swapping the tables", work, retry=True)

  def set_marker(self, marker: Marker) -> None:
    self._run("recording the snapshot", lambda c: staging_lib.write_marker(c, self.name, marker), retry=True)

  def fingerprints(self) -> dict[str, Optional[str]]:
    query = sql.SQL("SELECT id, text_sha256 FROM {}").format(sql.Identifier(self.name))
    return dict(self._run("reading ids", lambda c: c.execute(query).fetchall(), retry=True))

  def digest(self) -> Digest:
    query = sql.SQL("SELECT count(*), coalesce(sum({}), 0) FROM {}").format(sql.SQL(POSTGRES_PAIR_HASH),
                                                                          sql.Identifier(self.name))
    count, total = self._run("digesting ids", lambda c: c.execute(query).fetchone(), retry=True)
    return Digest(int(count), int(total))

  def vectors(self, ids: Sequence[str]) -> dict[str, np.ndarray]:
    query = sql.SQL("SELECT id, embedding::text FROM {} WHERE id = ANY(%s)").format(sql.Identifier(self.name))
    rows = self._run("reading vectors", lambda c: c.execute(query, [list(ids)]).fetchall(), retry=True)
    return {i: np.asarray(text.strip("[]").split(","), np.float32) for i, text in rows}
