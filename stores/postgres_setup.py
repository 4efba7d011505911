"""PostgreSQL: a rebuild keeps the user's setup of NAME.

The rebuild table is `CREATE TABLE ... (LIKE NAME INCLUDING ALL EXCLUDING INDEXES)` (columns, defaults, constraints,
comments, storage), plus NAME's grants, row-level security and its policies. NAME's indexes (an HNSW index, say)
are built on it after the bulk load, just before the swap (the fast order), and `--vector-store-index hnsw` adds
one when NAME has none. What cannot be carried, views that depend on NAME, refuses the rebuild at launch.
"""
from __future__ import annotations

import re
from typing import Optional

import psycopg
from psycopg import sql

HNSW = "hnsw"
INDEX_KINDS = (HNSW,)


def blocker(connection: psycopg.Connection, name: str) -> Optional[str]:
  """What keeps NAME from being replaced by a rebuild (views that depend on it), or None."""
  rows = connection.execute(
      "SELECT DISTINCT v.relname FROM pg_depend d JOIN pg_rewrite r ON r.oid = d.objid "
      "JOIN pg_class v ON v.oid = r.ev_class WHERE d.refobjid = to_regclass(%s) AND v.oid <> d.refobjid "
      "ORDER BY 1", [name]).fetchall()
  if not rows:
    return None
  views = ", ".join(r[0] for r in rows)
  return f"views depend on it ({views}), and a rebuild replaces the table"


def create_like(connection: psycopg.Connection, name: str, physical: str, key: str) -> None:
  """Creates `physical` with NAME's setup (see the module docstring), primary key `key`, without its indexes."""
  table, source = sql.Identifier(physical), sql.Identifier(name)
  connection.execute(sql.SQL("CREATE TABLE {} (LIKE {} INCLUDING ALL EXCLUDING INDEXES)").format(table, source))
  connection.execute(sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} PRIMARY KEY (id)").format(table, sql.Identifier(key)))
  grants = connection.execute(
      "SELECT grantee, privilege_type FROM information_schema.role_table_grants WHERE table_schema = current_schema() "
      "AND table_name = %s AND grantee <> current_user", [name]).fetchall()
  for grantee, privilege in grants:
    to = sql.SQL("PUBLIC") if grantee == "PUBLIC" else sql.Identifier(grantee)
    connection.execute(sql.SQL("GRANT {} ON {} TO {}").format(sql.SQL(privilege), table, to))
  secure, forced = connection.execute("SELECT relrowsecurity, relforcerowsecurity FROM pg_class WHERE oid = "
                                      "to_regclass(%s)", [name]).fetchone()
  if secure:
    connection.execute(sql.SQL("ALTER TABLE {} ENABLE ROW LEVEL SECURITY").format(table))
  if forced:
    connection.execute(sql.SQL("ALTER TABLE {} FORCE ROW LEVEL SECURITY").format(table))
  policies = connection.execute(
      "SELECT policyname, permissive, roles::text[], cmd, qual, with_check FROM pg_policies "
      "WHERE schemaname = current_schema() AND tablename = %s", [name]).fetchall()
  for policy, permissive, roles, cmd, qual, check in policies:
    to = sql.SQL(", ").join(sql.SQL("PUBLIC") if r == "public" else sql.Identifier(r) for r in roles)
    statement = sql.SQL("CREATE POLICY {} ON {} AS {} FOR {} TO {}").format(
        sql.Identifier(policy), table, sql.SQL(permissive), sql.SQL(cmd), to)
    if qual is not None:
      statement += sql.SQL(" USING ({})").format(sql.SQL(qual))
    if check is not None:
      statement += sql.SQL(" WITH CHECK ({})").format(sql.SQL(check))
    connection.execute(statement)


def build_indexes(connection: psycopg.Connection, name: Optional[str], physical: str, index: Optional[str]) -> int:
  """Builds on `physical` the indexes NAME has (all but its primary key; None: NAME does not exist), and an HNSW
  index for cosine distance when `index` is "hnsw" and there is none; returns how many were built."""
  definitions = []
  if name is not None and connection.execute("SELECT to_regclass(%s) IS NOT NULL", [name]).fetchone()[0]:
    definitions = [r[0] for r in connection.execute(
        "SELECT pg_get_indexdef(indexrelid) FROM pg_index WHERE indrelid = to_regclass(%s) AND NOT indisprimary",
        [name]).fetchall()]
  built = 0
  for definition in definitions:
    found = re.match(r"CREATE (UNIQUE )?INDEX \S+ ON \S+ (USING .*)$", definition)
    if found is None:
      continue
    connection.execute(sql.SQL("CREATE {}INDEX ON {} {}").format(
        sql.SQL(found.group(1) or ""), sql.Identifier(physical), sql.SQL(found.group(2))))
    built += 1
  if index == HNSW and not any(" USING hnsw " in d for d in definitions):
    connection.execute(sql.SQL("CREATE INDEX ON {} USING hnsw (embedding vector_cosine_ops)").format(
        sql.Identifier(physical)))
    built += 1
  return built
