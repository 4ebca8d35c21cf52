"""Per-request resources: one database session per request, closed at teardown."""
from __future__ import annotations

import logging

from flask import g
from sqlalchemy.exc import DBAPIError

from models.db import new_session

log = logging.getLogger(__name__)


def db():
    if "db" not in g:
        g.db = new_session()
    return g.db


def close_db(_exc=None) -> None:
    session = g.pop("db", None)
    if session is not None:
        try:
            session.close()
        except DBAPIError:
            # The connection died after the answer was built (a terminated backend): nothing uncommitted
            # survives it and the pool drops it. Raising here would turn the answer into a bare 500.
            log.warning("database connection lost at the end of a request")
