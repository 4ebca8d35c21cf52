"""Operator commands: `flask --app web <command>`."""
from __future__ import annotations

import click
from flask import Flask
from sqlalchemy import select
from sqlalchemy.engine import make_url

from models.ledger import books_differences, top_up
from models.menus import LimitReached, Menu
from models.schema import upgrade_head
from models.services import performance_queue, shows
from models.services.activations import toy_items_without_lovense
from models.shows import issue_overlay_key
from models.users import PASSWORD_MAX, PASSWORD_MIN, ROLES, User, UsernameTaken, create_user

from seed.loader import ON_CONFLICT, STARTER_FILE, TemplateConflict, TemplateError, load_templates, read_templates

from .deps import runtime


def _password_rule(_ctx, _param, value: str) -> str:
    if not PASSWORD_MIN <= len(value) <= PASSWORD_MAX:
        raise click.BadParameter(f"{PASSWORD_MIN} to {PASSWORD_MAX} characters (as through the API)")
    return value


def safe_url(url: str) -> str:
    return make_url(url).render_as_string(hide_password=True)


def server_answers(base: str, seconds: float) -> bool:
    """Whether GET {base}/healthz answers within `seconds` (`make run` may still be starting)."""
    import time
    import urllib.request

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{base}/healthz", timeout=2):
                return True
        except OSError:
            time.sleep(0.5)
    return False


def service_lines(settings) -> list[str]:
    base = settings.base_url
    lines = [f"API       {base}", f"docs      {base}/docs", f"metrics   {base}/metrics",
             f"events    {settings.stream_base_url}"]
    if not settings.embedded:
        lines.append(f"Flower    http://127.0.0.1:{settings.flower_port}")
    return lines + [f"database  {safe_url(settings.database_url)}"]


def register_cli(app: Flask) -> None:
    @app.cli.command("db-upgrade")
    def db_upgrade():
        """Create or upgrade the schema (alembic upgrade head)."""
        upgrade_head(runtime().settings.database_url)
        click.echo("schema at head")

    @app.cli.command("create-user")
    @click.option("--username", required=True)
    @click.option("--password", required=True, prompt=True, hide_input=True, callback=_password_rule)
    @click.option("--role", type=click.Choice(ROLES), default="fan", show_default=True)
    @click.option("--display-name", default=None)
    def create_user_cmd(username, password, role, display_name):
        """Create a user with the accounts their role needs."""
        with runtime().session_scope() as session:
            try:
                user = create_user(session, username, password, role, display_name)
            except UsernameTaken:
                raise click.ClickException("username taken") from None
            session.commit()
            click.echo(f"{user.role} {user.id}")

    @app.cli.command("top-up")
    @click.argument("username")
    @click.argument("amount", type=click.IntRange(min=1, max=10_000_000))
    @click.option("--ref", default=None, help="Idempotency reference: the same ref tops up once.")
    def top_up_cmd(username, amount, ref):
        """Issue tokens to a fan's wallet (a ledgered top_up)."""
        with runtime().session_scope() as session:
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
        with runtime().session_scope() as session:
            if model_id is None:
                totals = performance_queue.rebuild_all(session, runtime().redis)
            else:
                totals = {"models": 1, **performance_queue.rebuild(session, model_id, runtime().redis)}
        click.echo(" ".join(f"{k}={v}" for k, v in totals.items()))

    @app.cli.command("check-books")
    def check_books():
        """Recompute every balance from the ledger; exit 1 on any difference."""
        with runtime().session_scope() as session:
            diffs = books_differences(session)
        for d in diffs:
            click.echo(d)
        click.echo(f"differences: {len(diffs)}")
        if diffs:
            raise SystemExit(1)

    @app.cli.command("load-templates")
    @click.option("--model", "username", required=True, help="Username of the model the menus are for.")
    @click.option("--file", "path", default=None, help="A template file in the platform's format (default: the "
                  "starter menus, seed/menu_templates.json).")
    @click.option("--on-conflict", type=click.Choice(ON_CONFLICT), default="report", show_default=True,
                  help="A template the model has with other content: report it and load nothing, skip it (keep "
                       "the model's menu), replace the menu's fields and items, or load it as a new menu.")
    @click.option("--delivery-hours", type=click.IntRange(min=1, max=2160), default=None,
                  help="Delivery hours of items whose template does not say (default: by category).")
    def load_templates_cmd(username, path, on_conflict, delivery_hours):
        """Load menu templates for a model; says which it created and which the model had (same or not)."""
        try:
            templates = read_templates(path or STARTER_FILE, delivery_hours)
        except TemplateError as exc:
            raise click.ClickException(str(exc)) from None
        with runtime().session_scope() as session:
            model = session.scalar(select(User).where(User.username == username, User.role == "model"))
            if model is None:
                raise click.ClickException("no model with that username")
            try:
                result = load_templates(session, model.id, templates, on_conflict)
            except LimitReached as exc:
                raise click.ClickException(str(exc)) from None
            except TemplateConflict as exc:
                for name, diffs in exc.differing:
                    click.echo(f"differs: {name}: {', '.join(diffs)}")
                raise click.ClickException("nothing loaded: the model has templates of these names with other "
                                           "content; choose --on-conflict skip, replace or new") from None
            session.commit()
            for menu in result.created:
                click.echo(f"created menu {menu.id} ({len(menu.items)} items): {menu.name}")
            for name in result.skipped:
                click.echo(f"already loaded: {name} (the same)")
            for name, diffs in result.kept:
                click.echo(f"kept the model's menu: {name} (differs: {', '.join(diffs)})")
            for menu, diffs in result.replaced:
                click.echo(f"replaced fields and items of menu {menu.id}: {menu.name} (was: {', '.join(diffs)})")
            for menu, diffs in result.added:
                click.echo(f"created menu {menu.id} beside the one loaded before: {menu.name}")

    @app.cli.command("urls")
    def urls_cmd():
        """Where everything answers on this machine (the banner of `make run`)."""
        settings = runtime().settings
        for line in service_lines(settings):
            click.echo(line)
        with runtime().session_scope() as session:
            silent = toy_items_without_lovense(session, settings)
        if silent:
            click.echo(f"warning: {silent} active items have toy activations but LOVENSE_DEVELOPER_TOKEN is not set: "
                       "their toys will not buzz (menus show lovense_status not_configured)")

    @app.cli.command("demo")
    @click.option("--tokens", type=click.IntRange(min=1, max=1_000_000), default=5000, show_default=True)
    @click.option("--wait-for-server", "wait_seconds", type=click.IntRange(min=0, max=600), default=0,
                  help="Seconds to wait for the server to answer before printing the lines to paste.")
    def demo_cmd(tokens, wait_seconds):
        """Create (or reuse) demo-model, demo-fan and demo-admin, give the fan tokens, load the starter menus,
        and print what to paste into curl against the server's real address. Passwords are new on every run
        and printed here only."""
        import secrets

        settings = runtime().settings
        templates = read_templates(STARTER_FILE)
        passwords = {}
        with runtime().session_scope() as session:
            users = {}
            for role in ("model", "fan", "admin"):
                username, password = f"demo-{role}", secrets.token_urlsafe(9)
                user = session.scalar(select(User).where(User.username == username))
                if user is None:
                    user = create_user(session, username, password, role)
                else:
                    user.set_password(password)
                users[role], passwords[role] = user, password
            model, fan = users["model"], users["fan"]
            entry = top_up(session, fan.id, tokens, external_ref=f"demo-top-up:{fan.id}:{tokens}")
            load_templates(session, model.id, templates, on_conflict="skip")  # the model's own edits stay
            overlay_key = issue_overlay_key(session, model.id)  # a new overlay URL each run, like the passwords
            shows.start(session, model.id)  # live, so the Queue OFF items can be bought at once
            session.commit()
            menus = session.scalars(
                select(Menu).where(Menu.model_id == model.id).order_by(Menu.display_order)
            ).all()
            quick = next(m for m in menus if m.template_key == "Quick Fun Menu")
            item = quick.items[0]
            click.echo(f"database  {safe_url(settings.database_url)}")
            click.echo(f"model  demo-model  password {passwords['model']}  id {model.id}")
            click.echo(f"fan    demo-fan    password {passwords['fan']}  id {fan.id}  (top-up entry {entry.id})")
            click.echo(f"admin  demo-admin  password {passwords['admin']}  id {users['admin'].id}")
            for m in menus:
                click.echo(f"menu   {m.id}  {m.name} ({len(m.items)} items, queue {m.queue_mode}, {m.visibility})")
            base = settings.base_url
            if wait_seconds and not server_answers(base, wait_seconds):
                click.echo(f"\nnothing answers at {base} yet: start `make run`; the lines below work once it does")
            click.echo(f"\nBuy something (with `make run` answering on {base}):")
            click.echo(
                f"TOKEN=$(curl -s -X POST {base}/auth/login -H 'Content-Type: application/json' "
                f"-d '{{\"username\":\"demo-fan\",\"password\":\"{passwords['fan']}\"}}' "
                "| python3 -c 'import json,sys; print(json.load(sys.stdin)[\"access_token\"])')"
            )
            click.echo(
                f"curl -s -X POST {base}/menu/purchase -H \"Authorization: Bearer $TOKEN\" "
                f"-H 'Content-Type: application/json' -d '{{\"menu_id\":\"{quick.id}\",\"menu_item_id\":\"{item.id}\"}}'"
            )
            click.echo(f"curl -s {base}/wallet -H \"Authorization: Bearer $TOKEN\"")
            click.echo(f"curl -s {base}/menu/model/{model.id} -H \"Authorization: Bearer $TOKEN\"")
            click.echo("\nOr in a browser (sign in with the usernames and passwords above):")
            click.echo(f"console   {base}/console  (demo-model)")
            click.echo(f"fan page  {base}/fan?model={model.id}  (demo-fan)")
            click.echo(f"overlay   {base}/overlay/{overlay_key}  (no sign-in: keep it secret; the console rotates or "
                       "revokes it)")
