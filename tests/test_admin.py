"""Issue 5: operator endpoints, and the books check after a mixed run (and on a corrupted balance)."""
from __future__ import annotations

import uuid
from datetime import date, timedelta

import pytest
from conftest import RUNTIME, assert_books_balance, balance, get_purchase, ledger_rows, run_concurrently
from sqlalchemy import func, select, text

from conftest import new_session
from models.ledger import LedgerEntry
from models.purchases import Purchase
from models.types import utcnow
from models.users import Subscription, User
from models.services import performance_queue


@pytest.fixture
def admin(factory):
    return factory.headers(factory.user("admin"))


def test_only_admins(client, factory):
    for role in ("fan", "model"):
        headers = factory.headers(factory.user(role))
        assert client.get("/admin/books", headers=headers).status_code == 403
        assert client.post("/admin/users", json={"username": "x", "password": "p" * 8, "role": "fan"},
                           headers=headers).status_code == 403
    assert client.get("/admin/books").status_code == 401


def test_create_users_of_every_role(client, admin):
    for role in ("fan", "model", "admin"):
        r = client.post("/admin/users", json={"username": f"new-{role}", "password": "long-enough",
                                              "role": role, "display_name": "New"}, headers=admin)
        assert r.status_code == 201, r.json
        assert (r.json["username"], r.json["role"], r.json["is_active"]) == (f"new-{role}", role, True)
        assert "password" not in r.json
        login = client.post("/auth/login", json={"username": f"new-{role}", "password": "long-enough"})
        assert login.status_code == 200 and login.json["role"] == role
    fan_id = uuid.UUID(client.post("/admin/users", json={"username": "fan-2", "password": "long-enough",
                                                        "role": "fan"}, headers=admin).json["id"])
    assert balance(fan_id, "wallet") == 0 and balance(fan_id, "loyalty") == 0
    r = client.post("/admin/users", json={"username": "new-fan", "password": "long-enough", "role": "fan"},
                    headers=admin)
    assert r.status_code == 409 and r.json["error"]["code"] == "username_taken"
    # Issue 28, item 12: the platform users' names are reserved (a local "platform:<id>" made every request of
    # that platform user answer 500).
    r = client.post("/admin/users", json={"username": "platform:00000000-0000-0000-0000-0000000000aa",
                                          "password": "long-enough", "role": "fan"}, headers=admin)
    assert r.status_code == 409 and r.json["error"]["code"] == "username_taken", r.json
    for body, field in (({"username": "a", "password": "short", "role": "fan"}, "password"),
                        ({"username": "a", "password": "long-enough", "role": "boss"}, "role"),
                        ({"password": "long-enough", "role": "fan"}, "username")):
        r = client.post("/admin/users", json=body, headers=admin)
        assert r.status_code == 422 and field in r.json["fields"]


def test_top_up_is_ledgered_and_idempotent(app, client, admin, factory):
    fan = factory.user("fan")
    url = f"/admin/users/{fan.id}/top-up"
    r = client.post(url, json={"amount": 500, "idempotency_key": "wire-1"}, headers=admin)
    assert r.status_code == 201, r.json
    assert (r.json["amount"], r.json["token_balance"], r.json["replayed"]) == (500, 500, False)
    again = client.post(url, json={"amount": 500}, headers={**admin, "Idempotency-Key": "wire-1"})
    assert again.status_code == 200 and again.json["replayed"] is True
    assert again.json["entry_id"] == r.json["entry_id"]
    assert balance(fan.id, "wallet") == 500

    # The same key at the same moment, many times: one top-up.
    def one(_):
        return app.test_client().post(url, json={"amount": 70, "idempotency_key": "wire-2"}, headers=admin)

    responses = run_concurrently(one, [(i,) for i in range(8)])
    assert sorted(r.status_code for r in responses) == [200] * 7 + [201], [r.json for r in responses]
    assert balance(fan.id, "wallet") == 570
    s = new_session()
    try:
        rows = s.scalars(select(LedgerEntry).where(LedgerEntry.kind == "top_up")).all()
        assert sorted((e.external_ref, e.amount) for e in rows) == [("wire-1", 500), ("wire-2", 70)]
    finally:
        s.close()

    r = client.post(url, json={"amount": 999, "idempotency_key": "wire-1"}, headers=admin)
    assert r.status_code == 422 and r.json["error"]["code"] == "idempotency_mismatch"
    r = client.post(url, json={"amount": 5}, headers=admin)
    assert r.status_code == 422 and r.json["error"]["code"] == "idempotency_key_required"
    for amount in (0, -5, 10_000_001, "5", 1.5):
        r = client.post(url, json={"amount": amount, "idempotency_key": "k"}, headers=admin)
        assert r.status_code == 422 and "amount" in r.json["fields"]
    model = factory.user("model")
    assert client.post(f"/admin/users/{model.id}/top-up", json={"amount": 5, "idempotency_key": "m"},
                       headers=admin).status_code == 404
    assert balance(fan.id, "wallet") == 570
    assert_books_balance()


def test_grant_and_revoke_subscription(client, admin, factory):
    fan, model = factory.user("fan"), factory.user("model")
    menu = factory.menu(model, visibility="subscribers_only")
    fan_headers = factory.headers(fan)
    assert client.get(f"/menu/{menu.id}", headers=fan_headers).status_code == 403
    url = f"/admin/subscriptions/{fan.id}/{model.id}"
    r = client.put(url, json={"days": 30}, headers=admin)
    assert r.status_code == 200, r.json
    assert client.get(f"/menu/{menu.id}", headers=fan_headers).status_code == 200
    later = (utcnow() + timedelta(days=90)).replace(microsecond=0)
    r = client.put(url, json={"expires_at": later.isoformat()}, headers=admin)
    assert r.status_code == 200
    s = new_session()
    try:
        subs = s.scalars(select(Subscription)).all()
        assert len(subs) == 1 and subs[0].expires_at == later
    finally:
        s.close()
    for body, field in (({}, "days"), ({"days": 1, "expires_at": later.isoformat()}, "days"), ({"days": 0}, "days"),
                        ({"expires_at": "2001-01-01T00:00:00+00:00"}, "expires_at")):
        r = client.put(url, json=body, headers=admin)
        assert r.status_code == 422 and field in r.json["fields"], r.json
    assert client.put(f"/admin/subscriptions/{model.id}/{fan.id}", json={"days": 1},
                      headers=admin).status_code == 404
    assert client.delete(url, headers=admin).status_code == 204
    assert client.get(f"/menu/{menu.id}", headers=fan_headers).status_code == 403
    assert client.delete(url, headers=admin).status_code == 404


def make_purchase(fan, model, menu, item, status, created_at=None, **fields) -> Purchase:
    """A purchase row in a given state, for listing tests (no money behind it)."""
    s = new_session()
    try:
        p = Purchase(fan_id=fan.id, model_id=model.id, menu_id=menu.id, item_id=item.id, item_name=item.name,
                     token_value=item.token_value, loyalty_points=0, transaction_type="immediate",
                     status=status, purchase_day=date.today(), created_at=created_at or utcnow(), **fields)
        s.add(p)
        s.commit()
        return p
    finally:
        s.close()


def test_list_purchases_by_status_and_age(client, admin, factory):
    fan, model = factory.user("fan"), factory.user("model")
    menu = factory.menu(model)
    item = menu.created_items[0]
    old = make_purchase(fan, model, menu, item, "pending", utcnow() - timedelta(minutes=10))
    make_purchase(fan, model, menu, item, "pending")
    failed = make_purchase(fan, model, menu, item, "failed", utcnow() - timedelta(minutes=20),
                           failure_reason="insufficient_balance")
    r = client.get("/admin/purchases?status=pending&older_than_seconds=60", headers=admin)
    assert r.status_code == 200
    assert [p["purchase_id"] for p in r.json["purchases"]] == [str(old.id)] and r.json["total"] == 1
    r = client.get("/admin/purchases?status=pending", headers=admin)
    assert r.json["total"] == 2 and r.json["purchases"][0]["purchase_id"] == str(old.id)  # oldest first
    r = client.get("/admin/purchases", headers=admin)
    assert r.json["total"] == 3 and r.json["purchases"][0]["purchase_id"] == str(failed.id)
    assert r.json["purchases"][0]["failure_reason"] == "insufficient_balance"
    r = client.get("/admin/purchases?limit=1&offset=1", headers=admin)
    assert [p["purchase_id"] for p in r.json["purchases"]] == [str(old.id)]
    for bad, field in (("status=lost", "status"), ("older_than_seconds=-1", "older_than_seconds"),
                       ("limit=0", "limit")):
        r = client.get(f"/admin/purchases?{bad}", headers=admin)
        assert r.status_code == 422 and field in r.json["fields"]


def buy(client, headers, menu, item, key):
    r = client.post("/menu/purchase", json={"menu_id": str(menu.id), "item_id": str(item.id),
                                            "idempotency_key": key}, headers=headers)
    assert r.status_code in (200, 402), r.json
    return r.json


@pytest.mark.usefixtures("celery_worker")
def test_refund_where_the_state_allows_it_and_books_after_a_mixed_run(client, admin, factory, database):
    fans = [factory.user("fan") for _ in range(3)]
    model = factory.user("model")
    off = factory.menu(model, name="Off", items=[{"name": "Kiss", "token_value": 10, "bonus_loyalty_points": 5}])
    on = factory.menu(model, name="On", queue_mode="ON",
                      items=[{"name": "Photo", "token_value": 200, "bonus_loyalty_points": 150}])
    kiss, photo = off.created_items[0], on.created_items[0]
    for n, fan in enumerate(fans):
        r = client.post(f"/admin/users/{fan.id}/top-up", json={"amount": 300 + n, "idempotency_key": f"t{n}"},
                        headers=admin)
        assert r.status_code == 201
    queued = []
    for n, fan in enumerate(fans):
        headers = factory.headers(fan)
        assert buy(client, headers, off, kiss, "a")["status"] == "completed"
        body = buy(client, headers, on, photo, "b")
        assert body["status"] == "queued"
        queued.append(body["purchase_id"])
        assert buy(client, headers, on, photo, "c")["error"]["code"] == "insufficient_balance"
    completed = buy(client, factory.headers(fans[0]), off, kiss, "d")["purchase_id"]

    # queued -> refunded, once; completed / failed / refunded -> 409.
    assert performance_queue.position(get_purchase(uuid.UUID(queued[0])), RUNTIME.redis) is not None
    r = client.post(f"/admin/purchases/{queued[0]}/refund", json={"reason": "model_unavailable"}, headers=admin)
    assert r.status_code == 200, r.json
    assert performance_queue.position(get_purchase(uuid.UUID(queued[0])), RUNTIME.redis) is None  # out of the model's Redis queue
    assert performance_queue.position(get_purchase(uuid.UUID(queued[1])), RUNTIME.redis)[0] == 1
    assert (r.json["status"], r.json["refund_reason"], r.json["loyalty_points_awarded"]) == (
        "refunded", "model_unavailable", 0)
    r = client.post(f"/admin/purchases/{queued[1]}/refund", json={}, headers=admin)
    assert r.status_code == 200 and r.json["refund_reason"] == "admin_refund"
    assert balance(fans[0].id, "wallet") == 300 - 10 - 10
    assert balance(model.id, "escrow") == 200
    refunded_rows = sorted(e.kind for e in ledger_rows(uuid.UUID(queued[0])))
    assert refunded_rows == ["escrow_hold", "escrow_refund"]
    for purchase_id in (queued[0], completed):
        r = client.post(f"/admin/purchases/{purchase_id}/refund", json={}, headers=admin)
        assert r.status_code == 409 and r.json["error"]["code"] == "not_refundable"
    s = new_session()
    try:
        failed_id = s.scalar(select(Purchase.id).where(Purchase.status == "failed").limit(1))
        statuses = dict(s.execute(select(Purchase.status, func.count()).group_by(Purchase.status)).all())
    finally:
        s.close()
    # A refusal at intake writes nothing; failed rows come from the worker's re-check, if any.
    if failed_id is not None:
        assert client.post(f"/admin/purchases/{failed_id}/refund", json={}, headers=admin).status_code == 409
    assert statuses["refunded"] == 2 and statuses["queued"] == 1 and statuses["completed"] == 4
    assert client.post(f"/admin/purchases/{uuid.uuid4()}/refund", json={}, headers=admin).status_code == 404
    r = client.post(f"/admin/purchases/{queued[2]}/refund", json={"reason": "Bad Reason!"}, headers=admin)
    assert r.status_code == 422 and "reason" in r.json["fields"]
    # The model starts the last entry; an in-progress entry can still be refunded.
    assert client.post(f"/queue/{queued[2]}/start", headers=factory.headers(model)).status_code == 200
    r = client.post(f"/admin/purchases/{queued[2]}/refund", json={}, headers=admin)
    assert r.status_code == 200 and r.json["status"] == "refunded"
    assert balance(model.id, "escrow") == 0

    books = client.get("/admin/books", headers=admin)
    assert books.status_code == 200 and books.json == {"balanced": True, "differences": []}
    assert_books_balance()

    # A balance changed behind the ledger's back is reported, by account.
    with database.begin() as conn:
        wallet_id = conn.execute(text("UPDATE accounts SET balance = balance + 7 WHERE owner_id = :o AND "
                                      "kind = 'wallet' RETURNING id"), {"o": fans[2].id}).scalar_one()
    books = client.get("/admin/books", headers=admin).json
    assert books["balanced"] is False
    assert {"account_id": wallet_id, "kind": "wallet", "balance": 302 - 10 + 7,
            "ledger_sum": 302 - 10} in books["differences"]
    assert {"currency": "tokens", "sum_of_balances": 7} in books["differences"]


def test_refund_needs_a_queued_or_in_progress_purchase(client, admin, factory):
    fan, model = factory.user("fan"), factory.user("model")
    menu = factory.menu(model)
    item = menu.created_items[0]
    pending = make_purchase(fan, model, menu, item, "pending")
    r = client.post(f"/admin/purchases/{pending.id}/refund", json={}, headers=admin)
    assert r.status_code == 409 and r.json["error"]["code"] == "not_refundable" and r.json["status"] == "pending"
    s = new_session()
    try:
        assert s.get(Purchase, pending.id).status == "pending"
        assert s.scalar(select(func.count()).select_from(User)) == 3
    finally:
        s.close()


def test_the_cli_refuses_a_password_the_api_would_refuse(app, session):
    """Issue 20, item 4: `create-user --role admin --password x` made an admin with a 1-character password."""
    r = app.test_cli_runner().invoke(args=["create-user", "--username", "weak", "--password", "x", "--role", "admin"])
    assert r.exit_code != 0 and "8 to 256 characters" in r.output
    assert session.scalar(select(func.count()).select_from(User).where(User.username == "weak")) == 0
    r = app.test_cli_runner().invoke(args=["create-user", "--username", "strong", "--password", "long-enough",
                                           "--role", "admin"])
    assert r.exit_code == 0, r.output


def test_a_failure_other_than_a_taken_name_is_not_called_username_taken(client, factory, database):
    """Issue 20, item 6: every IntegrityError on POST /admin/users answered username_taken (seen when the calling
    admin's own row was gone: the audit row's actor failed its foreign key). A deleted admin's token is refused
    now, so the database is made to refuse the row with another constraint's name, as a foreign key would."""
    headers = factory.headers(factory.user("admin"))
    with database.begin() as conn:
        conn.execute(text("""
            CREATE FUNCTION refuse_newcomer() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN
              RAISE foreign_key_violation USING CONSTRAINT = 'fk_somewhere_else', MESSAGE = 'refused';
            END $$;
            CREATE TRIGGER refuse_newcomer BEFORE INSERT ON users FOR EACH ROW
              WHEN (NEW.username = 'newcomer') EXECUTE FUNCTION refuse_newcomer();"""))
    try:
        r = client.post("/admin/users", json={"username": "newcomer", "password": "long-enough", "role": "fan"},
                        headers=headers)
    finally:
        with database.begin() as conn:
            conn.execute(text("DROP TRIGGER refuse_newcomer ON users; DROP FUNCTION refuse_newcomer()"))
    assert r.status_code == 409 and r.json["error"]["code"] == "conflict", r.json
    s = new_session()
    try:
        assert s.scalar(select(User.id).where(User.username == "newcomer")) is None
    finally:
        s.close()
