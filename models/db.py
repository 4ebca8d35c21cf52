"""The declarative base and engines. Sessions come from a process's Runtime (models/runtime.py): one session
per request and one per task, never shared."""
from __future__ import annotations

import os
from functools import lru_cache

from sqlalchemy import MetaData, create_engine, event
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
    """`autocommit`: every statement is its own transaction (no BEGIN, no COMMIT round trip): for a request that
    only reads, then writes one row (intake, web/purchases.py)."""
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
    return create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20, hide_parameters=True, **options)


@lru_cache(maxsize=8)
def engine_for(url: str, autocommit: bool = False):
    """One engine (one connection pool) per database URL, kind and process, however many apps use it."""
    return make_engine(url, autocommit)
