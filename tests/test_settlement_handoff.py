"""The web's hand-off (worker/handoff.py): one settle task per burst, never a purchase left behind."""
from __future__ import annotations

import threading
import time

import pytest
from conftest import (assert_books_balance, get_purchase, run_concurrently, wait_for_idle_settlement,
                      wait_settled)
from sqlalchemy import func, select

from conftest import new_session
from models.purchases import Purchase

from worker.celery_app import celery
from models.services.settle_signal import SCHEDULED_KEY
from worker.tasks import settle_purchases

pytestmark = pytest.mark.usefixtures("celery_worker")


def buy(client, headers, menu, key=None):
    item = menu.created_items[0]
    body = {"menu_id": str(menu.id), "item_id": str(item.id)}
    if key:
        body["idempotency_key"] = key
    return client.post("/menu/purchase", json=body, headers=headers)


def wait_until(predicate, timeout):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def test_task_drops_the_flag_when_done_so_the_next_purchase_publishes(client, factory, redis_client):
    fan, model = factory.user("fan", tokens=100), factory.user("model")
    menu = factory.menu(model)
    headers = factory.headers(fan)
    first = buy(client, headers, menu)
    assert first.status_code == 200 and first.json["status"] == "completed", first.json
    # Dropped by the task before its last claim, well before the flag's own TTL (5 s) would.
    assert wait_until(lambda: not redis_client.exists(SCHEDULED_KEY), 2.0)
    second = buy(client, headers, menu)
    assert second.status_code == 200 and second.json["status"] == "completed", second.json
    assert_books_balance()


def test_purchase_under_a_promised_claim_waits_for_that_task_and_is_settled(app, factory, redis_client):
    fan, model = factory.user("fan", tokens=100), factory.user("model")
    menu = factory.menu(model)
    headers = factory.headers(fan)
    # No task of an earlier test still lingering (it would be woken by this purchase and settle it).
    wait_for_idle_settlement()
    redis_client.set(SCHEDULED_KEY, "1", ex=30)  # as if a settle task were scheduled and not yet claiming
    answers = []
    request = threading.Thread(target=lambda: answers.append(buy(app.test_client(), headers, menu, key="k1")))
    request.start()
    try:
        # The web published nothing: the purchase stays pending while the promised claim has not happened.
        assert wait_until(lambda: _pending_count(model) == 1, 5)
        time.sleep(0.5)
        assert _pending_count(model) == 1
        settle_purchases.apply_async()  # the promised task arrives and settles it
    finally:
        request.join(10)
    assert answers and answers[0].status_code == 200, answers and answers[0].json
    assert get_purchase(answers[0].json["purchase_id"]).status == "completed"
    assert wait_until(lambda: not redis_client.exists(SCHEDULED_KEY), 2.0)
    assert_books_balance()


def test_a_lingering_task_settles_the_next_purchase_without_a_new_task(client, factory, redis_client):
    fan, model = factory.user("fan", tokens=100), factory.user("model")
    menu = factory.menu(model)
    headers = factory.headers(fan)
    wait_for_idle_settlement()
    run_before = _settle_tasks_run()
    assert buy(client, headers, menu).json["status"] == "completed"  # published one task
    # That task lingers, flag held, instead of ending: the next purchase's SET NX fails (the web publishes
    # nothing) and its pushed wake-up has it settled within the request's wait all the same.
    assert redis_client.exists(SCHEDULED_KEY)
    second = buy(client, headers, menu)
    assert second.status_code == 200 and second.json["status"] == "completed", second.json
    assert _settle_tasks_run() == run_before + 1
    # Idle for SETTLE_LINGER_SECONDS, it drops the flag and ends.
    assert wait_until(lambda: not redis_client.exists(SCHEDULED_KEY), 5)
    assert_books_balance()


def test_burst_from_many_fans_all_settle_and_books_balance(app, factory, redis_client):
    model = factory.user("model")
    menu = factory.menu(model)
    fans = [factory.user("fan", tokens=50) for _ in range(6)]
    headers = [factory.headers(f) for f in fans]

    def one(i):
        client = app.test_client()
        r = buy(client, headers[i % len(fans)], menu, key=f"burst-{i}")
        assert r.status_code in (200, 202), r.json
        if r.status_code == 202:
            return wait_settled(client, headers[i % len(fans)], r.json["purchase_id"])["status"]
        return r.json["status"]

    statuses = run_concurrently(one, [(i,) for i in range(30)], workers=10)
    assert statuses == ["completed"] * 30
    assert _pending_count(model) == 0
    assert wait_until(lambda: not redis_client.exists(SCHEDULED_KEY), 2.0)
    assert_books_balance()


def _settle_tasks_run() -> int:
    """Settle tasks the worker has received so far, as its own remote-control stats count them."""
    stats = celery.control.inspect(timeout=2, limit=1).stats() or {}
    assert stats, "the worker did not answer"
    return sum(s.get("total", {}).get("perfmenu.settle_purchases", 0) for s in stats.values())


def _pending_count(model) -> int:
    s = new_session()
    try:
        return s.scalar(select(func.count()).select_from(Purchase).where(Purchase.model_id == model.id,
                                                                          Purchase.status == "pending"))
    finally:
        s.close()
