"""The PostgreSQL index's schema, as numbered migrations applied at start (store/pgindex.py).

Each migration runs once per database, in order, in one transaction with the others that
are due, under an advisory lock: several logging servers starting at once apply each
migration once, and one that starts during a migration waits for it. `orproxy_migrations`
records what has been applied. A migration is never edited once released; a change is
the next number.

The tables are the SQLite index's (store/index.py, `schema.FIELDS`), with these changes:
- `rowid` is an identity column: the free-text search's sets of matches and its look
  among the newest rows (web/query.py) rely on it growing as rows arrive.
- Text columns use the "C" collation, so that ids and models sort (and id prefixes
  range) byte by byte, as in SQLite, whatever the database's locale.
- Integers are bigint (SQLite's INTEGER holds 64 bits; PostgreSQL's, 32).
- `texts` holds the search text (for snippets) and its words as a tsvector (GIN).
"""
from __future__ import annotations

from typing import Any

import psycopg

from orproxy.logserver.store.index import INDEXES
from orproxy.logserver.store.schema import FIELDS

MIGRATE_LOCK = 0x6F72_7072_6F78_7901  # "orproxy" 1: applying migrations
WRITE_LOCK = 0x6F72_7072_6F78_7902    # "orproxy" 2: a write transaction (pgindex._writing)

_TYPES = {"str": 'text COLLATE "C"', "int": "bigint", "float": "double precision", "bool": "bigint",
          "list": "text"}


def _columns() -> str:
    return ", ".join(f"{f.name} {_TYPES[f.kind]}" + (" PRIMARY KEY" if f.name == "id" else "") for f in FIELDS)


MIGRATIONS: tuple[tuple[int, tuple[str, ...]], ...] = (
    (1, (
        f"CREATE TABLE exchanges (rowid bigint GENERATED ALWAYS AS IDENTITY UNIQUE, {_columns()})",
        *(f"CREATE INDEX {name} ON exchanges ({columns})" + (f" WHERE {rows}" if rows else "")
          for name, columns, rows in INDEXES),
        "CREATE TABLE removed (seq bigint PRIMARY KEY, id text COLLATE \"C\" NOT NULL)",
        "CREATE TABLE texts (rowid bigint PRIMARY KEY, id text COLLATE \"C\" NOT NULL, body text NOT NULL, "
        "words tsvector NOT NULL)",
        "CREATE INDEX texts_words ON texts USING gin (words)",
    )),
    # Route and status together: a filter of both that few rows pass (a route's 5xx) scanned
    # every row of the route by time (442 ms p99 at 1,000,000 rows, docs/scaling-out.md). The
    # statistics tell the planner how often the pairs occur, so it takes the index for them.
    (2, (
        "CREATE INDEX by_route_status ON exchanges (route, status, started_at, id)",
        "CREATE STATISTICS exchanges_route_status (mcv) ON route, status FROM exchanges",
        "ANALYZE exchanges",
    )),
    # Bodies in an object store (`--store s3://…`, store/objectstore.py): each exchange's
    # metadata document, the segment objects uploaded, and where each piece of each part is.
    (3, (
        'CREATE TABLE documents (id text COLLATE "C" PRIMARY KEY, body text NOT NULL, rev bigint NOT NULL, '
        'created double precision NOT NULL, changed double precision NOT NULL, segment text COLLATE "C")',
        "CREATE INDEX documents_by_segment ON documents (segment)",
        "CREATE INDEX documents_by_created ON documents (created, id)",
        'CREATE TABLE segments (object text COLLATE "C" PRIMARY KEY, bytes bigint NOT NULL, '
        "at double precision NOT NULL)",
        'CREATE TABLE extents (id text COLLATE "C" NOT NULL, name text COLLATE "C" NOT NULL, '
        'part_offset bigint NOT NULL, length bigint NOT NULL, object text COLLATE "C" NOT NULL, '
        "position bigint NOT NULL, at double precision NOT NULL)",
        "CREATE INDEX extents_of_part ON extents (id, name, part_offset)",
        "CREATE INDEX extents_by_object ON extents (object)",
    )),
    # Large parts as multipart uploads (store/uploads.py): those not completed yet, their
    # stored parts' numbers and ETags, and the server that writes each.
    (4, (
        'CREATE TABLE uploads (object text COLLATE "C" PRIMARY KEY, upload_id text NOT NULL, '
        'holder text COLLATE "C" NOT NULL, parts text NOT NULL, started double precision NOT NULL)',
    )),
)


def migrate(conn: psycopg.Connection[Any]) -> bool:
    """Apply the migrations this database lacks; True if it had none (a new, empty index)."""
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATE_LOCK,))
        conn.execute("CREATE TABLE IF NOT EXISTS orproxy_migrations "
                     "(version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())")
        applied = {r[0] for r in conn.execute("SELECT version FROM orproxy_migrations")}
        for version, statements in MIGRATIONS:
            if version in applied:
                continue
            for statement in statements:
                conn.execute(statement)
            conn.execute("INSERT INTO orproxy_migrations (version) VALUES (%s)", (version,))
        return not applied
