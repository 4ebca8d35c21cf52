"""Issue 13: the seed API's contract, spoken as a separate client would (only the seed's names), end to end
through HTTP and a real Celery worker."""
from __future__ import annotations

import pytest

pytestmark = pytest.mark.usefixtures("celery_worker")

SEED_MENU_FIELDS = {"_id", "name", "model_id", "queue_mode", "visibility", "menu_items", "is_active", "theme",
                    "description", "whitelist_users", "createdAt", "updatedAt"}
SEED_ITEM_FIELDS = {"_id", "name", "description", "token_value", "bonus_loyalty_points", "category", "icon_url",
                    "display_order", "is_active", "max_daily_purchases", "lovense_activation", "created_by",
                    "createdAt", "updatedAt"}
SEED_ANSWER_FIELDS = {"success", "purchase_id", "transaction_type", "status", "token_value",
                      "loyalty_points_awarded"}
SEED_RECORD_FIELDS = {"_id", "purchase_id", "user_id", "model_id", "menu_id", "menu_item_id", "token_value",
                      "loyalty_points_awarded", "transaction_type", "status", "createdAt", "updatedAt",
                      "queue_position", "estimated_wait_minutes", "completed_at", "failed_at", "refunded_at",
                      "failure_reason", "refund_reason", "idempotency_key", "metadata"}
OBJECT_ID = "65a1f0c2e4b0a1b2c3d4e5f6"  # what the platform's own ids look like


class SeedClient:
    """Knows the seed README and nothing else: paths, bodies and field names as the seed documents them."""

    def __init__(self, client, headers):
        self.client, self.headers = client, headers

    def menu(self, menu_id):
        return self.client.get(f"/menu/{menu_id}", headers=self.headers)

    def model_menus(self, model_id):
        return self.client.get(f"/menu/model/{model_id}", headers=self.headers)

    def purchase(self, menu_id, menu_item_id, idempotency_key, metadata=None):
        body = {"menu_id": menu_id, "menu_item_id": menu_item_id, "idempotency_key": idempotency_key}
        if metadata is not None:
            body["metadata"] = metadata
        return self.client.post("/menu/purchase", json=body, headers=self.headers)

    def history(self, **query):
        return self.client.get("/menu/purchase/history", query_string=query, headers=self.headers)

    def status(self, purchase_id):
        return self.client.get(f"/menu/purchase/{purchase_id}/status", headers=self.headers)


@pytest.fixture
def shop(client, factory):
    fan, model = factory.user("fan", tokens=1000), factory.user("model")
    off = factory.menu(model, name="Quick Fun Menu", items=[
        {"name": "Dance", "token_value": 50, "bonus_loyalty_points": 30, "icon_url": "/icons/dance.png"}])
    on = factory.menu(model, name="Private Energy Menu", queue_mode="ON", items=[
        {"name": "Custom Photo", "token_value": 200, "bonus_loyalty_points": 150, "estimated_duration_minutes": 15}])
    return SeedClient(client, factory.headers(fan)), fan, model, off, on


def test_a_purchase_with_exactly_the_seed_body_settles_with_every_seed_field(shop):
    seed, fan, model, off, _on = shop
    menu = seed.menu(off.id).json
    item = menu["menu_items"][0]
    r = seed.purchase(menu["_id"], item["_id"], "seed-key-1", {"source": "widget", "room": 42})
    assert r.status_code == 200, r.json
    assert SEED_ANSWER_FIELDS <= set(r.json)
    assert (r.json["success"], r.json["status"], r.json["transaction_type"]) == (True, "completed", "immediate")
    assert (r.json["token_value"], r.json["loyalty_points_awarded"]) == (50, 30)

    status = seed.status(r.json["purchase_id"]).json
    assert SEED_RECORD_FIELDS <= set(status)
    assert status["_id"] == status["purchase_id"] == r.json["purchase_id"]
    assert (status["user_id"], status["model_id"]) == (str(fan.id), str(model.id))
    assert (status["menu_id"], status["menu_item_id"]) == (menu["_id"], item["_id"])
    assert status["idempotency_key"] == "seed-key-1"
    assert status["metadata"] == {"source": "widget", "room": 42}
    assert status["completed_at"] and status["updatedAt"] >= status["createdAt"]

    history = seed.history().json
    assert history["limit"] == 50  # the seed's default
    assert [p["_id"] for p in history["purchases"]] == [r.json["purchase_id"]]
    assert SEED_RECORD_FIELDS <= set(history["purchases"][0])

    again = seed.purchase(menu["_id"], item["_id"], "seed-key-1", {"source": "widget", "room": 42})
    assert again.json["purchase_id"] == r.json["purchase_id"]  # the seed's idempotency_key, honoured


def test_queue_on_answer_carries_position_and_wait(shop):
    seed, _fan, _model, _off, on = shop
    menu = seed.menu(on.id).json
    r = seed.purchase(menu["_id"], menu["menu_items"][0]["_id"], "seed-key-2")
    assert r.status_code == 200, r.json
    assert r.json["transaction_type"] == "queued" and r.json["status"] == "queued"
    assert (r.json["queue_position"], r.json["estimated_wait_minutes"]) == (1, 0)
    assert seed.status(r.json["purchase_id"]).json["queue_position"] == 1


def test_menus_carry_every_seed_field(shop):
    seed, _fan, model, off, on = shop
    menu = seed.menu(off.id).json
    assert SEED_MENU_FIELDS <= set(menu)
    assert (menu["_id"], menu["model_id"], menu["whitelist_users"]) == (str(off.id), str(model.id), [])
    item = menu["menu_items"][0]
    assert SEED_ITEM_FIELDS <= set(item)
    assert (item["created_by"], item["icon_url"]) == (str(model.id), "/icons/dance.png")

    menus = seed.model_menus(model.id).json
    assert isinstance(menus, list)  # the seed: "all active menus for a specific model", an array
    assert [m["_id"] for m in menus] == [str(off.id), str(on.id)]
    assert all(SEED_MENU_FIELDS <= set(m) for m in menus)


def test_the_private_menus_whitelist_is_shown_to_its_model_only(client, factory):
    fan, model = factory.user("fan"), factory.user("model")
    menu = factory.menu(model, visibility="private")
    assert client.put(f"/menu/{menu.id}/whitelist/{fan.id}", headers=factory.headers(model)).status_code == 200
    assert client.get(f"/menu/{menu.id}", headers=factory.headers(model)).json["whitelist_users"] == [str(fan.id)]
    assert client.get(f"/menu/{menu.id}", headers=factory.headers(fan)).json["whitelist_users"] == []


@pytest.mark.parametrize("where", ["menu_id", "menu_item_id"])
def test_a_platform_object_id_in_the_body_is_a_clean_404(shop, where):
    seed, _fan, _model, off, _on = shop
    ids = {"menu_id": str(off.id), "menu_item_id": str(off.created_items[0].id), where: OBJECT_ID}
    r = seed.purchase(ids["menu_id"], ids["menu_item_id"], "seed-key-3")
    assert r.status_code == 404 and r.json["error"]["code"] == "not_found", r.json


@pytest.mark.parametrize("path", [f"/menu/{OBJECT_ID}", f"/menu/model/{OBJECT_ID}",
                                  f"/menu/purchase/{OBJECT_ID}/status"])
def test_a_platform_object_id_in_a_path_is_a_clean_404(shop, path):
    seed = shop[0]
    r = seed.client.get(path, headers=seed.headers)
    assert r.status_code == 404 and r.json["error"]["code"] == "not_found", r.json


def test_item_id_stays_an_alias_and_two_different_item_ids_are_refused(client, factory, shop):
    seed, _fan, _model, off, _on = shop
    item_id = str(off.created_items[0].id)
    r = client.post("/menu/purchase", json={"menu_id": str(off.id), "item_id": item_id}, headers=seed.headers)
    assert r.status_code == 200 and r.json["status"] == "completed", r.json
    r = client.post("/menu/purchase", json={"menu_id": str(off.id), "item_id": item_id,
                                            "menu_item_id": str(_on.created_items[0].id)}, headers=seed.headers)
    assert r.status_code == 422 and "menu_item_id" in r.json["fields"], r.json


def test_metadata_is_bounded_and_must_be_an_object(shop):
    seed, _fan, _model, off, _on = shop
    ids = (str(off.id), str(off.created_items[0].id))
    for bad in ({"note": "x" * 3000}, ["not", "an", "object"], "text"):
        r = seed.purchase(*ids, "seed-key-4", bad)
        assert r.status_code == 422 and "metadata" in r.json["fields"], r.json
    assert seed.history().json["total"] == 0  # nothing written
