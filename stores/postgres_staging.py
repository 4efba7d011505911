"""PostgreSQL: the tables that keep NAME equal to a committed snapshot, and the one transaction that changes it.

- Every table the job creates carries a comment starting with MARK; a NAME without it was not made by bert-embed and
  is never altered or dropped.
- The metadata table `bert_embed_collections` (name, snapshot, state, updated_at) records which run's snapshot each
  NAME holds; it is written in the same transaction as the change it describes.
- A sync's changes go to a staging table `NAME__sTAG` while the job runs (every worker in parallel): NAME's columns,
  the embedding nullable, and `bert_embed_delete` for the ids to delete. The commit merges it into NAME in one
  transaction (DELETE, then INSERT ... ON CONFLICT DO UPDATE, the marker, DROP of the staging table), so a reader sees
  the old set or the new one.
- Every commit holds a transaction-level advisory lock on NAME and first checks that NAME still records the marker
  the run saw at launch: two runs writing one NAME never both commit.
"""
from __future__ import annotations

import time
from typing import Optional

import psycopg
from psycopg import sql

from stores.base import HELD, ChangedSinceLaunch, Marker, StoreError

MARK = "bert-embed "
META_TABLE = "bert_embed_collections"
DELETE_COLUMN = "bert_embed_delete"
LOCK_WAIT_S = 60.0  # how long a commit waits for another run's commit of the same NAME
SWAP_LOCK_TIMEOUT = "5s"  # how long a rename waits behind a reader's transaction before it retries


def table_mark(connection: psycopg.Connection, table: str) -> Optional[str]:
  row = connection.execute("SELECT obj_description(to_regclass(%s), 'pg_class')", [table]).fetchone()
  return row[0] if row else None


def is_marked(connection: psycopg.Connection, table: str) -> bool:
  return (table_mark(connection, table) or "").startswith(MARK)


def mark_table(connection: psycopg.Connection, table: str, what: str) -> None:
  connection.execute(sql.SQL("COMMENT ON TABLE {} IS {}").format(sql.Identifier(table), sql.Literal(MARK + what)))


def marked_tables(connection: psycopg.Connection, name: str) -> list[str]:
  """The tables `NAME__*` of the current schema that carry the job's mark."""
  rows = connection.execute(
      "SELECT c.relname FROM pg_class c WHERE c.relkind = 'r' AND c.relnamespace = current_schema()::regnamespace "
      "AND left(c.relname, %s) = %s AND coalesce(obj_description(c.oid, 'pg_class'), '') LIKE %s ORDER BY 1",
      [len(name) + 2, name + "__", MARK + "%"]).fetchall()
  return [r[0] for r in rows]


def read_marker(connection: psycopg.Connection, name: str) -> Optional[Marker]:
  if connection.execute("SELECT to_regclass(%s) IS NULL", [META_TABLE]).fetchone()[0]:
    return None
  row = connection.execute(sql.SQL("SELECT snapshot, state FROM {} WHERE name = %s").format(
      sql.Identifier(META_TABLE)), [name]).fetchone()
  return Marker(row[0], row[1]) if row else None


def write_marker(connection: psycopg.Connection, name: str, marker: Marker) -> None:
  connection.execute(sql.SQL(
      "CREATE TABLE IF NOT EXISTS {} (name text PRIMARY KEY, snapshot text NOT NULL, state text NOT NULL, "
      "updated_at timestamptz NOT NULL DEFAULT now())").format(sql.Identifier(META_TABLE)))
  connection.execute(sql.SQL(
      "INSERT INTO {} (name, snapshot, state, updated_at) VALUES (%s, %s, %s, now()) ON CONFLICT (name) "
      "DO UPDATE SET snapshot = EXCLUDED.snapshot, state = EXCLUDED.state, updated_at = now()").format(
      sql.Identifier(META_TABLE)), [name, marker.snapshot, marker.state])


def lock_and_check(connection: psycopg.Connection, name: str, expected: Optional[Marker]) -> None:
  """In the current transaction: takes NAME's advisory lock (waiting up to LOCK_WAIT_S for another run's commit),
  then raises ChangedSinceLaunch unless NAME records `expected`."""
  deadline = time.monotonic() + LOCK_WAIT_S
  while not connection.execute("SELECT pg_try_advisory_xact_lock(hashtext(%s))", ["bert-embed:" + name]).fetchone()[0]:
    if time.monotonic() > deadline:
      raise StoreError(f"another run has been committing to {name} for over {LOCK_WAIT_S:.0f} s; this run applied "
                       f"nothing")
    time.sleep(0.5)
  found = read_marker(connection, name)
  if found != expected:
    raise ChangedSinceLaunch(name, found, expected)


def make_staging(connection: psycopg.Connection, staging: str) -> None:
  """Turns a fresh table of NAME's columns into a staging table (the embedding nullable, a delete flag)."""
  table = sql.Identifier(staging)
  connection.execute(sql.SQL("ALTER TABLE {} ALTER COLUMN embedding DROP NOT NULL").format(table))
  connection.execute(sql.SQL("ALTER TABLE {} ADD COLUMN {} boolean NOT NULL DEFAULT false").format(
      table, sql.Identifier(DELETE_COLUMN)))
  connection.execute(sql.SQL("ALTER TABLE {} SET UNLOGGED").format(table))
  mark_table(connection, staging, "staging " + staging)


def stage_deletes_statement(staging: str) -> sql.Composed:
  return sql.SQL("INSERT INTO {} (id, embedding, {}) VALUES (%s, NULL, true) ON CONFLICT (id) DO UPDATE SET "
                 "embedding = NULL, {} = true").format(sql.Identifier(staging), sql.Identifier(DELETE_COLUMN),
                                                       sql.Identifier(DELETE_COLUMN))


def merge(connection: psycopg.Connection, name: str, staging: str, columns: list[str]) -> tuple[int, int]:
  """In the current transaction: the staging table's deletes and upserts applied to NAME, the staging table dropped;
  returns (deleted, upserted) rows."""
  table, stage, flag = sql.Identifier(name), sql.Identifier(staging), sql.Identifier(DELETE_COLUMN)
  deleted = connection.execute(sql.SQL("DELETE FROM {t} n USING {s} s WHERE s.{f} AND n.id = s.id").format(
      t=table, s=stage, f=flag)).rowcount
  names = sql.SQL(", ").join(sql.Identifier(c) for c in ["id", "embedding"] + columns)
  updates = sql.SQL(", ").join(sql.SQL("{0} = EXCLUDED.{0}").format(sql.Identifier(c)) for c in ["embedding"] + columns)
  upserted = connection.execute(sql.SQL(
      "INSERT INTO {t} ({n}) SELECT {n} FROM {s} WHERE NOT {f} ON CONFLICT (id) DO UPDATE SET {u}").format(
      t=table, n=names, s=stage, f=flag, u=updates)).rowcount
  connection.execute(sql.SQL("DROP TABLE {}").format(stage))
  return deleted, upserted


def swap(connection: psycopg.Connection, name: str, physical: str, previous: str, snapshot: str) -> Optional[str]:
  """In the current transaction (after lock_and_check): NAME -> `previous`, `physical` -> NAME, the marker; each
  rename waits at most SWAP_LOCK_TIMEOUT for readers (psycopg.errors.LockNotAvailable: retry the transaction).
  Returns `previous`, or None when NAME did not exist."""
  connection.execute(sql.SQL("SET LOCAL lock_timeout = {}").format(sql.Literal(SWAP_LOCK_TIMEOUT)))
  exists = connection.execute("SELECT to_regclass(%s) IS NOT NULL", [name]).fetchone()[0]
  if exists:
    connection.execute(sql.SQL("ALTER TABLE {} RENAME TO {}").format(sql.Identifier(name), sql.Identifier(previous)))
  connection.execute(sql.SQL("ALTER TABLE {} RENAME TO {}").format(sql.Identifier(physical), sql.Identifier(name)))
  write_marker(connection, name, Marker(snapshot, HELD))
  return previous if exists else None
