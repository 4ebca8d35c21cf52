"""Alembic owns the schema: `upgrade head` on an empty database creates exactly what the models describe."""
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from models.db import Base


def test_migrations_match_the_models(database):
    with database.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata)
    assert diff == []


def test_ledger_is_append_only(database, factory):
    import pytest
    from sqlalchemy import text
    from sqlalchemy.exc import DBAPIError

    factory.user("fan", tokens=10)
    with pytest.raises(DBAPIError, match="append-only"):
        with database.begin() as conn:
            conn.execute(text("UPDATE ledger_entries SET amount = amount + 1"))
    with pytest.raises(DBAPIError, match="append-only"):
        with database.begin() as conn:
            conn.execute(text("DELETE FROM ledger_entries"))


def test_database_refuses_a_negative_balance(database, factory):
    import pytest
    from sqlalchemy import text
    from sqlalchemy.exc import IntegrityError

    fan = factory.user("fan", tokens=10)
    with pytest.raises(IntegrityError):
        with database.begin() as conn:
            conn.execute(text("UPDATE accounts SET balance = -1 WHERE owner_id = :o AND kind = 'wallet'"),
                         {"o": fan.id})
