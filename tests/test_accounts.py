"""Account lifecycle: deactivation (admin, audited) takes effect on the next request of every token and at
settlement; logout ends a sign-in session; refresh tokens rotate, and a spent one used again ends the session."""
from __future__ import annotations

import uuid
from datetime import timedelta

from conftest import assert_books_balance, balance, get_purchase, ledger_rows, new_session
from sqlalchemy import select

from models.audit import AuditEvent
from models.purchases import Purchase
from models.types import utcnow
from models.users import Subscription, User
from worker.tasks import settle


def bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


def login(client, user) -> dict:
    r = client.post("/auth/login", json={"username": user.username, "password": "pw"})
    assert r.status_code == 200, r.json
    return r.json


def error_code(r) -> str:
    return r.json["error"]["code"]


def pending_purchase(fan, model, menu, item, transaction_type="immediate") -> uuid.UUID:
    """A purchase intake accepted and the worker has not settled yet."""
    s = new_session()
    try:
        now = utcnow()
        p = Purchase(fan_id=fan.id, model_id=model.id, menu_id=menu.id, item_id=item.id, item_name=item.name,
                     token_value=item.token_value, loyalty_points=0, transaction_type=transaction_type,
                     purchase_day=now.date(), created_at=now)
        s.add(p)
        s.commit()
        return p.id
    finally:
        s.close()


def audited(action, subject_id) -> list[AuditEvent]:
    s = new_session()
    try:
        return list(s.scalars(select(AuditEvent).where(AuditEvent.action == action,
                                                       AuditEvent.subject_id == str(subject_id))))
    finally:
        s.close()


def test_deactivation_refuses_every_token_at_once_and_reactivation_needs_a_new_sign_in(client, factory):
    fan, admin = factory.user("fan", tokens=100), factory.user("admin")
    model = factory.user("model")
    menu = factory.menu(model, items=[{"name": "Kiss", "token_value": 10}])
    tokens = [login(client, fan), login(client, fan)]  # two devices
    admin_headers = factory.headers(admin)
    assert client.get("/wallet", headers=bearer(tokens[0]["access_token"])).status_code == 200

    r = client.post(f"/admin/users/{fan.id}/deactivate", headers=admin_headers)
    assert r.status_code == 200 and r.json["is_active"] is False
    assert [e.actor_id for e in audited("user.deactivated", fan.id)] == [admin.id]
    for pair in tokens:
        r = client.post("/menu/purchase", json={"menu_id": str(menu.id), "item_id": str(menu.created_items[0].id)},
                        headers=bearer(pair["access_token"]))
        assert r.status_code == 401 and error_code(r) == "account_inactive"
        r = client.post("/auth/refresh", headers=bearer(pair["refresh_token"]))
        assert r.status_code == 401 and error_code(r) == "account_inactive"
    r = client.post("/auth/login", json={"username": fan.username, "password": "pw"})
    assert r.status_code == 401 and error_code(r) == "invalid_credentials"  # same answer as a wrong password
    assert balance(fan.id, "wallet") == 100
    s = new_session()
    try:
        assert s.scalar(select(Purchase.id).where(Purchase.fan_id == fan.id)) is None  # nothing written
    finally:
        s.close()

    r = client.post(f"/admin/users/{fan.id}/activate", headers=admin_headers)
    assert r.status_code == 200 and r.json["is_active"] is True
    assert client.get("/wallet", headers=bearer(tokens[0]["access_token"])).status_code == 401  # ended for good
    assert client.get("/wallet", headers=bearer(login(client, fan)["access_token"])).status_code == 200

    assert client.post(f"/admin/users/{uuid.uuid4()}/deactivate", headers=admin_headers).status_code == 404
    r = client.post(f"/admin/users/{admin.id}/deactivate", headers=admin_headers)
    assert r.status_code == 409  # an admin cannot lock themselves out


def test_settlement_fails_a_pending_purchase_whose_fan_or_model_was_deactivated(factory):
    fan, model = factory.user("fan", tokens=100), factory.user("model")
    menu = factory.menu(model, items=[{"name": "Kiss", "token_value": 10}])
    item = menu.created_items[0]
    by_inactive_fan = pending_purchase(fan, model, menu, item)
    third_model = factory.user("model")
    third_menu = factory.menu(third_model, items=[{"name": "Wink", "token_value": 10}])
    of_inactive_model = pending_purchase(factory.user("fan", tokens=50), third_model, third_menu,
                                         third_menu.created_items[0])
    s = new_session()
    try:
        s.get(User, fan.id).is_active = False
        s.get(User, third_model.id).is_active = False
        s.commit()
    finally:
        s.close()

    settle([by_inactive_fan, of_inactive_model])
    settle([by_inactive_fan, of_inactive_model])  # redelivered: nothing twice
    outcomes = {pid: (get_purchase(pid).status, get_purchase(pid).failure_reason)
                for pid in (by_inactive_fan, of_inactive_model)}
    assert outcomes == {by_inactive_fan: ("failed", "account_inactive"),
                        of_inactive_model: ("failed", "item_unavailable")}
    assert all(ledger_rows(pid) == [] for pid in outcomes)
    assert balance(fan.id, "wallet") == 100
    assert_books_balance()


def test_settlement_asks_the_menus_visibility_again(factory):
    fan, model = factory.user("fan", tokens=100), factory.user("model")
    private = factory.menu(model, items=[{"name": "Secret", "token_value": 10}], visibility="subscribers_only")
    s = new_session()
    try:
        s.add(Subscription(fan_id=fan.id, model_id=model.id, expires_at=utcnow() - timedelta(seconds=1)))
        s.commit()
    finally:
        s.close()
    purchase_id = pending_purchase(fan, model, private, private.created_items[0])
    settle([purchase_id])
    assert (get_purchase(purchase_id).status, get_purchase(purchase_id).failure_reason) == (
        "failed", "item_unavailable")
    assert balance(fan.id, "wallet") == 100


def test_logout_ends_the_session_of_the_token_and_no_other(client, factory):
    fan = factory.user("fan")
    phone, laptop = login(client, fan), login(client, fan)
    r = client.post("/auth/logout", headers=bearer(phone["refresh_token"]))
    assert r.status_code == 204
    for token in (phone["access_token"], phone["refresh_token"]):
        r = client.post("/auth/refresh", headers=bearer(phone["refresh_token"]))
        assert r.status_code == 401 and error_code(r) == "token_revoked"
        r = client.post("/auth/logout", headers=bearer(token))
        assert r.status_code == 401 and error_code(r) == "token_revoked"
    r = client.get("/wallet", headers=bearer(phone["access_token"]))
    assert r.status_code == 401 and error_code(r) == "token_revoked"
    assert client.get("/wallet", headers=bearer(laptop["access_token"])).status_code == 200
    # Logging out with the access token works as well.
    assert client.post("/auth/logout", headers=bearer(laptop["access_token"])).status_code == 204
    assert client.post("/auth/refresh", headers=bearer(laptop["refresh_token"])).status_code == 401
    assert client.post("/auth/logout").status_code == 401


def test_refresh_rotates_and_a_reused_refresh_token_ends_the_session(client, factory):
    fan = factory.user("fan")
    first = login(client, fan)
    r = client.post("/auth/refresh", headers=bearer(first["refresh_token"]))
    assert r.status_code == 200, r.json
    second = r.json
    assert second["refresh_token"] != first["refresh_token"] and second["access_token"] != first["access_token"]
    assert client.get("/wallet", headers=bearer(second["access_token"])).status_code == 200
    r = client.post("/auth/refresh", headers=bearer(second["refresh_token"]))
    assert r.status_code == 200
    third = r.json

    # The spent refresh token again (a thief replaying it, or the owner after a theft): the session ends.
    r = client.post("/auth/refresh", headers=bearer(first["refresh_token"]))
    assert r.status_code == 401 and error_code(r) == "token_revoked"
    for token in (third["access_token"], second["access_token"]):
        assert client.get("/wallet", headers=bearer(token)).status_code == 401
    assert client.post("/auth/refresh", headers=bearer(third["refresh_token"])).status_code == 401
    assert client.get("/wallet", headers=bearer(login(client, fan)["access_token"])).status_code == 200
