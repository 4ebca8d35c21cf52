"""Alembic owns the schema; these helpers run it from code (CLI, tests)."""
from __future__ import annotations

import os
from functools import lru_cache

from alembic import command
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory

ALEMBIC_INI = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "migrations", "alembic.ini")


def alembic_config() -> Config:
    return Config(ALEMBIC_INI)


def upgrade_head(database_url: str) -> None:
    config = alembic_config()
    config.attributes["database_url"] = database_url
    command.upgrade(config, "head")


@lru_cache(maxsize=1)
def head_revisions() -> frozenset[str]:
    return frozenset(ScriptDirectory.from_config(alembic_config()).get_heads())


def at_head(connection) -> bool:
    """Whether the database's schema is the one this code expects (every migration applied, none unknown)."""
    return frozenset(MigrationContext.configure(connection).get_current_heads()) == head_revisions()
