"""Issue 6: OpenAPI document, rate limits, health and readiness, metrics, JSON logs, the beat pending sweep."""
from __future__ import annotations

import io
import json
import logging
import re
import subprocess
import sys
import time
import uuid
from datetime import timedelta

import pytest
from conftest import (SETTINGS, Factory, assert_books_balance, balance, get_purchase, ledger_rows, make_settings,
                      new_session, subprocess_env, wait_for_idle_settlement)
from processes import ROOT, ProcessGroup, free_port, start_redis_server
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import func, select

from models.infra.logs import JsonFormatter
from models.purchases import Purchase, purchase_day_of
from models.types import utcnow
from web import create_app

# Routes that need no token (login, health checks, the Lovense callback; metrics has its own token).
PUBLIC_ENDPOINTS = {"auth.login", "ops.healthz", "ops.readyz", "ops.prometheus_metrics"}
PUBLIC_ENDPOINT_PATTERN = re.compile(r"callback", re.I)  # signed (HMAC) callbacks


def make_app(**settings):
    app = create_app(make_settings(**settings))
    app.config["TESTING"] = True
    return app


def buy(client, headers, menu, item):
    return client.post("/menu/purchase", json={"menu_id": str(menu.id), "item_id": str(item.id)}, headers=headers)


# --- OpenAPI -----------------------------------------------------------------------------------------------------

def openapi_path(rule: str) -> str:
    return re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule)


def test_openapi_documents_every_route_with_auth_errors_and_examples(app, client):
    spec = client.get("/openapi.json").json
    assert spec["openapi"].startswith("3.")
    assert spec["components"]["securitySchemes"]["bearerAuth"]["scheme"] == "bearer"
    assert spec["security"] == [{"bearerAuth": []}]
    error_refs = {"#/components/responses/" + name for name in spec["components"]["responses"]}
    for name in spec["components"]["responses"]:  # flask-smorest's automatic responses use our envelope
        body = spec["components"]["responses"][name]["content"]["application/json"]
        assert body["schema"] == {"$ref": "#/components/schemas/ErrorOut"}, name

    checked = 0
    for rule in app.url_map.iter_rules():
        # The docs, and the HTML pages (web/pages.py: not API; tests/test_console.py)
        if rule.endpoint == "static" or rule.endpoint.startswith(("api-docs.", "swagger_assets.", "pages.")):
            continue
        path = openapi_path(rule.rule)
        assert path in spec["paths"], f"{rule.rule} ({rule.endpoint}) is missing from the OpenAPI document"
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            where = f"{method} {rule.rule}"
            op = spec["paths"][path].get(method.lower())
            assert op is not None, f"{where} is missing from the OpenAPI document"
            assert op.get("summary"), f"{where} has no summary (docstring)"
            responses = op["responses"]
            if op.get("security") == []:
                assert rule.endpoint in PUBLIC_ENDPOINTS or PUBLIC_ENDPOINT_PATTERN.search(rule.rule), \
                    f"{where} is documented as public"
            else:
                assert "security" not in op or op["security"] == [{"bearerAuth": []}], where
                assert "401" in responses, f"{where} needs a token but documents no 401"
            for status, response in responses.items():
                if "$ref" in response:
                    assert response["$ref"] in error_refs, where
                    continue
                content = response.get("content", {}).get("application/json")
                if status.startswith(("4", "5")):
                    assert content is not None, f"{where} {status} has no JSON body"
                    assert content["schema"] == {"$ref": "#/components/schemas/ErrorOut"}, f"{where} {status}"
                    assert "example" in content or "examples" in content, f"{where} {status} has no example"
                    assert content.get("example", {}).get("error", {}).get("code"), f"{where} {status}"
                elif status.startswith("2") and content is not None:
                    assert "example" in content or "examples" in content, f"{where} {status} has no example"
            body = op.get("requestBody", {}).get("content", {}).get("application/json")
            if body is not None:
                assert "example" in body or "examples" in body, f"{where} request body has no example"
            checked += 1
    assert checked >= 10

    docs = client.get("/docs")
    assert docs.status_code == 200 and b"swagger-ui" in docs.data.lower()


# --- Rate limits -------------------------------------------------------------------------------------------------

@pytest.mark.usefixtures("celery_worker")
def test_purchase_rate_limit_per_fan_answers_429_with_retry_after(database):
    app = make_app(purchase_rate_limit="3 per minute")
    factory, client = Factory(app), app.test_client()
    fan, other, model = factory.user("fan", tokens=1000), factory.user("fan", tokens=100), factory.user("model")
    menu = factory.menu(model)
    item = menu.created_items[0]
    headers = factory.headers(fan)
    for n in range(3):
        r = buy(client, {**headers, "Idempotency-Key": f"limit-{n}"}, menu, item)
        assert r.status_code == 200, r.json
        assert r.json["status"] == "completed"
        assert "Retry-After" not in r.headers

    r = buy(client, headers, menu, item)
    assert r.status_code == 429
    assert r.json["error"]["code"] == "rate_limited"
    assert r.json["error"]["message"]
    assert 0 < int(r.headers["Retry-After"]) <= 60
    # A retry of a purchase already made is answered, not limited: it makes no new purchase.
    retry = buy(client, {**headers, "Idempotency-Key": "limit-0"}, menu, item)
    assert retry.status_code == 200 and retry.json["status"] == "completed", retry.json
    s = new_session()
    try:
        assert s.scalar(select(func.count()).select_from(Purchase).where(Purchase.fan_id == fan.id)) == 3
    finally:
        s.close()
    assert balance(fan.id, "wallet") == 1000 - 3 * item.token_value

    # The limit is per fan: another fan (same client address) still buys.
    r = buy(client, factory.headers(other), menu, item)
    assert r.status_code == 200, r.json


def test_login_rate_limit_per_client_address(database):
    app = make_app(login_rate_limit="3 per minute")
    factory, client = Factory(app), app.test_client()
    fan = factory.user("fan")
    for password in ("wrong", "wrong", "pw"):
        r = client.post("/auth/login", json={"username": fan.username, "password": password})
        assert r.status_code in (200, 401)
    r = client.post("/auth/login", json={"username": fan.username, "password": "pw"})
    assert r.status_code == 429
    assert r.json["error"]["code"] == "rate_limited"
    assert int(r.headers["Retry-After"]) > 0
    # Another address is not affected.
    r = client.post("/auth/login", json={"username": fan.username, "password": "pw"},
                    environ_base={"REMOTE_ADDR": "10.1.2.3"})
    assert r.status_code == 200


# --- Health and readiness ----------------------------------------------------------------------------------------

def test_healthz_and_readyz_follow_redis_down_and_back(database):
    port = free_port()
    app = make_app(redis_url=f"redis://127.0.0.1:{port}/0")
    client = app.test_client()
    assert client.get("/healthz").json == {"status": "ok"}

    r = client.get("/readyz")  # nothing listens on the port
    assert r.status_code == 503
    assert r.json["error"]["code"] == "not_ready"
    assert "redis" in r.json["error"]["message"]
    assert r.json["checks"] == {"database": "ok", "schema": "ok", "redis": "down", "broker": "ok"}
    assert client.get("/healthz").status_code == 200  # the process is still up

    server = start_redis_server(port)
    try:
        r = client.get("/readyz")
        assert r.status_code == 200, r.json
        assert r.json == {"status": "ready", "checks": {"database": "ok", "schema": "ok", "redis": "ok",
                                                                   "broker": "ok"}}
    finally:
        server.kill()
    r = client.get("/readyz")
    assert r.status_code == 503 and r.json["checks"]["redis"] == "down"


def test_readyz_names_an_unreachable_broker_and_database(database):
    port = free_port()
    app = make_app(broker_url=f"redis://127.0.0.1:{port}/0",
                   database_url=f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/nothing")
    r = app.test_client().get("/readyz")
    assert r.status_code == 503
    assert r.json["checks"] == {"database": "down", "redis": "ok", "broker": "down"}
    assert r.json["error"]["message"] == "Not ready: database, broker"


def test_readyz_refuses_a_database_whose_migrations_have_not_run(database):
    from sqlalchemy import create_engine, text

    name = f"perfmenu_unmigrated_{uuid.uuid4().hex[:8]}"
    admin = create_engine(database.url.set(database="postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        r = make_app(database_url=database.url.set(database=name).render_as_string(hide_password=False)) \
            .test_client().get("/readyz")
        assert r.status_code == 503
        assert r.json["checks"]["database"] == "ok" and r.json["checks"]["schema"] == "not_migrated"
        assert r.json["error"]["message"] == "Not ready: schema"
    finally:
        from models.db import engine_for

        engine_for.cache_clear()  # drop the pool that holds a connection to it
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE "{name}" WITH (FORCE)'))


@pytest.mark.parametrize("entry", ["import web.wsgi", "import worker.main"])
def test_a_bad_setting_ends_a_process_with_one_clear_line(entry, tmp_path):
    def start(**env):
        return subprocess.run([sys.executable, "-c", entry], cwd=ROOT, env=subprocess_env(**env),
                              capture_output=True, text=True, timeout=120)

    for env, named in ((dict(PERFMENU_TIME_ZONE="Mars/Olympus"), "PERFMENU_TIME_ZONE"),
                       (dict(JWT_SECRET_KEY="short"), "JWT_SECRET_KEY"),
                       (dict(QUEUE_CAPACITY="many"), "QUEUE_CAPACITY")):
        out = start(**env)
        assert out.returncode == 2, out.stderr[-2000:]
        assert "Traceback" not in out.stderr and named in out.stderr.strip().splitlines()[-1], out.stderr[-2000:]
    # A metrics directory that does not exist yet is made; a place that cannot be one is named.
    missing = tmp_path / "not" / "yet"
    assert start(PROMETHEUS_MULTIPROC_DIR=str(missing)).returncode == 0 and missing.is_dir()
    (tmp_path / "a-file").write_text("")
    out = start(PROMETHEUS_MULTIPROC_DIR=str(tmp_path / "a-file" / "metrics"))
    assert out.returncode == 2 and "PROMETHEUS_MULTIPROC_DIR" in out.stderr, out.stderr[-2000:]


# --- Metrics -----------------------------------------------------------------------------------------------------

def scrape(client) -> dict:
    r = client.get("/metrics")
    assert r.status_code == 200
    assert r.content_type.startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(r.data.decode()):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples, name, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


@pytest.mark.usefixtures("celery_worker")
def test_metrics_count_requests_purchases_settlement_and_queue_depth(client, factory):
    fan, model = factory.user("fan", tokens=1000), factory.user("model")
    off = factory.menu(model, items=[{"name": "Dance", "token_value": 50}])
    on = factory.menu(model, name="Queue", queue_mode="ON", items=[{"name": "Photo", "token_value": 200}])
    poor = factory.user("fan", tokens=1)
    headers = factory.headers(fan)
    before = scrape(client)

    assert buy(client, headers, off, off.created_items[0]).json["status"] == "completed"
    assert buy(client, headers, on, on.created_items[0]).json["status"] == "queued"
    assert buy(client, factory.headers(poor), off, off.created_items[0]).status_code == 402
    after = scrape(client)

    def delta(name, **labels):
        return value(after, name, **labels) - value(before, name, **labels)

    # Settled in the Celery worker's processes, read here: multiprocess mode adds them up.
    assert delta("perfmenu_purchases_total", outcome="completed", reason="") == 1
    assert delta("perfmenu_purchases_total", outcome="queued", reason="") == 1
    assert delta("perfmenu_purchases_total", outcome="refused", reason="insufficient_balance") == 1
    assert delta("perfmenu_settlement_latency_seconds_count") == 2
    assert delta("perfmenu_http_requests_total", endpoint="/menu/purchase", method="POST", status="200") == 2
    assert delta("perfmenu_http_requests_total", endpoint="/menu/purchase", method="POST", status="402") == 1
    assert value(after, "perfmenu_queue_entries", status="queued") == 1
    assert value(after, "perfmenu_queue_depth_max") == 1
    assert 0 <= value(after, "perfmenu_queue_oldest_entry_age_seconds") < 60


@pytest.mark.usefixtures("celery_worker")
def test_purchase_counters_match_the_database_after_a_mixed_run(client, factory, session):
    fan, model, admin = factory.user("fan", tokens=5000), factory.user("model"), factory.user("admin")
    off = factory.menu(model, items=[{"name": "Dance", "token_value": 50}])
    on = factory.menu(model, name="Queue", queue_mode="ON", items=[{"name": "Photo", "token_value": 200}])
    fan_h, model_h, admin_h = factory.headers(fan), factory.headers(model), factory.headers(admin)
    before = scrape(client)

    assert buy(client, fan_h, off, off.created_items[0]).json["status"] == "completed"
    entries = [buy(client, fan_h, on, on.created_items[0]).json["purchase_id"] for _ in range(4)]
    assert client.post(f"/queue/{entries[0]}/start", headers=model_h).status_code == 200
    assert client.post(f"/queue/{entries[0]}/complete", headers=model_h).status_code == 200
    assert client.post(f"/queue/{entries[1]}/reject", json={"reason": "cannot_deliver"},
                       headers=model_h).status_code == 200
    assert client.post(f"/queue/{entries[2]}/cancel", headers=fan_h).status_code == 200
    assert client.post(f"/admin/purchases/{entries[3]}/refund", json={}, headers=admin_h).status_code == 200
    after = scrape(client)

    rows = session.execute(select(Purchase.status, func.coalesce(Purchase.failure_reason, Purchase.refund_reason, ""),
                                  func.count()).group_by(Purchase.status, Purchase.failure_reason,
                                                         Purchase.refund_reason)).all()
    assert {(s, r) for s, r, _n in rows} == {("completed", ""), ("refunded", "cannot_deliver"),
                                             ("refunded", "cancelled_by_fan"), ("refunded", "admin_refund")}
    for status, reason, count in rows:
        got = value(after, "perfmenu_purchases_total", outcome=status, reason=reason) - \
            value(before, "perfmenu_purchases_total", outcome=status, reason=reason)
        assert got == count, (status, reason)
    queued = session.scalar(select(func.count()).select_from(Purchase).where(Purchase.transaction_type == "queued"))
    assert value(after, "perfmenu_purchases_total", outcome="queued", reason="") - \
        value(before, "perfmenu_purchases_total", outcome="queued", reason="") == queued == 4
    assert all(("perfmenu_lovense_attempts_total", (("result", r),)) in after for r in ("sent", "retry", "failed"))


def test_metrics_token_when_configured(database):
    client = make_app(metrics_token="scrape-me").test_client()
    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", headers={"Authorization": "Bearer scrape-me"}).status_code == 200


# --- Logs --------------------------------------------------------------------------------------------------------

@pytest.fixture
def json_log():
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    yield lambda: [json.loads(line) for line in stream.getvalue().splitlines()]
    root.removeHandler(handler)
    root.setLevel(old_level)


def test_request_id_is_echoed_and_logged_without_personal_data(client, factory, json_log):
    fan = factory.user("fan", password="s3cret-pass")
    r = client.post("/auth/login", json={"username": fan.username, "password": "s3cret-pass"},
                    headers={"X-Request-ID": "req-abc.123"})
    assert r.status_code == 200
    assert r.headers["X-Request-ID"] == "req-abc.123"
    token = r.json["access_token"]

    generated = client.get("/healthz", headers={"X-Request-ID": "bad id <script>"}).headers["X-Request-ID"]
    assert re.fullmatch(r"[0-9a-f]{32}", generated)
    assert re.fullmatch(r"[0-9a-f]{32}", client.get("/healthz").headers["X-Request-ID"])

    records = json_log()
    login = [r for r in records if r.get("endpoint") == "/auth/login"]
    assert login and login[0]["request_id"] == "req-abc.123" and login[0]["status"] == 200
    assert login[0]["message"] == "request" and login[0]["method"] == "POST"
    assert any(r.get("request_id") == generated for r in records)
    text = "\n".join(json.dumps(r) for r in records)
    for secret in (fan.username, "s3cret-pass", token):
        assert secret not in text


def test_worker_log_lines_carry_the_task_id(json_log):
    from worker.celery_app import celery

    @celery.task(name="test.log_line")
    def log_line():
        logging.getLogger("perfmenu.test").warning("inside", extra={"purchase_id": "p-1", "password": "x"})

    result = log_line.apply(task_id="task-42")
    assert result.successful()
    line = [r for r in json_log() if r["message"] == "inside"][0]
    assert line["task_id"] == "task-42"
    assert line["purchase_id"] == "p-1" and line["level"] == "WARNING"
    assert "password" not in line


# --- Beat: the pending sweep -------------------------------------------------------------------------------------

def start_beat(tmp_path, **env) -> ProcessGroup:
    return ProcessGroup("beat", [sys.executable, "-m", "celery", "-A", "worker.main", "beat", "--loglevel", "WARNING",
                                 "--schedule", str(tmp_path / "beat-schedule")], subprocess_env(**env)).start()


@pytest.mark.usefixtures("celery_worker")
def test_beat_pending_sweep_settles_a_lost_purchase_and_leaves_settled_ones_alone(client, factory, tmp_path):
    fan, model = factory.user("fan", tokens=100), factory.user("model")
    menu = factory.menu(model, items=[{"name": "Dance", "token_value": 30, "bonus_loyalty_points": 3}])
    item = menu.created_items[0]
    r = buy(client, factory.headers(fan), menu, item)
    assert r.status_code == 200 and r.json["status"] == "completed"
    settled_id = uuid.UUID(r.json["purchase_id"])
    wait_for_idle_settlement()  # the task that settled it has ended (it lingers a moment for more purchases)

    # The lost message: committed as pending ten minutes ago and never handed to the worker.
    old = utcnow() - timedelta(minutes=10)
    s = new_session()
    try:
        settled = s.get(Purchase, settled_id)
        settled.created_at = old  # old enough for the sweep too: it must still be left alone
        lost = Purchase(fan_id=fan.id, model_id=model.id, menu_id=menu.id, item_id=item.id, item_name=item.name,
                        token_value=item.token_value, loyalty_points=item.bonus_loyalty_points,
                        transaction_type="immediate", purchase_day=purchase_day_of(old, SETTINGS.tz),
                        created_at=old)
        s.add(lost)
        s.commit()
        lost_id = lost.id
    finally:
        s.close()
    settled_before = get_purchase(settled_id)
    time.sleep(2)
    assert get_purchase(lost_id).status == "pending"  # nothing settles it but the sweep

    beat = start_beat(tmp_path, PENDING_SWEEP_INTERVAL_SECONDS=1)
    try:
        deadline = time.monotonic() + 30
        while get_purchase(lost_id).status == "pending" and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        beat.stop()

    swept = get_purchase(lost_id)
    assert swept.status == "completed"
    assert sorted(e.kind for e in ledger_rows(lost_id)) == ["loyalty_award", "purchase"]
    after = get_purchase(settled_id)
    assert (after.status, after.settled_at, after.completed_at) == (
        "completed", settled_before.settled_at, settled_before.completed_at)
    assert sorted(e.kind for e in ledger_rows(settled_id)) == ["loyalty_award", "purchase"]
    assert balance(fan.id, "wallet") == 100 - 2 * 30
    assert balance(model.id, "earnings") == 60
    assert balance(fan.id, "loyalty") == 6
    assert_books_balance()


@pytest.mark.usefixtures("celery_worker")
def test_metrics_count_lovense_attempts_by_result(client, factory, fake_lovense):
    from fake_lovense import http_status
    from test_lovense import TEASE_LOW, paired_model_with, wait_activation

    fan = factory.user("fan", tokens=100)
    _model, menu = paired_model_with(client, factory, TEASE_LOW)
    fake_lovense.script("/api/lan/v2/command", http_status(503))  # then the fake's default: success
    before = scrape(client)
    purchase_id = buy(client, factory.headers(fan), menu, menu.created_items[0]).json["purchase_id"]
    assert wait_activation(uuid.UUID(purchase_id)).status == "sent"
    after = scrape(client)
    assert value(after, "perfmenu_lovense_attempts_total", result="retry") - \
        value(before, "perfmenu_lovense_attempts_total", result="retry") == 1
    assert value(after, "perfmenu_lovense_attempts_total", result="sent") - \
        value(before, "perfmenu_lovense_attempts_total", result="sent") == 1
