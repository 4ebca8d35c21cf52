"""Test harness: real PostgreSQL, real Redis, real Celery worker processes.

Defaults can be overridden with TEST_DATABASE_URL, TEST_REDIS_URL and TEST_BROKER_URL (the broker lives in
its own Redis database so that cleaning application keys between tests never drops the worker's queues)."""
from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATABASE_URL = os.environ.get("TEST_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/perfmenu_test")
REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
BROKER_URL = os.environ.get("TEST_BROKER_URL", "redis://127.0.0.1:6379/14")

from fake_lovense import FakeLovense  # noqa: E402

# The fake Lovense server binds its port now, so that this process and every worker process it starts get
# LOVENSE_API_URL pointing at it (and short timeouts and backoffs) before any settings are read.
FAKE_LOVENSE = FakeLovense().start()
LOVENSE_TEST_ENV = {
    "LOVENSE_API_URL": FAKE_LOVENSE.url,
    "LOVENSE_DEVELOPER_TOKEN": "test-developer-token",
    "LOVENSE_CALLBACK_SECRET": "test-callback-secret-long-enough-for-hmac",
    "LOVENSE_CONNECT_TIMEOUT": "0.5",
    "LOVENSE_READ_TIMEOUT": "0.5",
    "LOVENSE_MAX_ATTEMPTS": "3",
    "LOVENSE_BACKOFF_SECONDS": "0.05",
    "LOVENSE_BACKOFF_MAX_SECONDS": "0.2",
}

# What the test run's processes are configured with: this process builds its Settings from it (apps may
# replace fields: `make_settings`), and the Celery workers it starts get it in their environment.
TEST_ENV = {
    **LOVENSE_TEST_ENV,
    "DATABASE_URL": DATABASE_URL,
    "REDIS_URL": REDIS_URL,
    "CELERY_BROKER_URL": BROKER_URL,
    "JWT_SECRET_KEY": "test-secret-key-that-is-long-enough-for-hs256",
    "PURCHASE_WAIT_SECONDS": os.environ.get("PURCHASE_WAIT_SECONDS", "5"),
    "LOVENSE_ENABLED": os.environ.get("LOVENSE_ENABLED", "true"),
    # Tests log in and buy far more often than a client may; the rate-limit tests set their own limits.
    "RATE_LIMIT_LOGIN": os.environ.get("RATE_LIMIT_LOGIN", "100000 per minute"),
    "RATE_LIMIT_PURCHASE": os.environ.get("RATE_LIMIT_PURCHASE", "100000 per minute"),
}
# prometheus_client multiprocess mode, as in production: the test process and the Celery worker processes it
# starts write their metrics to one directory, and GET /metrics adds them up. prometheus_client reads this
# variable from the environment when it loads (the one setting our code does not own), so it is set here.
if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="perfmenu-test-metrics-")
    atexit.register(shutil.rmtree, os.environ["PROMETHEUS_MULTIPROC_DIR"], True)
sys.path.insert(0, ROOT)

import redis  # noqa: E402
from sqlalchemy import select, text  # noqa: E402
from sqlalchemy.exc import OperationalError  # noqa: E402

from models.db import Base  # noqa: E402
from models.ledger import Account, LedgerEntry, books_differences, top_up  # noqa: E402
from models.menus import Menu, MenuItem  # noqa: E402
from models.purchases import Purchase  # noqa: E402
from models.runtime import Runtime  # noqa: E402
from models.services import shows  # noqa: E402
from models.services.settle_signal import SCHEDULED_KEY  # noqa: E402
from models.settings import Settings  # noqa: E402
import models.users  # noqa: E402
from argon2 import PasswordHasher  # noqa: E402
from models.users import create_user  # noqa: E402
from processes import ProcessGroup, recreate_database  # noqa: E402
from web import create_app  # noqa: E402
from worker.celery_app import bind_runtime, celery  # noqa: E402

# Cheap password hashes for the tests' users (production parameters cost 0.2-0.3 s a user here; the auth matrix
# makes about a thousand). A hash carries its parameters, so every process that verifies it is as quick. The
# production parameters are checked in tests/unit/test_password_hashing.py.
models.users._hasher = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)

SETTINGS = Settings.from_env({**os.environ, **TEST_ENV})
RUNTIME = Runtime(SETTINGS)
bind_runtime(RUNTIME)  # this process publishes tasks to the test workers, and calls some tasks' bodies directly


def make_settings(**changes) -> Settings:
    """The test run's settings with some fields changed, for an app or a call that needs them."""
    return replace(SETTINGS, **changes)


def new_session():
    return RUNTIME.new_session()


@pytest.fixture(scope="session")
def database():
    recreate_database(SETTINGS.database_url)
    yield RUNTIME.engine
    RUNTIME.engine.dispose()
    RUNTIME.autocommit_engine.dispose()


@pytest.fixture(scope="session")
def redis_client():
    client = redis.Redis.from_url(REDIS_URL, decode_responses=True)
    client.ping()
    return client


def subprocess_env(**extra) -> dict:
    env = {**os.environ, **TEST_ENV}
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    env.update({k: str(v) for k, v in extra.items()})
    return env


class WorkerProcess:
    """A real `celery worker` process (prefork pool) on the test broker."""

    def __init__(self, concurrency: int = 2, **env):
        node = f"test-{uuid.uuid4().hex[:8]}"
        self.node = node
        self.group = ProcessGroup(node, [
            sys.executable, "-m", "celery", "-A", "worker.main", "worker", "--loglevel", "WARNING",
            "--concurrency", str(concurrency), "-n", f"{node}@%h", "--without-gossip", "--without-mingle",
        ], subprocess_env(**env))

    def start(self, timeout: float = 60):
        self.group.start()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.group.alive():
                raise RuntimeError("celery worker exited at start")
            replies = celery.control.ping(timeout=0.5)
            if any(self.node in name for reply in replies for name in reply):
                return self
        raise RuntimeError("celery worker did not start")

    def stop(self):
        self.group.stop()


class WebhookWorkerProcess(WorkerProcess):
    """A worker of the Procfile's `webhooks` line: the webhooks queue only."""

    def __init__(self, concurrency: int = 4, **env):
        super().__init__(concurrency, **env)
        self.group.argv += ["-Q", "webhooks"]


@pytest.fixture(scope="session")
def celery_worker(database):
    broker = redis.Redis.from_url(BROKER_URL)
    broker.flushdb()
    worker = WorkerProcess().start()
    yield worker
    worker.stop()


@pytest.fixture
def fake_lovense():
    """The fake Lovense API every process of the test run talks to, emptied and scripted to succeed."""
    FAKE_LOVENSE.reset()
    yield FAKE_LOVENSE
    FAKE_LOVENSE.reset()


@pytest.fixture(autouse=True)
def clean_state(request, redis_client):
    """Every test starts with empty tables and an empty application Redis database, with no settle task of an
    earlier test still lingering (it holds the scheduled flag while it waits for more purchases), and with the
    Celery app bound to the test run's runtime (an app built with other settings rebinds it)."""
    bind_runtime(RUNTIME)
    deadline = time.monotonic() + 10
    while redis_client.exists(SCHEDULED_KEY) and time.monotonic() < deadline:
        time.sleep(0.02)
    if "database" in request.fixturenames or "app" in request.fixturenames:
        engine = request.getfixturevalue("database")
        tables = ", ".join(t.name for t in Base.metadata.sorted_tables)
        for attempt in range(5):
            try:
                with engine.begin() as conn:
                    conn.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))
                break
            except OperationalError:
                # A settle task of the previous test making its last claim (after dropping its flag) can
                # deadlock with the TRUNCATE; PostgreSQL aborts one of the two, so try again.
                if attempt == 4:
                    raise
                time.sleep(0.2)
    redis_client.flushdb()
    yield


@pytest.fixture
def app(database):
    app = create_app(SETTINGS)
    app.config["TESTING"] = True
    return app


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def session(database):
    s = new_session()
    yield s
    s.close()


class Factory:
    """Builds test data through the models (the same rules the API and CLI use)."""

    def __init__(self, app):
        self.app = app
        self._n = 0

    def user(self, role="fan", tokens=0, password="pw"):
        self._n += 1
        s = new_session()
        try:
            user = create_user(s, f"{role}-{uuid.uuid4().hex[:10]}", password, role)
            if tokens:
                top_up(s, user.id, tokens)
            s.commit()
            return user
        finally:
            s.close()

    def menu(self, model, items=({"name": "Kiss", "token_value": 10, "bonus_loyalty_points": 5},), live=None,
             **fields):
        """A menu with its items. `live`: start (or keep) a show for the model, so Queue OFF items can be bought;
        by default for Queue OFF menus."""
        if live is None:
            live = fields.get("queue_mode", "OFF") == "OFF"
        if live:
            self.go_live(model)
        s = new_session()
        try:
            menu = Menu(model_id=model.id, name=fields.pop("name", "Menu"), **fields)
            s.add(menu)
            s.flush()
            created = []
            for i, spec in enumerate(items):
                item = MenuItem(menu_id=menu.id, display_order=i, **spec)
                s.add(item)
                created.append(item)
            s.commit()
            menu.created_items = created
            return menu
        finally:
            s.close()

    def go_live(self, model):
        s = new_session()
        try:
            shows.start(s, model.id)
            s.commit()
        finally:
            s.close()

    def headers(self, user, password="pw"):
        client = self.app.test_client()
        r = client.post("/auth/login", json={"username": user.username, "password": password})
        assert r.status_code == 200, r.json
        return {"Authorization": f"Bearer {r.json['access_token']}"}


@pytest.fixture
def factory(app):
    return Factory(app)


def balance(owner_id, kind) -> int:
    s = new_session()
    try:
        return s.scalar(select(Account.balance).where(Account.owner_id == owner_id, Account.kind == kind))
    finally:
        s.close()


def ledger_rows(purchase_id) -> list[LedgerEntry]:
    s = new_session()
    try:
        return list(s.scalars(select(LedgerEntry).where(LedgerEntry.purchase_id == purchase_id)))
    finally:
        s.close()


def assert_books_balance():
    s = new_session()
    try:
        assert books_differences(s) == []
    finally:
        s.close()


def wait_settled(client, headers, purchase_id, timeout=15.0) -> dict:
    """Poll the status endpoint until the purchase leaves `pending`."""
    deadline = time.monotonic() + timeout
    while True:
        r = client.get(f"/menu/purchase/{purchase_id}/status", headers=headers)
        assert r.status_code == 200, r.json
        if r.json["status"] != "pending" or time.monotonic() > deadline:
            return r.json
        time.sleep(0.05)


def settle_tasks_running() -> int:
    """Settle tasks the test worker is running now (one may linger after a purchase: settle_signal.py)."""
    active = celery.control.inspect(timeout=2, limit=1).active() or {}
    return sum(t["name"] == "perfmenu.settle_purchases" for tasks in active.values() for t in tasks)


def wait_for_idle_settlement(timeout=10.0) -> None:
    """Wait until no settle task runs, so a purchase written behind the API's back stays pending."""
    deadline = time.monotonic() + timeout
    while settle_tasks_running():
        assert time.monotonic() < deadline, "a settle task is still running"
        time.sleep(0.05)


def run_concurrently(fn, args_list, workers=None):
    with ThreadPoolExecutor(max_workers=workers or len(args_list)) as pool:
        return list(pool.map(lambda a: fn(*a), args_list))


def get_purchase(purchase_id) -> Purchase:
    s = new_session()
    try:
        return s.get(Purchase, purchase_id)
    finally:
        s.close()
