from alembic import context

import models  # noqa: F401  (registers every table on Base.metadata)
from models.db import Base, make_engine
from models.settings import Settings

config = context.config
target_metadata = Base.metadata


def database_url() -> str:
    # Given by the caller (models/schema.py: the CLI, the tests); a bare `alembic` reads the environment.
    return config.attributes.get("database_url") or Settings.from_env().database_url


def run_migrations_offline():
    context.configure(url=database_url(), target_metadata=target_metadata, literal_binds=True,
                      render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online():
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    engine = make_engine(database_url())
    with engine.connect() as conn:
        _run(conn)
    engine.dispose()


def _run(connection):
    context.configure(connection=connection, target_metadata=target_metadata, render_as_batch=True,
                      compare_type=True)
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
