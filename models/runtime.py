"""What one process reaches through its one settings object: the database and Redis.

Built once per process from a Settings: by `create_app(settings)` for the web (kept on the Flask app) and
by the worker's entry point (kept on the Celery app). Everything below the web and the tasks receives the
Runtime, or the one part of it it needs, as an argument; nothing reads the environment on its own."""
from __future__ import annotations

from contextlib import contextmanager
from functools import cached_property

from sqlalchemy.orm import sessionmaker

from .db import engine_for
from .infra.redis_client import redis_for
from .outbox import channel
from .settings import Settings


class Runtime:
    def __init__(self, settings: Settings):
        self.settings = settings

    @cached_property
    def engine(self):
        return engine_for(self.settings.database_url)

    @cached_property
    def autocommit_engine(self):
        return engine_for(self.settings.database_url, autocommit=True)

    @cached_property
    def _sessions(self):
        return sessionmaker(bind=self.engine, expire_on_commit=False)

    def new_session(self):
        return self._sessions()

    @contextmanager
    def session_scope(self):
        """A session for one unit of work: committed by the caller, rolled back and closed on any error."""
        session = self.new_session()
        try:
            yield session
        except BaseException:
            session.rollback()
            raise
        finally:
            session.close()

    @property
    def redis(self):
        return redis_for(self.settings.redis_url)

    @cached_property
    def events_channel(self) -> str:
        """This deployment's pub/sub channel of relayed events (models/outbox.channel)."""
        return channel(self.settings.database_url)
