"""The declarative base and engines. Sessions come from a process's Runtime (models/runtime.py): one session
per request and one per task, never shared."""
from __future__ import annotations

import os
from contextlib import contextmanager
from functools import lru_cache

from sqlalchemy import MetaData, create_engine, event
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
def reading(engine, statement, params):
    """(a pooled connection, the one row `statement` returns on it). A connection the database dropped while it
    sat in the pool (a restart, a killed backend) fails this first read: SQLAlchemy then invalidates the pool and
    the read, safe to repeat, runs once more on a new connection. So the autocommit engine needs no pre-ping."""
    for attempt in (1, 2):
        conn = engine.connect()
        try:
            row = conn.execute(statement, params).one()
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
