"""Per-request resources, all reached through the app's one Runtime (built by create_app from its settings):
the settings, one database session per request (closed at teardown) and Redis."""
from __future__ import annotations

import logging

from flask import current_app, g
from sqlalchemy.exc import DBAPIError

log = logging.getLogger(__name__)


def runtime():
    return current_app.extensions["perfmenu"]


def settings():
    return runtime().settings


def redis():
    return runtime().redis


def db():
    if "db" not in g:
        g.db = runtime().new_session()
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
