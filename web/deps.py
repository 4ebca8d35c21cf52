"""Per-request resources: one database session per request, closed at teardown."""
from __future__ import annotations

from flask import g

from models.db import new_session


def db():
    if "db" not in g:
        g.db = new_session()
    return g.db


def close_db(_exc=None) -> None:
    session = g.pop("db", None)
    if session is not None:
        session.close()
