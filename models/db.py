"""The declarative base and engines. Sessions come from a process's Runtime (models/runtime.py): one session
per request and one per task, never shared."""
from __future__ import annotations

import os
from collections import namedtuple
from contextlib import contextmanager
from functools import lru_cache

import psycopg
import psycopg.types.json
from sqlalchemy import MetaData, create_engine, event, literal_column
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import DeclarativeBase

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


def make_engine(url: str, autocommit: bool = False):
    """`autocommit`: every statement is its own transaction (no BEGIN, no COMMIT round trip), and no pre-ping (a
    round trip at every checkout): for a request that reads, then writes one row, through `reading` (intake,
    web/purchases.py)."""
    options = {"isolation_level": "AUTOCOMMIT"} if autocommit else {}
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30}, hide_parameters=True,
                               **options)

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record):
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA journal_mode=WAL")
            cur.close()

        return engine
    # hide_parameters: an error's log line shows the SQL, never the values (a password hash, a fan's note).
    return create_engine(url, pool_pre_ping=not autocommit, pool_size=10, max_overflow=20, hide_parameters=True,
                         **options)


@contextmanager
def reading(engine, statement: "HotStatement", params):
    """(a pooled connection, the one row `statement` returns on it). A connection the database dropped while it
    sat in the pool (a restart, a killed backend) fails this first read: SQLAlchemy then invalidates the pool and
    the read, safe to repeat, runs once more on a new connection. So the autocommit engine needs no pre-ping."""
    for attempt in (1, 2):
        conn = engine.connect()
        try:
            row = statement.one(conn, params)
        except DBAPIError as exc:
            conn.close()
            if attempt == 2 or not exc.connection_invalidated:
                raise
            continue
        with conn:
            yield conn, row
        return


@lru_cache(maxsize=8)
def engine_for(url: str, autocommit: bool = False):
    """One engine (one connection pool) per database URL, kind and process, however many apps use it."""
    return make_engine(url, autocommit)


def one_of(column, values):
    """`column IN ('a', 'b')` with the values written into the SQL: a statement with a literal list needs no
    expanding parameter, so it compiles once to fixed SQL (HotStatement). For our own constants only."""
    assert all(v.replace("_", "").isalnum() for v in values), values
    return column.in_([literal_column(f"'{v}'") for v in values])


class HotStatement:
    """A Core statement on a hot path (intake). On PostgreSQL it is compiled once to SQL and run on the psycopg
    connection underneath, prepared on the server, its row a named tuple: no SQLAlchemy parameter or result
    processing and no psycopg column descriptions, which were half of the statement's CPU (bench/layers.py). On
    SQLite (embedded mode) SQLAlchemy runs it as usual. Its parameters must need no type processing on
    PostgreSQL (UUIDs, str, int, bool, date, aware datetimes; dicts only in `json_params`), and its IN lists
    must be literal (`one_of`).

    Errors: a failed read runs once more through SQLAlchemy (safe to repeat), which wraps the error and, for a
    dropped connection, invalidates the pool (`reading` then retries on a new connection); a failed write is
    wrapped as SQLAlchemy would wrap it, and its connection invalidated if the database dropped it."""

    def __init__(self, statement, json_params=()):
        self.statement = statement
        self.json_params = json_params
        self._pg_sql = None  # (SQL, the statement's own constant parameters)
        self.Row = namedtuple("Row", statement.selected_columns.keys()) if statement.is_select else None

    def _compiled(self, dialect):
        if self._pg_sql is None:
            compiled = self.statement.compile(dialect=dialect)
            constants = {name: bind.effective_value for bind, name in compiled.bind_names.items() if not bind.required}
            self._pg_sql = (compiled.string, constants)
        return self._pg_sql

    def one(self, conn, params):
        """The statement's one row (a read)."""
        if conn.dialect.name != "postgresql":
            return conn.execute(self.statement, params).one()
        sql, constants = self._compiled(conn.dialect)
        try:
            row = conn.connection.dbapi_connection.execute(sql, {**constants, **params}, prepare=True).fetchone()
        except psycopg.Error:
            return conn.execute(self.statement, params).one()
        return self.Row(*row)

    def run(self, conn, params):
        """Execute the statement once (a write)."""
        if conn.dialect.name != "postgresql":
            conn.execute(self.statement, params)
            return
        sql, constants = self._compiled(conn.dialect)
        values = {**constants, **params}
        for name in self.json_params:
            if values.get(name) is not None:
                values[name] = psycopg.types.json.Json(values[name])
        dbapi_connection = conn.connection.dbapi_connection
        try:
            dbapi_connection.execute(sql, values, prepare=True)
        except psycopg.Error as exc:
            dropped = conn.dialect.is_disconnect(exc, dbapi_connection, None)
            if dropped:
                conn.invalidate(exc)
            raise DBAPIError.instance(sql, values, exc, psycopg.Error, hide_parameters=True,
                                      connection_invalidated=dropped, dialect=conn.dialect) from exc
