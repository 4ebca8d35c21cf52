"""Shows (web/shows.py, models/services/shows.py): Queue OFF and live-only menus need the model live, Queue ON
does not (unless the queue is paused), sales belong to their show, and ending a show can refund every queued
entry once, whatever runs beside it. Also the purchase's note and anonymity."""
from __future__ import annotations

import uuid

import pytest
from conftest import assert_books_balance, balance, ledger_rows, new_session, run_concurrently
from sqlalchemy import func, select
from test_events import open_stream, stream_server, wait_relayed  # noqa: F401 (a fixture)

from models.audit import AuditEvent
from models.outbox import OutboxEvent
from models.purchases import Purchase
from models.services import shows
from test_accounts import pending_purchase
from worker.tasks import settle

pytestmark = pytest.mark.usefixtures("celery_worker")

TIP = {"name": "Kiss", "token_value": 10}
PHOTO = {"name": "Photo", "token_value": 100, "estimated_duration_minutes": 5}


def buy(client, headers, menu, item, **extra):
    return client.post("/menu/purchase", json={"menu_id": str(menu.id), "item_id": str(item.id), **extra},
                       headers=headers)


def purchases_count() -> int:
    s = new_session()
    try:
        return s.scalar(select(func.count()).select_from(Purchase))
    finally:
        s.close()


def test_queue_off_needs_a_live_show_and_queue_on_does_not(client, factory):
    model, fan = factory.user("model"), factory.user("fan", tokens=1000)
    mh, fh = factory.headers(model), factory.headers(fan)
    off = factory.menu(model, items=[TIP], live=False)
    on = factory.menu(model, items=[PHOTO], queue_mode="ON")
    assert client.get("/show", headers=mh).json == {"show": None, "live": False, "queue_paused": False}

    r = buy(client, fh, off, off.created_items[0])
    assert r.status_code == 409 and r.json["error"]["code"] == "model_not_live"
    assert purchases_count() == 0 and balance(fan.id, "wallet") == 1000  # nothing written, nothing moved
    r = buy(client, fh, on, on.created_items[0])
    assert r.status_code == 200 and r.json["status"] == "queued" and r.json["show_id"] is None  # offline request

    r = client.post("/show/start", headers=mh)
    assert r.status_code == 200 and r.json["live"] and r.json["show"]["status"] == "live"
    show_id = r.json["show"]["id"]
    assert client.post("/show/start", headers=mh).json["show"]["id"] == show_id  # live already: the same show
    r = buy(client, fh, off, off.created_items[0])
    assert r.status_code == 200 and r.json["status"] == "completed" and r.json["show_id"] == show_id

    r = client.post("/show/pause", headers=mh)
    assert r.json["show"]["status"] == "paused" and not r.json["live"]
    assert buy(client, fh, off, off.created_items[0]).json["error"]["code"] == "model_not_live"
    on_during_pause = buy(client, fh, on, on.created_items[0])
    assert on_during_pause.json["show_id"] == show_id  # a pause is part of the show

    r = client.post("/show/start", headers=mh)  # resume
    assert r.json["show"]["id"] == show_id and r.json["live"]
    assert buy(client, fh, off, off.created_items[0]).status_code == 200
    r = client.get("/show", headers=mh)
    assert r.json["show"]["sales"] == {"count": 2, "tokens": 20}  # completed sales of this show

    r = client.post("/show/end", json={"open_entries": "keep"}, headers=mh)
    assert r.status_code == 200 and r.json["show"]["status"] == "ended" and r.json["refunded"] == 0
    assert buy(client, fh, off, off.created_items[0]).json["error"]["code"] == "model_not_live"
    r = client.post("/show/end", json={}, headers=mh)
    assert r.status_code == 409 and r.json["error"]["code"] == "no_open_show"
    assert client.post("/show/pause", headers=mh).json["error"]["code"] == "no_open_show"

    second = client.post("/show/start", headers=mh).json["show"]["id"]
    assert second != show_id  # a new show after an end
    s = new_session()
    try:
        actions = list(s.scalars(select(AuditEvent.action).where(AuditEvent.action.like("show.%"))
                                 .order_by(AuditEvent.id)))
        assert actions == ["show.live", "show.paused", "show.live", "show.ended", "show.live"]
        types = list(s.scalars(select(OutboxEvent.payload).where(OutboxEvent.type == "show.changed")
                               .order_by(OutboxEvent.id)))
        assert [t["status"] for t in types] == ["live", "paused", "live", "ended", "live"]
    finally:
        s.close()
    assert_books_balance()


def test_a_paused_queue_refuses_queue_on_purchases(client, factory):
    model, fan = factory.user("model"), factory.user("fan", tokens=1000)
    mh, fh = factory.headers(model), factory.headers(fan)
    on = factory.menu(model, items=[PHOTO], queue_mode="ON")
    assert client.post("/queue/pause", headers=mh).json == {"paused": True}
    assert client.get("/queue", headers=mh).json["paused"] is True
    r = buy(client, fh, on, on.created_items[0])
    assert r.status_code == 409 and r.json["error"]["code"] == "queue_paused"
    assert purchases_count() == 0 and balance(fan.id, "wallet") == 1000
    assert client.post("/queue/resume", headers=mh).json == {"paused": False}
    assert buy(client, fh, on, on.created_items[0]).json["status"] == "queued"


def test_a_live_only_menu_is_shown_and_sold_only_while_live(client, factory):
    model, fan = factory.user("model"), factory.user("fan", tokens=1000)
    mh, fh = factory.headers(model), factory.headers(fan)
    menu = factory.menu(model, items=[PHOTO], queue_mode="ON", live_only=True)
    listed = lambda headers: [m["id"] for m in client.get(f"/menu/model/{model.id}", headers=headers).json]  # noqa: E731
    assert listed(fh) == [] and listed(mh) == [str(menu.id)]  # the model sees it, marked live_only
    assert client.get(f"/menu/{menu.id}", headers=fh).status_code == 404
    r = buy(client, fh, menu, menu.created_items[0])
    assert r.status_code == 409 and r.json["error"]["code"] == "model_not_live"
    client.post("/show/start", headers=mh)
    assert listed(fh) == [str(menu.id)]
    assert client.get(f"/menu/{menu.id}", headers=fh).json["live_only"] is True
    assert buy(client, fh, menu, menu.created_items[0]).json["status"] == "queued"


def _queue(client, factory, model, fans, menu):
    """One queued entry per fan (each fan 1,000 tokens, the entry costs 100)."""
    ids = []
    for fan in fans:
        r = buy(client, factory.headers(fan), menu, menu.created_items[0])
        assert r.status_code == 200 and r.json["status"] == "queued", r.json
        ids.append(r.json["purchase_id"])
    return ids


def test_ending_a_show_with_refund_all_refunds_each_queued_entry_once(client, factory, stream_server):
    model = factory.user("model")
    fans = [factory.user("fan", tokens=1000) for _ in range(4)]
    mh = factory.headers(model)
    menu = factory.menu(model, items=[PHOTO], queue_mode="ON", queue_order="fifo", live=True)
    ids = _queue(client, factory, model, fans, menu)
    assert client.post(f"/queue/{ids[0]}/start", headers=mh).status_code == 200  # in progress: it stays
    stream = open_stream(client, factory, fans[1], stream_server)
    model_stream = open_stream(client, factory, model, stream_server)
    try:
        r = client.post("/show/end", json={"open_entries": "refund_all"}, headers=mh)
        assert r.status_code == 200 and r.json["refunded"] == 3 and r.json["show"]["end_mode"] == "refund_all"
        for pid, fan in zip(ids[1:], fans[1:]):
            p = client.get(f"/menu/purchase/{pid}/status", headers=factory.headers(fan)).json
            assert p["status"] == "refunded" and p["refund_reason"] == "show_ended"
            assert [row.kind for row in ledger_rows(pid)] == ["escrow_hold", "escrow_refund"]
            assert balance(fan.id, "wallet") == 1000
        assert client.get(f"/menu/purchase/{ids[0]}/status", headers=mh).json["status"] == "in_progress"
        assert [e["purchase_id"] for e in client.get("/queue", headers=mh).json["entries"]] == [ids[0]]
        # Again: only what is still queued (nothing) is refunded; nothing moves twice.
        r = client.post("/show/end", json={"open_entries": "refund_all"}, headers=mh)
        assert r.status_code == 200 and r.json["refunded"] == 0 and r.json["show"]["status"] == "ended"
        assert client.post("/show/end", json={"open_entries": "keep"}, headers=mh).status_code == 409
        assert [row.kind for row in ledger_rows(ids[1])] == ["escrow_hold", "escrow_refund"]
        assert_books_balance()
        # The fan's stream and the model's stream show it.
        stream.wait_for(lambda m: any(x["event"] == "queue.entry.refunded" and x["data"]["purchase_id"] == ids[1]
                                      and x["data"]["data"]["reason"] == "show_ended" for x in m), what="refund")
        model_stream.wait_for(lambda m: any(x["event"] == "show.changed" and x["data"]["data"]["status"] == "ended"
                                            for x in m), what="show ended")
        refunded = {x["data"]["purchase_id"] for x in model_stream.of("queue.entry.refunded")}
        assert refunded == set(ids[1:])
    finally:
        stream.close()
        model_stream.close()


@pytest.mark.parametrize("round_", range(3))
def test_refund_all_is_safe_beside_starts_completes_and_cancels(client, factory, round_):
    """Ending with refund_all while the model starts and completes entries and fans cancel theirs: each entry
    ends in exactly one state with exactly its ledger rows, and the books balance."""
    model = factory.user("model")
    fans = [factory.user("fan", tokens=1000) for _ in range(8)]
    mh = factory.headers(model)
    menu = factory.menu(model, items=[PHOTO], queue_mode="ON", queue_order="fifo", live=True)
    ids = _queue(client, factory, model, fans, menu)
    assert client.post(f"/queue/{ids[0]}/start", headers=mh).status_code == 200
    fan_headers = [factory.headers(f) for f in fans]

    def act(kind, i):
        if kind == "end":
            return client.post("/show/end", json={"open_entries": "refund_all"}, headers=mh).status_code
        if kind == "complete":
            return client.post(f"/queue/{ids[i]}/complete", headers=mh).status_code
        if kind == "start":
            return client.post(f"/queue/{ids[i]}/start", headers=mh).status_code
        return client.post(f"/queue/{ids[i]}/cancel", headers=fan_headers[i]).status_code

    jobs = [("complete", 0), ("start", 1), ("end", None), ("cancel", 2), ("cancel", 3), ("start", 4)]
    statuses = run_concurrently(act, jobs)
    assert all(code in (200, 409) for code in statuses), statuses
    assert statuses[2] == 200  # the end itself
    expected_rows = {"completed": ["escrow_hold", "escrow_release"], "refunded": ["escrow_hold", "escrow_refund"],
                     "in_progress": ["escrow_hold"]}
    s = new_session()
    try:
        final = {str(p.id): p for p in s.scalars(select(Purchase))}
    finally:
        s.close()
    for pid in ids:
        p = final[pid]
        assert p.status in expected_rows, p.status
        assert sorted(r.kind for r in ledger_rows(pid)) == sorted(expected_rows[p.status]), (pid, p.status)
    assert not [p for p in final.values() if p.status == "queued"]  # every queued entry was refunded or started
    assert sum(p.status == "in_progress" for p in final.values()) <= 1
    assert_books_balance()


def test_a_note_and_anonymity_travel_with_the_purchase(client, factory, stream_server):
    model, fan, admin = factory.user("model"), factory.user("fan", tokens=1000), factory.user("admin")
    mh, fh, ah = factory.headers(model), factory.headers(fan), factory.headers(admin)
    menu = factory.menu(model, items=[PHOTO], queue_mode="ON")
    note = "Wear the <b>red</b> hat &\nwave"
    model_stream = open_stream(client, factory, model, stream_server)
    try:
        r = buy(client, fh, menu, menu.created_items[0], note=note, anonymous=True)
        assert r.status_code == 200 and r.json["note"] == note and r.json["anonymous"] is True
        pid = r.json["purchase_id"]
        model_stream.wait_for(lambda m: any(x["event"] == "purchase.queued" for x in m), what="queued")
        mine = [x["data"] for x in model_stream.of() if x["data"].get("purchase_id") == pid]
        assert mine and all(x["fan_id"] is None and x["data"]["anonymous"] is True for x in mine)
    finally:
        model_stream.close()
    assert r.json["fan_id"] == str(fan.id)  # the fan sees themselves
    entry = client.get("/queue", headers=mh).json["entries"][0]
    assert entry["anonymous"] is True and entry["fan_id"] is None and entry["fan_display_name"] is None
    assert entry["note"] == note  # stored as sent; pages escape it
    assert client.get(f"/menu/purchase/{pid}/status", headers=mh).json["fan_id"] is None
    assert client.get("/menu/purchase/history", headers=mh).json["purchases"][0]["fan_id"] is None
    assert client.get(f"/menu/purchase/{pid}/status", headers=ah).json["fan_id"] == str(fan.id)  # admins know

    for bad in ("x" * 281, "bell\x07", "nul\x00", "esc\x1b[31m", "c1\x85"):
        r = buy(client, fh, menu, menu.created_items[0], note=bad)
        assert r.status_code == 422 and r.json["error"]["code"] == "invalid_request", bad
    assert buy(client, fh, menu, menu.created_items[0], anonymous="maybe").status_code == 422
    assert purchases_count() == 1
    wait_relayed()
    s = new_session()
    try:
        payloads = list(s.scalars(select(OutboxEvent.payload).where(OutboxEvent.purchase_id == uuid.UUID(pid))))
    finally:
        s.close()
    assert payloads and all(p["anonymous"] is True and "note" not in p for p in payloads)


def test_a_refund_all_cut_short_is_finished_by_sending_it_again(client, factory):
    """The end committed, then the process died before refunding: the queue still holds the entries, and the
    same request sent again refunds them, once."""
    model, fans = factory.user("model"), [factory.user("fan", tokens=1000) for _ in range(2)]
    mh = factory.headers(model)
    menu = factory.menu(model, items=[PHOTO], queue_mode="ON", live=True)
    ids = _queue(client, factory, model, fans, menu)
    s = new_session()
    try:
        shows.end(s, model.id, "refund_all")
        s.commit()  # ... and no refund_queued: the crash
    finally:
        s.close()
    assert [e["purchase_id"] for e in client.get("/queue", headers=mh).json["entries"]] == ids
    r = client.post("/show/end", json={"open_entries": "refund_all"}, headers=mh)
    assert r.status_code == 200 and r.json["refunded"] == 2
    assert client.post("/show/end", json={"open_entries": "refund_all"}, headers=mh).json["refunded"] == 0
    for pid in ids:
        assert [row.kind for row in ledger_rows(pid)] == ["escrow_hold", "escrow_refund"]
    assert_books_balance()


def test_a_queue_on_purchase_still_pending_at_a_refund_all_end_never_joins_the_queue(client, factory):
    """Bought before the end, settled after it: it fails with show_ended (no money moves) instead of joining a
    queue the model just emptied; one bought after the end is a new offline request and joins it."""
    model, fan = factory.user("model"), factory.user("fan", tokens=1000)
    mh = factory.headers(model)
    menu = factory.menu(model, items=[PHOTO], queue_mode="ON", live=True)
    item = menu.created_items[0]
    before = pending_purchase(fan, model, menu, item, transaction_type="queued")
    assert client.post("/show/end", json={"open_entries": "refund_all"}, headers=mh).json["refunded"] == 0
    after = pending_purchase(fan, model, menu, item, transaction_type="queued")
    settle(None)
    s = new_session()
    try:
        first, second = s.get(Purchase, before), s.get(Purchase, after)
        assert (first.status, first.failure_reason) == ("failed", "show_ended")
        assert second.status == "queued"
    finally:
        s.close()
    assert [row.kind for row in ledger_rows(before)] == []
    assert balance(fan.id, "wallet") == 900
    assert_books_balance()
