"""Issue 5: the starter templates of the product spec, the loader (idempotent, any file in the same format), the demo."""
from __future__ import annotations

import json
import os
import re

import pytest
from sqlalchemy import func, select

from conftest import new_session
from models.menus import Menu, MenuItem
from models.purchases import Purchase
from models.types import utcnow
from seed.loader import STARTER_FILE, TemplateError, load_templates, read_templates

# The product spec's starter menus, written out independently of seed/menu_templates.json:
# name, tokens, points, category, max per day, delivery hours, Lovense (device, intensity, ms, offset ms, pattern)
V, A = "vibrator", "all"
EXPECTED = {
    "Quick Fun Menu": ("OFF", "public", ("#FF6B9D", "#C44569", "modern"), [
        ("Blow Kiss", 10, 5, "gestures", None, None, None),
        ("Flash", 25, 15, "tease", None, None, None),
        ("Dance", 50, 30, "performance", None, None, None),
        ("Song Request", 75, 50, "performance", 5, None, None),
        ("Lovense Tease Low", 20, 10, "interactive", None, None, (V, 5, 10_000, 500, "steady")),
        ("Lovense Tease Medium", 50, 30, "interactive", None, None, (V, 10, 15_000, 500, "pulse")),
        ("Lovense Tease High", 100, 75, "interactive", None, None, (V, 18, 20_000, 500, "wave")),
    ]),
    "Private Energy Menu": ("ON", "public", ("#A29BFE", "#6C5CE7", "premium"), [
        ("Custom Photo", 200, 150, "content", 3, 24, None),
        ("Custom Video Short", 500, 400, "content", 2, 48, None),
        ("Custom Video Long", 1000, 900, "content", 1, 72, None),
        ("Voice Message", 150, 100, "content", 5, 24, None),
        ("Rate My Photo", 100, 75, "interactive", None, None, None),
        ("Snapchat Access 1 Day", 300, 250, "access", None, None, None),
        ("Snapchat Access 1 Week", 1500, 1400, "access", None, None, None),
    ]),
    "VIP Experience Menu": ("ON", "subscribers_only", ("#FDCB6E", "#E17055", "luxury"), [
        ("Private Video Call 15 min", 2000, 2000, "private", 1, None, None),
        ("Private Video Call 30 min", 3500, 3800, "private", 1, None, None),
        ("Girlfriend Experience 1 Day", 5000, 5500, "experience", None, None, None),
        ("Custom Fantasy Roleplay Video", 3000, 3200, "content", None, 168, None),
        ("Sexting Session 30 min", 1500, 1600, "interactive", None, None, None),
        ("Exclusive Content Package", 2500, 2700, "content", None, None, None),
        ("Control My Lovense 5 minutes", 1000, 1100, "interactive", None, None, (A, 20, 300_000, 1000, "custom")),
    ]),
}


def snapshot(model_id):
    """Every menu and item of the model as plain values (with update times, so a rewrite would show)."""
    s = new_session()
    try:
        menus = s.scalars(select(Menu).where(Menu.model_id == model_id).order_by(Menu.display_order)).all()
        return [
            (m.id, m.name, m.queue_mode, m.visibility, m.theme, m.template_key, m.updated_at, m.display_order,
             [(i.id, i.name, i.token_value, i.bonus_loyalty_points, i.category, i.max_daily_purchases,
               i.delivery_hours, i.lovense_activation, i.display_order, i.is_active, i.updated_at)
              for i in m.items])
            for m in menus
        ]
    finally:
        s.close()


def load(model, templates=None):
    s = new_session()
    try:
        result = load_templates(s, model.id, templates or read_templates())
        s.commit()
        return [m.name for m in result.created], result.skipped
    finally:
        s.close()


def test_starter_file_gives_3_menus_and_21_items_with_design_8_values(factory):
    model = factory.user("model")
    created, skipped = load(model)
    assert created == list(EXPECTED) and skipped == []
    menus = snapshot(model.id)
    assert sum(len(m[-1]) for m in menus) == 21
    for _id, name, queue_mode, visibility, theme, key, _at, _order, items in menus:
        want_mode, want_visibility, (primary, secondary, style), want_items = EXPECTED[name]
        assert (queue_mode, visibility, key) == (want_mode, want_visibility, name)
        assert theme == {"primary_color": primary, "secondary_color": secondary, "card_style": style}
        got = []
        for _iid, iname, tokens, points, category, max_day, hours, lovense, order, active, _u in items:
            assert active is True
            lov = None if lovense is None else (lovense["device_type"], lovense["intensity"],
                                                 lovense["duration_ms"], lovense["timing_offset"],
                                                 lovense["pattern"])
            assert lovense is None or lovense["enabled"] is True
            got.append((iname, tokens, points, category, max_day, hours, lov))
        assert got == want_items
        assert [i[8] for i in items] == list(range(len(items)))


def test_loading_again_changes_nothing(factory):
    model = factory.user("model")
    load(model)
    before = snapshot(model.id)
    created, skipped = load(model)
    assert created == [] and skipped == list(EXPECTED)
    assert snapshot(model.id) == before
    # Another model gets their own copy.
    other = factory.user("model")
    assert load(other)[0] == list(EXPECTED)
    s = new_session()
    try:
        assert s.scalar(select(func.count()).select_from(Menu)) == 6
        assert s.scalar(select(func.count()).select_from(MenuItem)) == 42
    finally:
        s.close()


def test_starter_file_is_the_platform_format():
    raw = json.load(open(STARTER_FILE))
    assert list(raw) == ["menuTemplates"]
    for menu in raw["menuTemplates"]:
        assert {"name", "description", "queue_mode", "visibility", "theme", "items"} <= set(menu)
        for item in menu["items"]:
            assert "lovense_activation" in item
            assert item["lovense_activation"] is None or isinstance(item["lovense_activation"], dict)


def platform_file(tmp_path, templates) -> str:
    path = tmp_path / "export.json"
    path.write_text(json.dumps({"menuTemplates": templates}))
    return str(path)


def test_cli_loads_a_platform_export_and_refuses_a_bad_one_whole(app, factory, tmp_path):
    model = factory.user("model")
    runner = app.test_cli_runner()
    good = platform_file(tmp_path, [{
        "name": "Exported", "description": "from the platform", "queue_mode": "ON", "visibility": "private",
        "theme": {"primary_color": "#000000", "secondary_color": "#FFFFFF", "card_style": "minimal"},
        "items": [{"name": "Buzz", "token_value": 30, "bonus_loyalty_points": 3, "lovense_activation": {
            "enabled": True, "device_type": "pump", "intensity": 3, "duration_ms": 5000, "timing_offset": 0,
            "pattern": "steady"}}],
    }])
    r = runner.invoke(args=["load-templates", "--model", model.username, "--file", good])
    assert r.exit_code == 0, r.output
    assert "created menu" in r.output
    r = runner.invoke(args=["load-templates", "--model", model.username, "--file", good])
    assert r.exit_code == 0 and "already loaded: Exported" in r.output
    r = runner.invoke(args=["load-templates", "--model", model.username])
    assert r.exit_code == 0 and r.output.count("created menu") == 3
    assert [m[1] for m in snapshot(model.id)] == ["Exported", *EXPECTED]

    other = factory.user("model")
    bad = platform_file(tmp_path, [{"name": "Fine", "items": [{"name": "A", "token_value": 5}]},
                                   {"name": "Broken", "items": [{"name": "B", "token_value": 0}]}])
    r = runner.invoke(args=["load-templates", "--model", other.username, "--file", bad])
    assert r.exit_code != 0 and "token_value" in r.output
    assert snapshot(other.id) == []
    r = runner.invoke(args=["load-templates", "--model", "nobody", "--file", good])
    assert r.exit_code != 0
    with pytest.raises(TemplateError, match="cannot read"):
        read_templates(str(tmp_path / "missing.json"))
    (tmp_path / "wrong.json").write_text(json.dumps({"menus": []}))
    with pytest.raises(TemplateError) as err:
        read_templates(str(tmp_path / "wrong.json"))
    assert "menuTemplates" in err.value.messages


def test_loading_past_8_menus_writes_nothing(app, factory):
    model = factory.user("model")
    for n in range(6):
        factory.menu(model, name=f"own {n}")
    r = app.test_cli_runner().invoke(args=["load-templates", "--model", model.username])
    assert r.exit_code != 0 and "at most 8" in r.output
    assert len(snapshot(model.id)) == 6


@pytest.mark.usefixtures("celery_worker")
def test_demo_lets_a_newcomer_buy_at_once(app, client):
    runner = app.test_cli_runner()
    r = runner.invoke(args=["demo"])
    assert r.exit_code == 0, r.output
    password = re.search(r"demo-fan\s+password (\S+)", r.output).group(1)
    purchase_body = re.search(r"-d '(\{\"menu_id\".*?\})'", r.output).group(1)
    login = client.post("/auth/login", json={"username": "demo-fan", "password": password})
    assert login.status_code == 200
    headers = {"Authorization": f"Bearer {login.json['access_token']}"}
    bought = client.post("/menu/purchase", json=json.loads(purchase_body), headers=headers)
    assert bought.status_code == 200 and bought.json["status"] == "completed", bought.json
    wallet = client.get("/wallet", headers=headers).json
    assert wallet["token_balance"] == 5000 - bought.json["token_value"]
    assert wallet["loyalty_points"] == bought.json["loyalty_points_awarded"] > 0
    # Running it again reuses everything: same menus, no second top-up, a new password.
    again = runner.invoke(args=["demo"])
    assert again.exit_code == 0, again.output
    assert re.search(r"demo-fan\s+password (\S+)", again.output).group(1) != password
    assert client.get("/wallet", headers=headers).json["token_balance"] == wallet["token_balance"]
    s = new_session()
    try:
        assert s.scalar(select(func.count()).select_from(Menu)) == 3
    finally:
        s.close()


# --- Issue 13: the platform's own template file --------------------------------------------------------------

PLATFORM_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "platform_menu_templates.json")


def test_the_platforms_file_loads_as_is_and_a_second_load_reports_the_same(app, factory):
    model = factory.user("model")
    runner = app.test_cli_runner()
    r = runner.invoke(args=["load-templates", "--model", model.username, "--file", PLATFORM_FILE])
    assert r.exit_code == 0, r.output
    assert r.output.count("created menu") == 3
    menus = snapshot(model.id)
    items = [i for m in menus for i in m[-1]]
    assert len(items) == 21
    s = new_session()
    try:
        icons = set(s.scalars(select(MenuItem.icon_url)))
        assert "/icons/blow-kiss.png" in icons and all(i.startswith("/icons/") for i in icons)
        by_name = {i.name: i for i in s.scalars(select(MenuItem))}
    finally:
        s.close()
    assert "Exclusive Snapchat Access - 1 Day" in by_name
    # No delivery hours in the platform's format: a week for made-to-order content, three days otherwise.
    assert by_name["Custom Video Long"].delivery_hours == 168
    assert by_name["Exclusive Snapchat Access - 1 Day"].delivery_hours == 72

    r = runner.invoke(args=["load-templates", "--model", model.username, "--file", PLATFORM_FILE])
    assert r.exit_code == 0, r.output
    assert r.output.count("(the same)") == 3 and "created" not in r.output
    assert snapshot(model.id) == menus


def changed_file(tmp_path) -> str:
    raw = json.load(open(PLATFORM_FILE))
    raw["menuTemplates"][0]["items"][2]["token_value"] = 55  # Dance costs more now
    raw["menuTemplates"][0]["description"] = "New description"
    path = tmp_path / "changed.json"
    path.write_text(json.dumps(raw))
    return str(path)


def test_a_changed_template_is_reported_and_nothing_loads_without_a_choice(app, factory, tmp_path):
    model = factory.user("model")
    runner = app.test_cli_runner()
    assert runner.invoke(args=["load-templates", "--model", model.username, "--file", PLATFORM_FILE]).exit_code == 0
    before = snapshot(model.id)
    r = runner.invoke(args=["load-templates", "--model", model.username, "--file", changed_file(tmp_path)])
    assert r.exit_code != 0
    assert "differs: Quick Fun Menu: description, items[2].token_value" in r.output
    assert "--on-conflict" in r.output
    assert snapshot(model.id) == before

    r = runner.invoke(args=["load-templates", "--model", model.username, "--file", changed_file(tmp_path),
                            "--on-conflict", "skip"])
    assert r.exit_code == 0 and "kept the model's menu: Quick Fun Menu" in r.output, r.output
    assert snapshot(model.id) == before


def test_replace_gives_the_menu_the_templates_items_and_keeps_bought_ones_switched_off(app, factory, tmp_path):
    model, fan = factory.user("model"), factory.user("fan", tokens=100)
    runner = app.test_cli_runner()
    assert runner.invoke(args=["load-templates", "--model", model.username, "--file", PLATFORM_FILE]).exit_code == 0
    s = new_session()
    try:
        quick = s.scalar(select(Menu).where(Menu.model_id == model.id, Menu.name == "Quick Fun Menu"))
        kiss = quick.items[0]
        s.add(Purchase(fan_id=fan.id, model_id=model.id, menu_id=quick.id, item_id=kiss.id, item_name=kiss.name,
                       token_value=kiss.token_value, loyalty_points=0, transaction_type="immediate",
                       purchase_day=utcnow().date(), created_at=utcnow()))
        s.commit()
        quick_id, kiss_id = quick.id, kiss.id
    finally:
        s.close()
    r = runner.invoke(args=["load-templates", "--model", model.username, "--file", changed_file(tmp_path),
                            "--on-conflict", "replace"])
    assert r.exit_code == 0 and "replaced fields and items" in r.output, r.output
    s = new_session()
    try:
        quick = s.get(Menu, quick_id)
        assert quick.description == "New description"
        active = [(i.name, i.token_value) for i in quick.items if i.is_active]
        assert len(active) == 7 and active[2] == ("Dance", 55)
        bought = s.get(MenuItem, kiss_id)
        assert bought is not None and bought.is_active is False  # its purchase still points at it
    finally:
        s.close()
    r = runner.invoke(args=["load-templates", "--model", model.username, "--file", changed_file(tmp_path)])
    assert r.exit_code == 0 and r.output.count("(the same)") == 3, r.output


def test_new_loads_a_changed_template_beside_the_models_menu(app, factory, tmp_path):
    model = factory.user("model")
    runner = app.test_cli_runner()
    assert runner.invoke(args=["load-templates", "--model", model.username, "--file", PLATFORM_FILE]).exit_code == 0
    r = runner.invoke(args=["load-templates", "--model", model.username, "--file", changed_file(tmp_path),
                            "--on-conflict", "new"])
    assert r.exit_code == 0 and "beside the one loaded before: Quick Fun Menu" in r.output, r.output
    assert [m[1] for m in snapshot(model.id)].count("Quick Fun Menu") == 2
