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


def test_sql_errors_never_show_the_values(database):
    """An error's text (what a log line would carry) shows the SQL but not the parameters: a password hash, a
    fan's note or an idempotency key stay out of the logs."""
    import pytest
    from sqlalchemy import text
    from sqlalchemy.exc import DataError

    from models.db import make_engine

    engine = make_engine(database.url.render_as_string(hide_password=False))
    try:
        with pytest.raises(DataError) as failure, engine.connect() as conn:  # PostgreSQL's message names no value
            conn.execute(text("SELECT CAST(:value AS text), 1 / 0"), {"value": "fan-secret-note"})
        assert "division by zero" in str(failure.value) and "fan-secret-note" not in str(failure.value)
    finally:
        engine.dispose()
