"""Issue 2: daily limits, visibility rules, auth and bad input."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

import uuid
import pytest
import time_machine
from conftest import assert_books_balance, balance, make_settings, new_session

from models.menus import MenuWhitelist
from models.users import Subscription
from web import create_app

pytestmark = pytest.mark.usefixtures("celery_worker")


def buy(client, headers, menu, item=None, **extra):
    item = item or menu.created_items[0]
    return client.post("/menu/purchase", json={"menu_id": str(menu.id), "item_id": str(item.id), **extra},
                       headers=headers)


def test_daily_limit_counts_per_calendar_day(client, factory):
    fan, model = factory.user("fan", tokens=1000), factory.user("model")
    menu = factory.menu(model, items=[{"name": "Song Request", "token_value": 75, "max_daily_purchases": 2}])
    with time_machine.travel(datetime(2030, 3, 1, 23, 0, tzinfo=timezone.utc), tick=True):
        headers = factory.headers(fan)
        assert buy(client, headers, menu).json["status"] == "completed"
        assert buy(client, headers, menu).json["status"] == "completed"
        third = buy(client, headers, menu)
        assert third.status_code == 422
        assert third.json["error"]["code"] == "daily_limit_reached"
    with time_machine.travel(datetime(2030, 3, 2, 0, 30, tzinfo=timezone.utc), tick=True):
        headers = factory.headers(fan)
        assert buy(client, headers, menu).json["status"] == "completed"
    assert balance(fan.id, "wallet") == 1000 - 3 * 75
    assert_books_balance()


def test_daily_limit_follows_the_configured_time_zone(client, factory):
    # 23:30 UTC on March 1 is already March 2 in Tokyo: a new day there.
    fan, model = factory.user("fan", tokens=1000), factory.user("model")
    menu = factory.menu(model, items=[{"name": "Custom Video", "token_value": 10, "max_daily_purchases": 1}])
    with time_machine.travel(datetime(2030, 3, 1, 12, 0, tzinfo=timezone.utc), tick=True):
        assert buy(client, factory.headers(fan), menu).json["status"] == "completed"
    tokyo = create_app(make_settings(day_time_zone="Asia/Tokyo")).test_client()
    with time_machine.travel(datetime(2030, 3, 1, 23, 30, tzinfo=timezone.utc), tick=True):
        r = buy(tokyo, factory.headers(fan), menu)
        assert r.json["status"] == "completed", r.json
        assert buy(tokyo, factory.headers(fan), menu).json["error"]["code"] == "daily_limit_reached"


@pytest.mark.parametrize("visibility", ["subscribers_only", "private"])
def test_hidden_menus_refuse_outsiders_and_accept_insiders(client, factory, visibility):
    outsider, insider, model = factory.user("fan", tokens=100), factory.user("fan", tokens=100), factory.user("model")
    menu = factory.menu(model, visibility=visibility)
    s = new_session()
    try:
        if visibility == "subscribers_only":
            s.add(Subscription(fan_id=insider.id, model_id=model.id,
                               expires_at=datetime.now(timezone.utc) + timedelta(days=30)))
            # An expired subscription is no subscription.
            s.add(Subscription(fan_id=outsider.id, model_id=model.id,
                               expires_at=datetime.now(timezone.utc) - timedelta(days=1)))
        else:
            s.add(MenuWhitelist(menu_id=menu.id, fan_id=insider.id))
        s.commit()
    finally:
        s.close()
    out_h, in_h = factory.headers(outsider), factory.headers(insider)
    assert client.get(f"/menu/{menu.id}", headers=out_h).status_code == 403
    r = buy(client, out_h, menu)
    assert r.status_code == 403 and r.json["error"]["code"] == "forbidden"
    assert client.get(f"/menu/model/{model.id}", headers=out_h).json == []
    assert balance(outsider.id, "wallet") == 100

    assert client.get(f"/menu/{menu.id}", headers=in_h).status_code == 200
    assert [m["id"] for m in client.get(f"/menu/model/{model.id}", headers=in_h).json] == [str(menu.id)]
    assert buy(client, in_h, menu).json["status"] == "completed"
    assert balance(insider.id, "wallet") == 90
    # The owner always sees their own menu.
    assert client.get(f"/menu/{menu.id}", headers=factory.headers(model)).status_code == 200


def test_login_refresh_and_roles(client, factory):
    fan, model = factory.user("fan"), factory.user("model")
    bad = client.post("/auth/login", json={"username": fan.username, "password": "wrong"})
    assert bad.status_code == 401 and bad.json["error"]["code"] == "invalid_credentials"
    unknown = client.post("/auth/login", json={"username": "nobody", "password": "pw"})
    assert unknown.status_code == 401 and unknown.json["error"]["code"] == "invalid_credentials"
    tokens = client.post("/auth/login", json={"username": fan.username, "password": "pw"}).json
    # A refresh token is not an access token, and vice versa.
    assert client.get("/wallet", headers={"Authorization": f"Bearer {tokens['refresh_token']}"}).status_code == 401
    assert client.post("/auth/refresh", headers={"Authorization": f"Bearer {tokens['access_token']}"}).status_code == 401
    fresh = client.post("/auth/refresh", headers={"Authorization": f"Bearer {tokens['refresh_token']}"})
    assert fresh.status_code == 200
    assert client.get("/wallet", headers={"Authorization": f"Bearer {fresh.json['access_token']}"}).status_code == 200
    assert client.get("/wallet", headers={"Authorization": "Bearer not-a-jwt"}).json["error"]["code"] == "invalid_token"
    # Only fans buy.
    menu = factory.menu(model)
    r = buy(client, factory.headers(model), menu)
    assert r.status_code == 403 and r.json["error"]["code"] == "forbidden"


def test_expired_token_is_refused(client, factory):
    fan = factory.user("fan")
    with time_machine.travel(datetime.now(timezone.utc) - timedelta(hours=2)):
        headers = factory.headers(fan)
    r = client.get("/wallet", headers=headers)
    assert r.status_code == 401 and r.json["error"]["code"] == "token_expired"


def test_a_token_already_accepted_is_refused_once_it_expires(client, factory):
    # web/auth.py remembers verified tokens; expiry must still be checked on every request.
    fan = factory.user("fan")
    headers = factory.headers(fan)
    assert client.get("/wallet", headers=headers).status_code == 200
    assert client.get("/wallet", headers=headers).status_code == 200
    with time_machine.travel(datetime.now(timezone.utc) + timedelta(hours=2)):
        r = client.get("/wallet", headers=headers)
    assert r.status_code == 401 and r.json["error"]["code"] == "token_expired"
    tampered = headers["Authorization"][:-2] + ("AA" if not headers["Authorization"].endswith("AA") else "BB")
    r = client.get("/wallet", headers={"Authorization": tampered})
    assert r.status_code == 401 and r.json["error"]["code"] == "invalid_token"


def test_bad_input_gets_clear_4xx_and_writes_nothing(client, factory):
    fan, model = factory.user("fan", tokens=100), factory.user("model")
    menu = factory.menu(model)
    other = factory.menu(model, name="Other")
    h = factory.headers(fan)
    cases = [
        (client.post("/menu/purchase", data="{not json", headers={**h, "Content-Type": "application/json"}), 400),
        (client.post("/menu/purchase", json=[1, 2], headers=h), 422),
        (client.post("/menu/purchase", json={"menu_id": "nope", "item_id": 5}, headers=h), 422),
        (client.post("/menu/purchase", json={"menu_id": str(menu.id)}, headers=h), 422),
        (client.post("/menu/purchase", json={"menu_id": str(menu.id), "item_id": str(other.created_items[0].id)},
                     headers=h), 404),
        (client.post("/menu/purchase", json={"menu_id": str(menu.id), "item_id": str(menu.created_items[0].id),
                                              "idempotency_key": "x" * 500}, headers=h), 422),
        (client.get("/menu/not-a-uuid", headers=h), 404),
        (client.get("/menu/purchase/123/status", headers=h), 404),
        (client.get("/menu/purchase/history?limit=-1", headers=h), 422),
        (client.get("/menu/purchase/history?offset=abc", headers=h), 422),
        (client.post("/menu/purchase", data="x" * 100_000, headers={**h, "Content-Type": "application/json"}), 413),
    ]
    for response, status in cases:
        assert response.status_code == status, (response.status_code, response.json)
        assert set(response.json["error"]) == {"code", "message"}
    assert balance(fan.id, "wallet") == 100
    assert client.get("/menu/purchase/history", headers=h).json["total"] == 0


def test_history_is_newest_first_paged_and_capped(client, factory):
    fan, model = factory.user("fan", tokens=1000), factory.user("model")
    menu = factory.menu(model, items=[{"name": "A", "token_value": 1}, {"name": "B", "token_value": 2}])
    h = factory.headers(fan)
    for i in range(5):
        buy(client, h, menu, menu.created_items[i % 2])
    page = client.get("/menu/purchase/history?limit=2&offset=1", headers=h).json
    assert page["total"] == 5 and page["limit"] == 2 and len(page["purchases"]) == 2
    full = client.get("/menu/purchase/history?limit=1000", headers=h).json
    assert full["limit"] == 100
    created = [p["created_at"] for p in full["purchases"]]
    assert created == sorted(created, reverse=True)
    assert [p["purchase_id"] for p in page["purchases"]] == [p["purchase_id"] for p in full["purchases"][1:3]]
    # Another fan sees none of them, nor their status.
    stranger = factory.headers(factory.user("fan"))
    assert client.get("/menu/purchase/history", headers=stranger).json["total"] == 0
    assert client.get(f"/menu/purchase/{created and full['purchases'][0]['purchase_id']}/status",
                      headers=stranger).status_code == 404


def test_menus_of_a_user_who_is_not_a_model_answer_as_no_user_does(client, factory):
    """Issue 28, item 17: a fan's or an admin's id answered 200 [] and an unknown id 404, which told users from
    non-users."""
    fan, admin = factory.user("fan"), factory.user("admin")
    headers = factory.headers(fan)
    answers = [client.get(f"/menu/model/{ref}", headers=headers) for ref in (fan.id, admin.id, uuid.uuid4())]
    assert {(r.status_code, r.json["error"]["code"], r.json["error"]["message"]) for r in answers} == {
        (404, "not_found", "No such model")}
