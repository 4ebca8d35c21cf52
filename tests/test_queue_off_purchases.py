"""Issue 2: Queue OFF purchases end to end through HTTP and a real Celery worker."""
from __future__ import annotations

import uuid

import pytest
from conftest import assert_books_balance, balance, get_purchase, ledger_rows, run_concurrently, wait_settled
from sqlalchemy import func, select

from conftest import new_session
from models.purchases import Purchase
from worker.tasks import settle, settle_purchases

pytestmark = pytest.mark.usefixtures("celery_worker")


def buy(client, headers, menu, item, key=None, **extra):
    body = {"menu_id": str(menu.id), "item_id": str(item.id), **extra}
    if key:
        body["idempotency_key"] = key
    return client.post("/menu/purchase", json=body, headers=headers)


def test_purchase_settles_in_worker_and_books_balance(client, factory):
    fan, model = factory.user("fan", tokens=100), factory.user("model")
    menu = factory.menu(model, items=[{"name": "Dance", "token_value": 50, "bonus_loyalty_points": 30}])
    item = menu.created_items[0]
    r = buy(client, factory.headers(fan), menu, item, token_value=1, price=1)  # client price ignored
    assert r.status_code == 200, r.json
    assert r.json["success"] is True
    assert r.json["status"] == "completed"
    assert r.json["transaction_type"] == "immediate"
    assert r.json["token_value"] == 50
    assert r.json["loyalty_points_awarded"] == 30
    assert balance(fan.id, "wallet") == 50
    assert balance(model.id, "earnings") == 50
    assert balance(fan.id, "loyalty") == 30
    kinds = sorted(e.kind for e in ledger_rows(uuid.UUID(r.json["purchase_id"])))
    assert kinds == ["loyalty_award", "purchase"]
    assert_books_balance()
    wallet = client.get("/wallet", headers=factory.headers(fan)).json
    assert (wallet["token_balance"], wallet["loyalty_points"]) == (50, 30)
    status = client.get(r.json["status_url"], headers=factory.headers(fan)).json
    assert status["status"] == "completed" and status["purchase_id"] == r.json["purchase_id"]


def test_n_plus_5_concurrent_purchases_exactly_n_settle(app, factory):
    n, price = 10, 10
    fan, model = factory.user("fan", tokens=n * price), factory.user("model")
    menu = factory.menu(model, items=[{"name": "Kiss", "token_value": price}])
    item = menu.created_items[0]
    headers = factory.headers(fan)

    def one(i):
        client = app.test_client()
        r = buy(client, headers, menu, item, key=f"k-{i}")
        if r.status_code == 202:
            return wait_settled(client, headers, r.json["purchase_id"])["status"]
        return r.json.get("status") or r.json["error"]["code"] if r.status_code != 200 else r.json["status"]

    outcomes = run_concurrently(one, [(i,) for i in range(n + 5)])
    refused = [o for o in outcomes if o != "completed"]
    assert outcomes.count("completed") == n
    assert len(refused) == 5
    s = new_session()
    try:
        failed = s.scalars(select(Purchase).where(Purchase.status == "failed")).all()
        assert all(p.failure_reason == "insufficient_balance" for p in failed)
        assert s.scalar(select(func.count()).select_from(Purchase).where(Purchase.status == "completed")) == n
    finally:
        s.close()
    assert all(o in ("completed", "failed", "insufficient_balance") for o in outcomes)
    assert balance(fan.id, "wallet") == 0
    assert balance(model.id, "earnings") == n * price
    assert_books_balance()


def test_one_idempotency_key_sent_20_times_at_once_makes_one_purchase(app, factory):
    fan, model = factory.user("fan", tokens=1000), factory.user("model")
    menu = factory.menu(model, items=[{"name": "Kiss", "token_value": 10}, {"name": "Flash", "token_value": 25}])
    kiss, flash = menu.created_items
    headers = factory.headers(fan)

    def one(_):
        return buy(app.test_client(), headers, menu, kiss, key="same-key")

    responses = run_concurrently(one, [(i,) for i in range(20)])
    assert {r.status_code for r in responses} <= {200, 202}
    assert len({r.json["purchase_id"] for r in responses}) == 1
    s = new_session()
    try:
        assert s.scalar(select(func.count()).select_from(Purchase)) == 1
    finally:
        s.close()
    assert balance(fan.id, "wallet") == 990

    # The header wins over the body, and the same key for another item is refused.
    r = app.test_client().post(
        "/menu/purchase",
        json={"menu_id": str(menu.id), "item_id": str(flash.id)},
        headers={**headers, "Idempotency-Key": "same-key"},
    )
    assert r.status_code == 422
    assert r.json["error"]["code"] == "idempotency_mismatch"
    assert balance(fan.id, "wallet") == 990


def test_settlement_delivered_twice_changes_the_books_once(client, factory, session):
    fan, model = factory.user("fan", tokens=100), factory.user("model")
    menu = factory.menu(model, items=[{"name": "Song", "token_value": 75, "bonus_loyalty_points": 50}])
    item = menu.created_items[0]
    # A purchase committed as pending whose message has not been delivered yet.
    from datetime import date

    from models.types import utcnow

    purchase = Purchase(fan_id=fan.id, model_id=model.id, menu_id=menu.id, item_id=item.id, item_name="Song",
                        token_value=75, loyalty_points=50, transaction_type="immediate",
                        purchase_day=date.today(), created_at=utcnow())
    session.add(purchase)
    session.commit()
    # Delivered twice to the real worker, and once more run in this process.
    settle_purchases.apply_async(args=[[str(purchase.id)]])
    settle_purchases.apply_async(args=[[str(purchase.id)]])
    settle([purchase.id])
    import time

    deadline = time.monotonic() + 10
    while get_purchase(purchase.id).status == "pending" and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)  # let the second delivery run too
    assert get_purchase(purchase.id).status == "completed"
    assert len(ledger_rows(purchase.id)) == 2
    assert balance(fan.id, "wallet") == 25
    assert balance(model.id, "earnings") == 75
    assert balance(fan.id, "loyalty") == 50
    assert_books_balance()
