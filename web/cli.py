"""Operator commands: `flask --app web <command>`."""
from __future__ import annotations

import click
from flask import Flask
from sqlalchemy import select

from models.db import session_scope
from models.ledger import books_differences, create_accounts, top_up
from models.schema import upgrade_head
from models.users import ROLES, User
from worker import queue


def register_cli(app: Flask) -> None:
    @app.cli.command("db-upgrade")
    def db_upgrade():
        """Create or upgrade the schema (alembic upgrade head)."""
        upgrade_head()
        click.echo("schema at head")

    @app.cli.command("create-user")
    @click.option("--username", required=True)
    @click.option("--password", required=True, prompt=True, hide_input=True)
    @click.option("--role", type=click.Choice(ROLES), default="fan", show_default=True)
    @click.option("--display-name", default=None)
    def create_user_cmd(username, password, role, display_name):
        """Create a user with the accounts their role needs."""
        with session_scope() as session:
            user = create_user(session, username, password, role, display_name)
            session.commit()
            click.echo(f"{user.role} {user.id}")

    @app.cli.command("top-up")
    @click.argument("username")
    @click.argument("amount", type=click.IntRange(min=1, max=10_000_000))
    @click.option("--ref", default=None, help="Idempotency reference: the same ref tops up once.")
    def top_up_cmd(username, amount, ref):
        """Issue tokens to a fan's wallet (a ledgered top_up)."""
        with session_scope() as session:
            user = session.scalar(select(User).where(User.username == username))
            if user is None or user.role != "fan":
                raise click.ClickException("no fan with that username")
            top_up(session, user.id, amount, external_ref=ref)
            session.commit()
            click.echo(f"topped up {user.id} by {amount}")

    @app.cli.command("rebuild-queues")
    @click.option("--model-id", type=click.UUID, default=None, help="Only this model's queue.")
    def rebuild_queues(model_id):
        """Rebuild the Redis performance queues from the database (missing entries added, stale ones removed)."""
        with session_scope() as session:
            if model_id is None:
                totals = queue.rebuild_all(session)
            else:
                totals = {"models": 1, **queue.rebuild(session, model_id)}
        click.echo(" ".join(f"{k}={v}" for k, v in totals.items()))

    @app.cli.command("check-books")
    def check_books():
        """Recompute every balance from the ledger; exit 1 on any difference."""
        with session_scope() as session:
            diffs = books_differences(session)
        for d in diffs:
            click.echo(d)
        click.echo(f"differences: {len(diffs)}")
        if diffs:
            raise SystemExit(1)


def create_user(session, username: str, password: str, role: str, display_name: str | None = None) -> User:
    if session.scalar(select(User.id).where(User.username == username)) is not None:
        raise click.ClickException("username taken")
    user = User(username=username, role=role, display_name=display_name)
    user.set_password(password)
    session.add(user)
    session.flush()
    create_accounts(session, user)
    return user
