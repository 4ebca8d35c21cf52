"""Issue 17: the platform's commission (split at settlement and at release, none on refund, the rate a sale was
made at), statements in JSON and CSV, the platform's summary and payouts. Real worker, real PostgreSQL."""
from __future__ import annotations

import csv
import io

import pytest
from conftest import assert_books_balance, balance, get_purchase, ledger_rows

pytestmark = pytest.mark.usefixtures("celery_worker")


def set_rate(client, admin_headers, model, bps):
    r = client.put(f"/admin/models/{model.id}/commission", json={"bps": bps}, headers=admin_headers)
    assert r.status_code == 200 and r.json["bps"] == bps and r.json["own_rate"] is True, r.json


def buy(client, headers, menu, item, expected="completed"):
    r = client.post("/menu/purchase", json={"menu_id": str(menu.id), "item_id": str(item.id)}, headers=headers)
    assert r.status_code == 200 and r.json["status"] == expected, r.json
    return r.json["purchase_id"]


def rows_of(purchase_id) -> dict[str, int]:
    return {e.kind: e.amount for e in ledger_rows(purchase_id) if e.kind != "loyalty_award"}


@pytest.fixture
def shop(client, factory):
    fan, model, admin = factory.user("fan", tokens=10_000), factory.user("model"), factory.user("admin")
    live = factory.menu(model, name="Live", items=[{"name": "Dance", "token_value": 99},
                                                   {"name": "Kiss", "token_value": 4}])
    queued = factory.menu(model, name="Requests", items=[{"name": "Photo", "token_value": 250}], queue_mode="ON")
    return {"fan": factory.headers(fan), "fan_user": fan, "model": model, "model_headers": factory.headers(model),
            "admin": factory.headers(admin), "live": live, "queued": queued}


def test_a_queue_off_sale_is_split_at_settlement_at_the_rate_it_was_sold_at(client, shop):
    model, dance = shop["model"], shop["live"].created_items[0]
    assert client.get(f"/admin/models/{model.id}/commission", headers=shop["admin"]).json == {
        "model_id": str(model.id), "bps": 0, "own_rate": False, "set_at": None}  # the settings' default
    before = buy(client, shop["fan"], shop["live"], dance)
    assert rows_of(before) == {"purchase": 99}

    set_rate(client, shop["admin"], model, 2000)
    after = buy(client, shop["fan"], shop["live"], dance)
    assert rows_of(after) == {"purchase": 80, "platform_fee": 19}  # 19.8 rounded down: the model keeps 80
    assert (get_purchase(after).fee_bps, get_purchase(after).platform_fee) == (2000, 19)
    assert (get_purchase(before).fee_bps, get_purchase(before).platform_fee) == (0, 0)
    assert balance(model.id, "earnings") == 99 + 80 and balance(model.id, "platform_revenue") == 19
    assert balance(shop["fan_user"].id, "wallet") == 10_000 - 2 * 99
    assert_books_balance()


def test_a_queue_on_sale_is_split_at_release_at_its_own_rate_and_a_refund_takes_no_fee(client, shop):
    model, photo = shop["model"], shop["queued"].created_items[0]
    set_rate(client, shop["admin"], model, 1000)
    performed = buy(client, shop["fan"], shop["queued"], photo, expected="queued")
    refunded = buy(client, shop["fan"], shop["queued"], photo, expected="queued")
    set_rate(client, shop["admin"], model, 5000)  # after the sale: the entry keeps 10 %
    for action in ("start", "complete"):
        assert client.post(f"/queue/{performed}/{action}", headers=shop["model_headers"]).status_code == 200
    r = client.post(f"/queue/{refunded}/reject", json={"reason": "unavailable"}, headers=shop["model_headers"])
    assert r.status_code == 200, r.json

    assert rows_of(performed) == {"escrow_hold": 250, "escrow_release": 225, "platform_fee": 25}
    assert rows_of(refunded) == {"escrow_hold": 250, "escrow_refund": 250}
    assert get_purchase(refunded).platform_fee is None
    assert balance(model.id, "earnings") == 225 and balance(model.id, "platform_revenue") == 25
    assert balance(model.id, "escrow") == 0 and balance(shop["fan_user"].id, "wallet") == 10_000 - 250
    assert_books_balance()


def parse_csv(text: str) -> list[dict]:
    return list(csv.DictReader(io.StringIO(text)))


def test_statement_json_csv_and_the_platforms_summary_agree(client, shop):
    model = shop["model"]
    set_rate(client, shop["admin"], model, 2500)
    dance, kiss = shop["live"].created_items
    photo = shop["queued"].created_items[0]
    for item in (dance, dance, kiss):
        buy(client, shop["fan"], shop["live"], item)
    rejected = buy(client, shop["fan"], shop["queued"], photo, expected="queued")
    client.post(f"/queue/{rejected}/reject", json={"reason": "unavailable"}, headers=shop["model_headers"])

    r = client.get("/earnings", headers=shop["model_headers"])
    assert r.status_code == 200, r.json
    body = r.json
    # 99 -> fee 24, 99 -> 24, 4 -> 1; the Photo was refunded.
    assert body["totals"] == {"sales": 3, "gross": 202, "fee": 49, "net": 153, "refunds": 1, "refunded": 250}
    assert [(i["name"], i["sales"], i["gross"], i["fee"]) for i in body["by_item"]] == [
        ("Dance", 2, 198, 48), ("Kiss", 1, 4, 1), ("Photo", 0, 0, 0)]  # largest gross first
    assert {m["name"]: m["net"] for m in body["by_menu"]} == {"Live": 153, "Requests": 0}
    assert len(body["by_day"]) == 1 and body["by_day"][0]["gross"] == 202
    assert body["sales_total"] == 3 and sum(s["fee"] for s in body["sales"]) == 49
    assert body["payouts"] == {"paid_in_period": 0, "paid_total": 0, "unpaid": 153}

    for csv_request in ({"query_string": {"format": "csv"}}, {"headers": {"Accept": "text/csv"}}):
        headers = {**shop["model_headers"], **csv_request.get("headers", {})}
        r = client.get("/earnings", headers=headers, query_string=csv_request.get("query_string"))
        assert r.status_code == 200 and r.content_type.startswith("text/csv")
        assert csv_lines_as_json(parse_csv(r.get_data(as_text=True))) == json_lines(body)

    # The admin sees the same statement, and the platform's summary adds up the fee.
    assert client.get(f"/admin/models/{model.id}/earnings", headers=shop["admin"]).json == body
    summary = client.get("/admin/revenue", headers=shop["admin"]).json
    assert summary["totals"]["fee"] >= 49
    assert any(m["model_id"] == str(model.id) and m["fee"] == 49 for m in summary["top_models"])
    # A period with nothing in it, and a bad period.
    empty = client.get("/earnings?from=2020-01-01&to=2020-01-31", headers=shop["model_headers"]).json
    assert empty["totals"]["sales"] == 0 and empty["sales"] == [] and empty["by_day"] == []
    assert client.get("/earnings?from=2020-02-01&to=2020-01-01", headers=shop["model_headers"]).status_code == 422


FIGURES = ("sales", "gross", "fee", "net", "refunds", "refunded")


def json_lines(body) -> list[tuple]:
    lines = [("total", "", "", "", *(body["totals"][f] for f in FIGURES))]
    lines += [("day", d["day"], "", "", *(d[f] for f in FIGURES)) for d in body["by_day"]]
    lines += [("menu", m["menu_id"], m["name"], m["menu_id"], *(m[f] for f in FIGURES)) for m in body["by_menu"]]
    lines += [("item", i["item_id"], i["name"], i["menu_id"], *(i[f] for f in FIGURES)) for i in body["by_item"]]
    lines += [("sale", s["purchase_id"], s["item_name"], s["menu_id"], 1, s["gross"], s["fee"], s["net"], 0, 0)
              for s in body["sales"]]
    return lines


def csv_lines_as_json(rows) -> list[tuple]:
    return [(r["section"], r["key"], r["name"], r["menu_id"], *(int(r[f]) for f in FIGURES)) for r in rows]


def test_payouts_move_earnings_once_and_never_more_than_is_unpaid(client, shop):
    model = shop["model"]
    set_rate(client, shop["admin"], model, 2000)
    buy(client, shop["fan"], shop["live"], shop["live"].created_items[0])  # earnings 80
    url = f"/admin/models/{model.id}/payouts"
    r = client.post(url, json={"amount": 81, "idempotency_key": "p-1"}, headers=shop["admin"])
    assert r.status_code == 422 and r.json["error"]["code"] == "insufficient_earnings"
    assert client.post(url, json={"amount": 50}, headers=shop["admin"]).status_code == 422  # no key
    r = client.post(url, json={"amount": 50, "idempotency_key": "p-1"}, headers=shop["admin"])
    assert r.status_code == 201 and (r.json["amount"], r.json["unpaid"], r.json["replayed"]) == (50, 30, False)
    r = client.post(url, json={"amount": 50}, headers={**shop["admin"], "Idempotency-Key": "p-1"})
    assert r.status_code == 200 and r.json["replayed"] is True and r.json["unpaid"] == 30
    r = client.post(url, json={"amount": 20, "idempotency_key": "p-1"}, headers=shop["admin"])
    assert r.status_code == 422 and r.json["error"]["code"] == "idempotency_mismatch"
    assert balance(model.id, "earnings") == 30 and balance(model.id, "payouts") == 50

    payouts = client.get("/earnings", headers=shop["model_headers"]).json["payouts"]
    assert payouts == {"paid_in_period": 50, "paid_total": 50, "unpaid": 30}
    payable = client.get("/admin/payables", headers=shop["admin"]).json["payables"]
    assert {"model_id": str(model.id), "payable": 30} in payable
    rows = parse_csv(client.get("/admin/payables?format=csv", headers=shop["admin"]).get_data(as_text=True))
    assert {"model_id": str(model.id), "payable": "30"} in rows
    assert_books_balance()


def test_statement_csv_cells_never_start_a_formula(client, factory):
    """Issue 28, item 5: names a model chose cannot become formula cells in the platform's spreadsheet."""
    fan, model, admin = factory.user("fan", tokens=1000), factory.user("model"), factory.user("admin")
    names = ['=HYPERLINK("http://evil.example","x")', "+cmd|' /C calc'!A0", "@SUM(1+1)", "-2+3", "\tTab"]
    menu = factory.menu(model, name="=1+1", items=[{"name": n, "token_value": 5} for n in names])
    for item in menu.created_items:
        buy(client, factory.headers(fan), menu, item)
    for path, headers in (("/earnings", factory.headers(model)),
                          (f"/admin/models/{model.id}/earnings", factory.headers(admin))):
        r = client.get(path, query_string={"format": "csv"}, headers=headers)
        assert r.status_code == 200, r.json
        cells = [cell for row in csv.reader(io.StringIO(r.get_data(as_text=True))) for cell in row]
        assert not [c for c in cells if c[:1] in ("=", "+", "@", "\t")], cells
        assert not [c for c in cells if c.startswith("-") and not c.lstrip("-").isdigit()], cells
        assert {"'" + n for n in names} <= set(cells) and "'=1+1" in cells
