"""Alembic owns the schema; these helpers run it from code (CLI, tests)."""
from __future__ import annotations

import os

from alembic import command
from alembic.config import Config

ALEMBIC_INI = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "migrations", "alembic.ini")


def alembic_config() -> Config:
    return Config(ALEMBIC_INI)


def upgrade_head(database_url: str) -> None:
    config = alembic_config()
    config.attributes["database_url"] = database_url
    command.upgrade(config, "head")
