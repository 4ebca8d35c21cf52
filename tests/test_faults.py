"""Regression tests for what the bank test found under faults (each reproduces one fault deterministically)."""
from __future__ import annotations

import threading
import time
import uuid

from sqlalchemy import func, select, text

from conftest import RUNTIME, new_session
from models.purchases import Purchase
from models.types import utcnow


def test_database_connection_killed_mid_request_is_503_with_the_envelope_then_retry_succeeds(app, factory):
    """The request's INSERT waits on a row another transaction holds (same idempotency key, uncommitted);
    its backend is terminated while it waits. Before the fix: 500 internal_error."""
    fan, model = factory.user("fan", tokens=100), factory.user("model")
    menu = factory.menu(model, items=[{"name": "Kiss", "token_value": 10}])
    item = menu.created_items[0]
    headers = {**factory.headers(fan), "Idempotency-Key": "fault-1"}
    body = {"menu_id": str(menu.id), "item_id": str(item.id)}

    blocker = RUNTIME.engine.connect()
    tx = blocker.begin()
    now = utcnow()
    blocker.execute(Purchase.__table__.insert().values(
        id=uuid.uuid4(), fan_id=fan.id, model_id=model.id, menu_id=menu.id, item_id=item.id, item_name="Kiss",
        token_value=10, loyalty_points=0, transaction_type="immediate", status="pending",
        idempotency_key="fault-1", purchase_day=now.date(), created_at=now, queue_priority=0,
        estimated_duration_minutes=0))
    result = {}
    thread = threading.Thread(target=lambda: result.update(r=app.test_client().post("/menu/purchase", json=body,
                                                                                    headers=headers)))
    thread.start()
    try:
        victim = None
        for _ in range(100):
            with RUNTIME.engine.connect() as conn:
                victim = conn.execute(text(
                    "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
                    "AND wait_event_type = 'Lock' AND query ILIKE 'INSERT INTO purchases%'")).scalar()
                if victim:
                    conn.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": victim})
                    break
            time.sleep(0.05)
        assert victim, "the request never waited on the lock"
        thread.join(30)
    finally:
        tx.rollback()
        blocker.close()
    r = result["r"]
    assert r.status_code == 503, (r.status_code, r.get_json())
    assert r.get_json()["error"]["code"] == "service_unavailable"
    assert r.headers["Retry-After"] == "1"
    s = new_session()
    try:
        assert s.scalar(select(func.count()).select_from(Purchase)) == 0  # nothing half-written
    finally:
        s.close()
    # The client's retry with the same key is served normally (the pool replaces the dead connection).
    retry = app.test_client().post("/menu/purchase", json=body, headers=headers)
    assert retry.status_code in (200, 202), retry.get_json()


def test_connection_killed_before_teardown_does_not_break_the_response(app, database):
    """Found by the bank test: the teardown's rollback on a terminated backend raised out of Flask and
    gunicorn answered a bare 500 (no envelope) for a request that had already been answered."""
    from web.deps import close_db, db

    with app.app_context():
        session = db()
        pid = session.execute(text("SELECT pg_backend_pid()")).scalar()  # a transaction is open now
        with RUNTIME.engine.connect() as conn:
            conn.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
        time.sleep(0.2)
        close_db()  # must not raise
    with RUNTIME.engine.connect() as conn:  # the pool still serves working connections
        assert conn.execute(text("SELECT 1")).scalar() == 1


def test_intake_after_its_pooled_connections_were_killed_buys_normally(app, factory):
    """Intake's engine has no pre-ping (models/db.py, `reading`): a connection the database dropped while pooled
    fails the first read, which runs again on a new connection. A restart or a killed backend between two
    purchases costs the fan nothing: no 503, and the purchase is written once."""
    fan, model = factory.user("fan", tokens=100), factory.user("model")
    menu = factory.menu(model, items=[{"name": "Kiss", "token_value": 10}])
    body = {"menu_id": str(menu.id), "item_id": str(menu.created_items[0].id)}
    client = app.test_client()
    assert client.post("/menu/purchase", json=body, headers=factory.headers(fan)).status_code in (200, 202)
    pool = RUNTIME.autocommit_engine.pool
    assert pool.checkedin() >= 1  # the connection that read and wrote is back in the pool, alive
    with RUNTIME.engine.connect() as conn:  # every other backend of this database: the pooled one included
        killed = conn.execute(text("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                                   "WHERE datname = current_database() AND pid <> pg_backend_pid()")).scalar()
    assert killed >= 1
    time.sleep(0.2)
    r = client.post("/menu/purchase", json=body, headers={**factory.headers(fan), "Idempotency-Key": "after-kill"})
    assert r.status_code in (200, 202), r.get_json()
    s = new_session()
    try:
        assert s.scalar(select(func.count()).select_from(Purchase).where(Purchase.fan_id == fan.id)) == 2
    finally:
        s.close()


def test_toy_activation_whose_task_was_lost_is_asked_again_by_the_sweep(client, factory, celery_worker):
    """Found by the bank test: a Redis restart empties the broker, and a completed purchase's toy activation
    task was gone for good (no row, nothing to retry). Beat's activation sweep asks again."""
    from datetime import timedelta

    from test_lovense import TEASE_LOW, pair, wait_activation

    from models.services.settlement import settle_pending
    from worker.tasks import sweep_activations

    fan, model = factory.user("fan", tokens=100), factory.user("model")
    pair(client, model)
    menu = factory.menu(model, items=[TEASE_LOW])
    item = menu.created_items[0]
    s = new_session()
    try:
        now = utcnow()
        p = Purchase(fan_id=fan.id, model_id=model.id, menu_id=menu.id, item_id=item.id, item_name=item.name,
                     token_value=item.token_value, loyalty_points=0, lovense_activation=item.lovense_activation,
                     transaction_type="immediate", purchase_day=now.date(), created_at=now)
        s.add(p)
        s.commit()
        settle_pending(s, RUNTIME.settings, [p.id])  # settled, but the follow-up (activation task) was lost
        purchase_id = p.id
    finally:
        s.close()
    assert sweep_activations(utcnow() + timedelta(minutes=1)) == 1
    assert wait_activation(purchase_id).status == "sent"
    assert sweep_activations(utcnow() + timedelta(minutes=1)) == 0  # nothing asked twice once it is done
