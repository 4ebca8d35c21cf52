"""Issue 5: a model manages their own menus; another model gets 404; invalid input gets 422 naming the field."""
from __future__ import annotations

import uuid

import pytest
from conftest import get_purchase, ledger_rows
from sqlalchemy import func, select

from models.audit import AuditEvent
from conftest import new_session
from models.menus import MAX_ITEMS_PER_MENU, MAX_MENUS_PER_MODEL, Menu, MenuItem, MenuWhitelist

LOVENSE = {"enabled": True, "device_type": "vibrator", "intensity": 10, "duration_ms": 15000,
           "timing_offset": 500, "pattern": "pulse"}


@pytest.fixture
def owner(factory):
    model = factory.user("model")
    return model, factory.headers(model)


@pytest.fixture
def other(factory):
    return factory.headers(factory.user("model"))


def new_menu(client, headers, **fields):
    body = {"name": "Fun", "items": [{"name": "Kiss", "token_value": 10}], **fields}
    r = client.post("/menu", json=body, headers=headers)
    assert r.status_code == 201, r.json
    return r.json


def assert_invalid(r, field):
    assert r.status_code == 422, r.json
    assert r.json["error"]["code"] == "invalid_request"
    assert field in r.json["fields"], r.json


def count(model, *where):
    s = new_session()
    try:
        return s.scalar(select(func.count()).select_from(model).where(*where))
    finally:
        s.close()


def test_create_menu_with_items_and_read_it_back(client, owner, factory):
    model, headers = owner
    body = {
        "name": "Quick Fun", "description": "d", "queue_mode": "ON", "visibility": "public", "queue_order": "fifo",
        "theme": {"primary_color": "#FF6B9D", "secondary_color": "#c44", "card_style": "modern"},
        "delivery_hours_default": 48,
        "items": [{"name": "Kiss", "token_value": 10, "bonus_loyalty_points": 5, "category": "gestures"},
                  {"name": "Buzz", "token_value": 20, "lovense_activation": LOVENSE, "max_daily_purchases": 3,
                   "delivery_hours": 12, "icon_url": "https://cdn.example.com/i.png"}],
    }
    r = client.post("/menu", json=body, headers=headers)
    assert r.status_code == 201, r.json
    menu = r.json
    assert (menu["model_id"], menu["queue_mode"], menu["queue_order"], menu["delivery_hours_default"]) == (
        str(model.id), "ON", "fifo", 48)
    assert menu["theme"] == body["theme"]
    assert [(i["name"], i["display_order"]) for i in menu["items"]] == [("Kiss", 0), ("Buzz", 1)]
    assert menu["items"][1]["lovense_activation"] == LOVENSE
    fan = factory.user("fan")
    seen = client.get(f"/menu/{menu['id']}", headers=factory.headers(fan)).json
    assert [i["token_value"] for i in seen["items"]] == [10, 20]
    # Defaults: Queue OFF, public, priority.
    plain = new_menu(client, headers)
    assert (plain["queue_mode"], plain["visibility"], plain["queue_order"], plain["is_active"]) == (
        "OFF", "public", "priority", True)
    assert plain["display_order"] == menu["display_order"] + 1


@pytest.mark.parametrize("body, field", [
    ({}, "name"),
    ({"name": ""}, "name"),
    ({"name": "x" * 66}, "name"),
    ({"name": "ok", "description": "x" * 201}, "description"),
    ({"name": "ok", "queue_mode": "MAYBE"}, "queue_mode"),
    ({"name": "ok", "visibility": "secret"}, "visibility"),
    ({"name": "ok", "queue_order": "random"}, "queue_order"),
    ({"name": "ok", "theme": {"primary_color": "pink"}}, "theme"),
    ({"name": "ok", "theme": {"secondary_color": "#GGGGGG"}}, "theme"),
    ({"name": "ok", "theme": {"card_style": "retro"}}, "theme"),
    ({"name": "ok", "delivery_hours_default": 0}, "delivery_hours_default"),
    ({"name": "ok", "price": 5}, "price"),
    ({"name": "ok", "items": [{"name": "x", "token_value": 0}]}, "items"),
    ({"name": "ok", "items": [{"name": "x", "token_value": 100000}]}, "items"),
    ({"name": "ok", "items": [{"name": "x", "token_value": 1}] * (MAX_ITEMS_PER_MENU + 1)}, "items"),
])
def test_create_menu_refuses_invalid_input(client, owner, body, field):
    model, headers = owner
    assert_invalid(client.post("/menu", json=body, headers=headers), field)
    assert count(Menu) == 0 and count(MenuItem) == 0


def test_at_most_8_menus_per_model(client, owner):
    model, headers = owner
    for i in range(MAX_MENUS_PER_MODEL):
        new_menu(client, headers, name=f"m{i}")
    r = client.post("/menu", json={"name": "one too many"}, headers=headers)
    assert r.status_code == 422 and r.json["error"]["code"] == "menu_limit_reached"
    first = client.get(f"/menu/model/{model.id}", headers=headers).json[0]
    r = client.post(f"/menu/{first['id']}/duplicate", headers=headers)
    assert r.status_code == 422 and r.json["error"]["code"] == "menu_limit_reached"
    assert count(Menu) == MAX_MENUS_PER_MODEL


def test_only_models_create_menus(client, factory):
    r = client.post("/menu", json={"name": "x"}, headers=factory.headers(factory.user("fan")))
    assert r.status_code == 403


def test_update_menu(client, owner, other):
    model, headers = owner
    menu = new_menu(client, headers)
    patch = {"name": "Renamed", "queue_mode": "ON", "visibility": "private", "queue_order": "fifo",
             "theme": {"primary_color": "#A29BFE", "secondary_color": "#6C5CE7", "card_style": "premium"},
             "delivery_hours_default": 72, "display_order": 3, "description": None}
    r = client.patch(f"/menu/{menu['id']}", json=patch, headers=headers)
    assert r.status_code == 200, r.json
    assert {k: r.json[k] for k in patch} == patch
    assert len(r.json["items"]) == 1
    r = client.patch(f"/menu/{menu['id']}", json={"name": "Mine now"}, headers=other)
    assert r.status_code == 404 and r.json["error"]["code"] == "not_found"
    assert_invalid(client.patch(f"/menu/{menu['id']}", json={"name": None}, headers=headers), "name")
    assert_invalid(client.patch(f"/menu/{menu['id']}", json={"visibility": "all"}, headers=headers), "visibility")
    assert_invalid(client.patch(f"/menu/{menu['id']}", json={"theme": {"primary_color": "#12345"}},
                                headers=headers), "theme")
    assert_invalid(client.patch(f"/menu/{menu['id']}", json={"items": []}, headers=headers), "items")
    got = client.get(f"/menu/{menu['id']}", headers=headers).json
    assert (got["name"], got["visibility"]) == ("Renamed", "private")
    assert client.patch(f"/menu/{uuid.uuid4()}", json={"name": "x"}, headers=headers).status_code == 404


def test_activate_and_deactivate_menu(client, owner, other, factory):
    model, headers = owner
    menu = new_menu(client, headers)
    fan = factory.headers(factory.user("fan"))
    r = client.post(f"/menu/{menu['id']}/deactivate", headers=headers)
    assert r.status_code == 200 and r.json["is_active"] is False
    assert client.get(f"/menu/{menu['id']}", headers=fan).status_code == 404
    assert client.post(f"/menu/{menu['id']}/activate", headers=other).status_code == 404
    assert client.post(f"/menu/{menu['id']}/deactivate", headers=other).status_code == 404
    r = client.post(f"/menu/{menu['id']}/activate", headers=headers)
    assert r.status_code == 200 and r.json["is_active"] is True
    assert client.get(f"/menu/{menu['id']}", headers=fan).status_code == 200


def test_duplicate_menu(client, owner, other, factory):
    model, headers = owner
    menu = new_menu(client, headers, visibility="private",
                    items=[{"name": "A", "token_value": 10}, {"name": "B", "token_value": 20,
                                                              "lovense_activation": LOVENSE}])
    fan = factory.user("fan")
    assert client.put(f"/menu/{menu['id']}/whitelist/{fan.id}", headers=headers).status_code == 200
    r = client.post(f"/menu/{menu['id']}/duplicate", headers=headers)
    assert r.status_code == 201, r.json
    copy = r.json
    assert copy["id"] != menu["id"] and copy["name"] == "Fun (copy)" and copy["is_active"] is False
    assert [(i["name"], i["token_value"], i["lovense_activation"]) for i in copy["items"]] == [
        ("A", 10, None), ("B", 20, LOVENSE)]
    assert {i["id"] for i in copy["items"]}.isdisjoint({i["id"] for i in menu["items"]})
    assert client.get(f"/menu/{copy['id']}/whitelist", headers=headers).json["fan_ids"] == [str(fan.id)]
    assert client.post(f"/menu/{menu['id']}/duplicate", headers=other).status_code == 404
    assert count(Menu) == 2


def test_add_item(client, owner, other):
    model, headers = owner
    menu = new_menu(client, headers)
    body = {"name": "Dance", "token_value": 50, "bonus_loyalty_points": 30, "category": "performance",
            "estimated_duration_minutes": 3, "lovense_activation": LOVENSE}
    r = client.post(f"/menu/{menu['id']}/items", json=body, headers=headers)
    assert r.status_code == 201, r.json
    assert {k: r.json[k] for k in body} == body
    assert r.json["display_order"] == 1 and r.json["menu_id"] == menu["id"]
    assert client.post(f"/menu/{menu['id']}/items", json=body, headers=other).status_code == 404
    assert count(MenuItem) == 2


@pytest.mark.parametrize("body, field", [
    ({"token_value": 10}, "name"),
    ({"name": "x" * 66, "token_value": 10}, "name"),
    ({"name": "x", "description": "d" * 201, "token_value": 10}, "description"),
    ({"name": "x"}, "token_value"),
    ({"name": "x", "token_value": 0}, "token_value"),
    ({"name": "x", "token_value": 100000}, "token_value"),
    ({"name": "x", "token_value": "10"}, "token_value"),
    ({"name": "x", "token_value": 10.5}, "token_value"),
    ({"name": "x", "token_value": True}, "token_value"),
    ({"name": "x", "token_value": 10, "bonus_loyalty_points": -1}, "bonus_loyalty_points"),
    ({"name": "x", "token_value": 10, "max_daily_purchases": 0}, "max_daily_purchases"),
    ({"name": "x", "token_value": 10, "delivery_hours": 0}, "delivery_hours"),
    ({"name": "x", "token_value": 10, "icon_url": "javascript:alert(1)"}, "icon_url"),
    ({"name": "x", "token_value": 10, "lovense_activation": {**LOVENSE, "intensity": 21}}, "lovense_activation"),
    ({"name": "x", "token_value": 10, "lovense_activation": {**LOVENSE, "intensity": 0}}, "lovense_activation"),
    ({"name": "x", "token_value": 10, "lovense_activation": {**LOVENSE, "device_type": "robot"}},
     "lovense_activation"),
    ({"name": "x", "token_value": 10, "lovense_activation": {**LOVENSE, "pattern": "zigzag"}}, "lovense_activation"),
    ({"name": "x", "token_value": 10, "lovense_activation": {"enabled": True}}, "lovense_activation"),
    ({"name": "x", "token_value": 10, "lovense_activation": "on"}, "lovense_activation"),
])
def test_add_item_refuses_invalid_input(client, owner, body, field):
    model, headers = owner
    menu = new_menu(client, headers)
    assert_invalid(client.post(f"/menu/{menu['id']}/items", json=body, headers=headers), field)
    assert count(MenuItem) == 1


def test_at_most_50_items_per_menu(client, owner):
    model, headers = owner
    menu = new_menu(client, headers, items=[{"name": f"i{i}", "token_value": 1} for i in range(MAX_ITEMS_PER_MENU)])
    r = client.post(f"/menu/{menu['id']}/items", json={"name": "51st", "token_value": 1}, headers=headers)
    assert r.status_code == 422 and r.json["error"]["code"] == "item_limit_reached"
    assert count(MenuItem) == MAX_ITEMS_PER_MENU


def test_update_item(client, owner, other):
    model, headers = owner
    menu = new_menu(client, headers)
    item = menu["items"][0]
    url = f"/menu/{menu['id']}/items/{item['id']}"
    patch = {"name": "Big Kiss", "token_value": 15, "bonus_loyalty_points": 8, "max_daily_purchases": None,
             "lovense_activation": LOVENSE, "delivery_hours": 6}
    r = client.patch(url, json=patch, headers=headers)
    assert r.status_code == 200, r.json
    assert {k: r.json[k] for k in patch} == patch
    assert client.patch(url, json={"token_value": 1}, headers=other).status_code == 404
    assert_invalid(client.patch(url, json={"token_value": 0}, headers=headers), "token_value")
    assert_invalid(client.patch(url, json={"token_value": None}, headers=headers), "token_value")
    # A partial PATCH still checks a Lovense object whole.
    assert_invalid(client.patch(url, json={"lovense_activation": {"intensity": 5}}, headers=headers),
                   "lovense_activation")
    r = client.patch(url, json={"lovense_activation": None}, headers=headers)
    assert r.status_code == 200 and r.json["lovense_activation"] is None
    # An item of another menu cannot be reached through this one.
    second = new_menu(client, headers, name="Second")
    assert client.patch(f"/menu/{second['id']}/items/{item['id']}", json={"name": "x"},
                        headers=headers).status_code == 404


def test_activate_and_deactivate_item(client, owner, other, factory):
    model, headers = owner
    menu = new_menu(client, headers, items=[{"name": "A", "token_value": 10}, {"name": "B", "token_value": 20}])
    a = menu["items"][0]
    fan = factory.headers(factory.user("fan"))
    r = client.post(f"/menu/{menu['id']}/items/{a['id']}/deactivate", headers=headers)
    assert r.status_code == 200 and r.json["is_active"] is False
    assert [i["name"] for i in client.get(f"/menu/{menu['id']}", headers=fan).json["items"]] == ["B"]
    assert [i["name"] for i in client.get(f"/menu/{menu['id']}", headers=headers).json["items"]] == ["A", "B"]
    for action in ("activate", "deactivate"):
        assert client.post(f"/menu/{menu['id']}/items/{a['id']}/{action}", headers=other).status_code == 404
    r = client.post(f"/menu/{menu['id']}/items/{a['id']}/activate", headers=headers)
    assert r.status_code == 200 and r.json["is_active"] is True


def test_reorder_items(client, owner, other):
    model, headers = owner
    menu = new_menu(client, headers, items=[{"name": n, "token_value": 10} for n in "ABC"])
    ids = [i["id"] for i in menu["items"]]
    url = f"/menu/{menu['id']}/items/order"
    r = client.put(url, json={"item_ids": [ids[2], ids[0], ids[1]]}, headers=headers)
    assert r.status_code == 200, r.json
    assert [i["name"] for i in r.json["items"]] == ["C", "A", "B"]
    assert [i["name"] for i in client.get(f"/menu/{menu['id']}", headers=headers).json["items"]] == ["C", "A", "B"]
    assert client.put(url, json={"item_ids": ids}, headers=other).status_code == 404
    assert_invalid(client.put(url, json={"item_ids": ids[:2]}, headers=headers), "item_ids")
    assert_invalid(client.put(url, json={"item_ids": [ids[0]] * 3}, headers=headers), "item_ids")
    assert_invalid(client.put(url, json={"item_ids": ["nope"]}, headers=headers), "item_ids")
    assert_invalid(client.put(url, json={}, headers=headers), "item_ids")


def test_whitelist_decides_a_private_menu(client, owner, other, factory):
    model, headers = owner
    menu = new_menu(client, headers, visibility="private")
    fan = factory.user("fan")
    fan_headers = factory.headers(fan)
    url = f"/menu/{menu['id']}/whitelist"
    assert client.get(f"/menu/{menu['id']}", headers=fan_headers).status_code == 403
    r = client.put(f"{url}/{fan.id}", headers=headers)
    assert r.status_code == 200 and r.json["fan_ids"] == [str(fan.id)]
    assert client.put(f"{url}/{fan.id}", headers=headers).json["fan_ids"] == [str(fan.id)]  # twice: once
    assert client.get(f"/menu/{menu['id']}", headers=fan_headers).status_code == 200
    assert client.get(url, headers=headers).json == {"menu_id": menu["id"], "fan_ids": [str(fan.id)]}
    assert client.get(url, headers=other).status_code == 404
    assert client.put(f"{url}/{fan.id}", headers=other).status_code == 404
    assert client.delete(f"{url}/{fan.id}", headers=other).status_code == 404
    assert client.put(f"{url}/{model.id}", headers=headers).status_code == 404  # not a fan
    assert client.put(f"{url}/{uuid.uuid4()}", headers=headers).status_code == 404
    r = client.delete(f"{url}/{fan.id}", headers=headers)
    assert r.status_code == 200 and r.json["fan_ids"] == []
    assert client.get(f"/menu/{menu['id']}", headers=fan_headers).status_code == 403
    assert count(MenuWhitelist) == 0
    assert count(AuditEvent, AuditEvent.action == "menu.whitelist_added") == 1


@pytest.mark.usefixtures("celery_worker")
def test_price_edit_after_a_purchase_keeps_the_purchase_price_and_points(client, owner, factory):
    model, headers = owner
    menu = new_menu(client, headers, items=[{"name": "Dance", "token_value": 50, "bonus_loyalty_points": 30}])
    item = menu["items"][0]
    fan = factory.user("fan", tokens=200)
    factory.go_live(model)
    fan_headers = factory.headers(fan)
    r = client.post("/menu/purchase", json={"menu_id": menu["id"], "item_id": item["id"]}, headers=fan_headers)
    assert r.status_code == 200 and r.json["status"] == "completed", r.json
    first = r.json["purchase_id"]

    r = client.patch(f"/menu/{menu['id']}/items/{item['id']}",
                     json={"name": "Long Dance", "token_value": 80, "bonus_loyalty_points": 60}, headers=headers)
    assert r.status_code == 200

    status = client.get(f"/menu/purchase/{first}/status", headers=fan_headers).json
    assert (status["token_value"], status["loyalty_points_awarded"], status["item_name"]) == (50, 30, "Dance")
    p = get_purchase(uuid.UUID(first))
    assert (p.token_value, p.loyalty_points) == (50, 30)
    assert sorted((e.kind, e.amount) for e in ledger_rows(p.id)) == [("loyalty_award", 30), ("purchase", 50)]
    # The next purchase pays the new price and earns the new points; GET /wallet shows both, ledgered.
    r = client.post("/menu/purchase", json={"menu_id": menu["id"], "item_id": item["id"]}, headers=fan_headers)
    assert r.status_code == 200 and (r.json["token_value"], r.json["loyalty_points_awarded"]) == (80, 60)
    wallet = client.get("/wallet", headers=fan_headers).json
    assert (wallet["token_balance"], wallet["loyalty_points"]) == (200 - 50 - 80, 30 + 60)
