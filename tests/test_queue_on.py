"""Issue 3: Queue ON end to end: escrow, the Redis queue, the model's workflow, beat's sweep and reconciliation
(real PostgreSQL, Redis and Celery worker)."""
from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
import time_machine
from conftest import RUNTIME, assert_books_balance, balance, get_purchase, ledger_rows, run_concurrently

from models.types import utcnow
from models.services import performance_queue
from worker.tasks import reconcile_queues, sweep_escrow_deadlines

pytestmark = pytest.mark.usefixtures("celery_worker")

# name, price, points, minutes
ITEMS = [("Photo", 200, 150, 10), ("Video", 500, 400, 30), ("Voice", 150, 100, 5), ("Rate", 100, 75, 0)]


def queue_menu(factory, model, order="priority", **fields):
    items = [{"name": n, "token_value": v, "bonus_loyalty_points": pts, "estimated_duration_minutes": m}
             for n, v, pts, m in ITEMS]
    return factory.menu(model, items=items, queue_mode="ON", queue_order=order, **fields)


def buy(client, headers, menu, item):
    r = client.post("/menu/purchase", json={"menu_id": str(menu.id), "item_id": str(item.id)}, headers=headers)
    assert r.status_code == 200, r.json
    assert r.json["status"] == "queued" and r.json["transaction_type"] == "queued"
    return r.json


def expected_places(entries):
    """entries: (purchase_id, price, minutes, in_progress) in arrival order, `price` as the queue priority."""
    order = sorted(enumerate(entries), key=lambda ie: (not ie[1][3], -ie[1][1], ie[0]))
    out, wait = {}, 0
    for pos, (_i, (pid, _price, minutes, _ip)) in enumerate(order, start=1):
        out[pid] = (pos, wait)
        wait += minutes
    return out


def api_places(client, headers_by_pid):
    out = {}
    for pid, headers in headers_by_pid.items():
        body = client.get(f"/menu/purchase/{pid}/status", headers=headers).json
        out[pid] = (body["queue_position"], body["estimated_wait_minutes"])
    return out


def listed(client, model_headers):
    r = client.get("/queue", headers=model_headers)
    assert r.status_code == 200, r.json
    return r.json


def assert_queue_everywhere(client, model_headers, fan_headers, entries, priority=True):
    """The status endpoint (from Redis) and the model's list (from the database) both show `entries`' order."""
    keyed = [(pid, price if priority else 0, minutes, ip) for pid, price, minutes, ip in entries]
    want = expected_places(keyed)
    assert api_places(client, {pid: fan_headers for pid, *_ in entries}) == want
    body = listed(client, model_headers)
    assert {e["purchase_id"]: (e["position"], e["estimated_wait_minutes"]) for e in body["entries"]} == want
    assert [e["position"] for e in body["entries"]] == list(range(1, len(entries) + 1))
    assert body["total"] == len(entries)


def empty_queue_and_books(model):
    assert balance(model.id, "escrow") == 0
    assert RUNTIME.redis.exists(*performance_queue._keys(model.id)) == 0
    assert_books_balance()


@pytest.mark.parametrize("order", ["priority", "fifo"])
def test_positions_and_waits_through_completions_rejections_and_cancellations(client, factory, order):
    model, fan = factory.user("model"), factory.user("fan", tokens=10_000)
    mh, fh = factory.headers(model), factory.headers(fan)
    menu = queue_menu(factory, model, order)
    photo, video, voice, rate = menu.created_items
    bought = [photo, video, voice, rate, video, photo, voice]
    entries = []
    for item in bought:
        body = buy(client, fh, menu, item)
        entries.append([body["purchase_id"], item.token_value, item.estimated_duration_minutes, False])
        # The POST already answers with the place the entry has now.
        mine = expected_places([(p, v if order == "priority" else 0, m, ip) for p, v, m, ip in entries])
        assert (body["queue_position"], body["estimated_wait_minutes"]) == mine[body["purchase_id"]]
    assert balance(fan.id, "wallet") == 10_000 - sum(i.token_value for i in bought)
    assert balance(model.id, "escrow") == sum(i.token_value for i in bought)
    assert_queue_everywhere(client, mh, fh, entries, order == "priority")
    if order == "priority":
        assert [e["item_name"] for e in listed(client, mh)["entries"]] == [
            "Video", "Video", "Photo", "Photo", "Voice", "Voice", "Rate"]
    else:
        assert [e["item_name"] for e in listed(client, mh)["entries"]] == [i.name for i in bought]

    def act(pid, what, headers=mh, **json):
        r = client.post(f"/queue/{pid}/{what}", headers=headers, json=json or None)
        assert r.status_code == 200, r.json
        return r.json

    # The model starts an entry from the middle: it moves to the front.
    started = entries[3]
    body = act(started[0], "start")
    assert (body["status"], body["queue_position"], body["estimated_wait_minutes"]) == ("in_progress", 1, 0)
    started[3] = True
    assert_queue_everywhere(client, mh, fh, entries, order == "priority")

    body = act(started[0], "complete")
    assert body["status"] == "completed" and body["queue_position"] is None
    entries.remove(started)
    assert_queue_everywhere(client, mh, fh, entries, order == "priority")

    rejected = entries[1]
    body = act(rejected[0], "reject", reason="cannot_deliver")
    assert (body["status"], body["refund_reason"], body["success"]) == ("refunded", "cannot_deliver", False)
    entries.remove(rejected)
    assert_queue_everywhere(client, mh, fh, entries, order == "priority")

    cancelled = entries[0]
    body = act(cancelled[0], "cancel", headers=fh)
    assert (body["status"], body["refund_reason"]) == ("refunded", "cancelled_by_fan")
    entries.remove(cancelled)
    assert_queue_everywhere(client, mh, fh, entries, order == "priority")
    assert_books_balance()

    # Work through the rest in queue order.
    while entries:
        head = listed(client, mh)["entries"][0]["purchase_id"]
        act(head, "start")
        act(head, "complete")
        entries = [e for e in entries if e[0] != head]
        assert_queue_everywhere(client, mh, fh, entries, order == "priority")
    assert listed(client, mh)["entries"] == []
    empty_queue_and_books(model)
    completed_value = sum(i.token_value for i in bought) - rejected[1] - cancelled[1]
    assert balance(model.id, "earnings") == completed_value
    assert balance(fan.id, "wallet") == 10_000 - completed_value


def test_lifecycle_complete_moves_escrow_to_earnings_and_awards_points(client, factory):
    model, fan = factory.user("model"), factory.user("fan", tokens=1000)
    mh, fh = factory.headers(model), factory.headers(fan)
    menu = queue_menu(factory, model)
    video = menu.created_items[1]
    body = buy(client, fh, menu, video)
    pid = body["purchase_id"]
    assert body["loyalty_points_awarded"] == 0 and body["escrow_deadline"] is not None
    assert (balance(fan.id, "wallet"), balance(model.id, "escrow"), balance(model.id, "earnings")) == (500, 500, 0)
    assert_books_balance()
    assert client.post(f"/queue/{pid}/complete", headers=mh).json["error"]["code"] == "invalid_state"
    assert client.post(f"/queue/{pid}/start", headers=mh).status_code == 200
    assert get_purchase(uuid.UUID(pid)).started_at is not None
    assert_books_balance()
    r = client.post(f"/queue/{pid}/complete", headers=mh)
    assert r.status_code == 200
    assert (r.json["status"], r.json["loyalty_points_awarded"], r.json["success"]) == ("completed", 400, True)
    assert (balance(fan.id, "wallet"), balance(model.id, "escrow"), balance(model.id, "earnings")) == (500, 0, 500)
    assert balance(fan.id, "loyalty") == 400
    assert sorted(e.kind for e in ledger_rows(uuid.UUID(pid))) == ["escrow_hold", "escrow_release", "loyalty_award"]
    # Completing again changes nothing.
    r = client.post(f"/queue/{pid}/complete", headers=mh)
    assert (r.status_code, r.json["error"]["code"]) == (409, "invalid_state")
    assert len(ledger_rows(uuid.UUID(pid))) == 3
    empty_queue_and_books(model)


@pytest.mark.parametrize("how", ["reject_queued", "reject_in_progress", "cancel"])
def test_lifecycle_refunds_give_the_tokens_back_without_points(client, factory, how):
    model, fan = factory.user("model"), factory.user("fan", tokens=1000)
    mh, fh = factory.headers(model), factory.headers(fan)
    menu = queue_menu(factory, model)
    pid = buy(client, fh, menu, menu.created_items[0])["purchase_id"]
    if how == "reject_in_progress":
        assert client.post(f"/queue/{pid}/start", headers=mh).status_code == 200
    if how == "cancel":
        r = client.post(f"/queue/{pid}/cancel", headers=fh)
        reason = "cancelled_by_fan"
    else:
        r = client.post(f"/queue/{pid}/reject", headers=mh, json={"reason": "unavailable"})
        reason = "unavailable"
    assert r.status_code == 200, r.json
    assert (r.json["status"], r.json["refund_reason"], r.json["loyalty_points_awarded"]) == ("refunded", reason, 0)
    assert (balance(fan.id, "wallet"), balance(fan.id, "loyalty"), balance(model.id, "earnings")) == (1000, 0, 0)
    assert sorted(e.kind for e in ledger_rows(uuid.UUID(pid))) == ["escrow_hold", "escrow_refund"]
    status = client.get(f"/menu/purchase/{pid}/status", headers=fh).json
    assert (status["status"], status["queue_position"], status["estimated_wait_minutes"]) == ("refunded", None, None)
    empty_queue_and_books(model)


def test_deadline_sweep_refunds_overdue_entries_once(client, factory):
    model, fan = factory.user("model"), factory.user("fan", tokens=1000)
    mh, fh = factory.headers(model), factory.headers(fan)
    menu = factory.menu(model, queue_mode="ON", delivery_hours_default=48, items=[
        {"name": "Quick", "token_value": 100, "delivery_hours": 1, "estimated_duration_minutes": 5},
        {"name": "Slow", "token_value": 200, "estimated_duration_minutes": 20},  # the menu's 48 h
    ])
    quick, slow = menu.created_items
    q1 = buy(client, fh, menu, quick)["purchase_id"]
    q2 = buy(client, fh, menu, quick)["purchase_id"]
    s1 = buy(client, fh, menu, slow)["purchase_id"]
    assert client.post(f"/queue/{q2}/start", headers=mh).status_code == 200
    p1 = get_purchase(uuid.UUID(q1))
    assert p1.escrow_deadline == p1.created_at + timedelta(hours=1)

    assert sweep_escrow_deadlines() == 0  # nothing is due yet
    with time_machine.travel(utcnow() + timedelta(hours=2), tick=True):
        assert sweep_escrow_deadlines() == 2  # the queued one and the one in progress
        assert sweep_escrow_deadlines() == 0  # delivered twice: refunded once
    for pid in (q1, q2):
        p = get_purchase(uuid.UUID(pid))
        assert (p.status, p.refund_reason) == ("refunded", "deadline_passed")
        assert sorted(e.kind for e in ledger_rows(p.id)) == ["escrow_hold", "escrow_refund"]
    status = client.get(f"/menu/purchase/{s1}/status", headers=fh).json
    assert (status["status"], status["queue_position"], status["estimated_wait_minutes"]) == ("queued", 1, 0)
    assert balance(fan.id, "wallet") == 800 and balance(model.id, "escrow") == 200
    assert_books_balance()

    with time_machine.travel(utcnow() + timedelta(hours=49), tick=True):
        assert sweep_escrow_deadlines() == 1
    assert listed(client, mh)["entries"] == []
    assert balance(fan.id, "wallet") == 1000
    empty_queue_and_books(model)


def test_flush_then_reconcile_restores_every_entry_once(client, factory, redis_client):
    models = [factory.user("model") for _ in range(2)]
    fan = factory.user("fan", tokens=10_000)
    fh = factory.headers(fan)
    menus = [queue_menu(factory, m, order) for m, order in zip(models, ["priority", "fifo"])]
    per_model = {}
    for menu in menus:
        entries = []
        for item in [menu.created_items[i] for i in (0, 1, 2, 3, 1, 0)]:
            pid = buy(client, fh, menu, item)["purchase_id"]
            entries.append([pid, item.token_value if menu.queue_order == "priority" else 0,
                            item.estimated_duration_minutes, False])
        per_model[menu.model_id] = entries
    first = per_model[models[0].id]
    assert client.post(f"/queue/{first[2][0]}/start", headers=factory.headers(models[0])).status_code == 200
    first[2][3] = True
    done = per_model[models[1].id].pop(0)
    mh1 = factory.headers(models[1])
    assert client.post(f"/queue/{done[0]}/start", headers=mh1).status_code == 200
    assert client.post(f"/queue/{done[0]}/complete", headers=mh1).status_code == 200
    before = {m: redis_client.zrange(performance_queue._keys(m)[0], 0, -1, withscores=True) for m in per_model}

    redis_client.flushdb()
    # A stale entry and a stray key that reconciliation must remove (the completed purchase).
    stale = performance_queue.member(get_purchase(uuid.UUID(done[0])))
    redis_client.zadd(performance_queue._keys(models[1].id)[0], {stale: -1})
    redis_client.hset(performance_queue._keys(models[1].id)[1], stale, 5)
    totals = reconcile_queues()
    assert totals["added"] == 11 and totals["removed"] == 1

    after = {m: redis_client.zrange(performance_queue._keys(m)[0], 0, -1, withscores=True) for m in per_model}
    assert after == before
    for model_id, entries in per_model.items():
        members = redis_client.zrange(performance_queue._keys(model_id)[0], 0, -1)
        assert sorted(performance_queue.purchase_id_of(m) for m in members) == sorted(e[0] for e in entries)  # each once
        assert api_places(client, {e[0]: fh for e in entries}) == expected_places(entries)
    assert reconcile_queues() == {"models": 2, "added": 0, "fixed": 0, "removed": 0}


def test_status_endpoint_repairs_a_flushed_queue_and_cli_rebuilds(app, client, factory, redis_client):
    model, fan = factory.user("model"), factory.user("fan", tokens=1000)
    fh = factory.headers(fan)
    menu = queue_menu(factory, model)
    a = buy(client, fh, menu, menu.created_items[2])["purchase_id"]  # 150, 5 min
    b = buy(client, fh, menu, menu.created_items[0])["purchase_id"]  # 200, 10 min: ahead of a
    redis_client.flushdb()
    body = client.get(f"/menu/purchase/{a}/status", headers=fh).json
    assert (body["queue_position"], body["estimated_wait_minutes"]) == (2, 10)
    redis_client.flushdb()
    result = app.test_cli_runner().invoke(args=["rebuild-queues"])
    assert result.exit_code == 0 and "added=2" in result.output
    assert performance_queue.position(get_purchase(uuid.UUID(b)), RUNTIME.redis) == (1, 0)


def test_concurrent_complete_and_reject_exactly_one_wins(app, factory):
    model, fan = factory.user("model"), factory.user("fan", tokens=10_000)
    mh, fh = factory.headers(model), factory.headers(fan)
    menu = queue_menu(factory, model)
    client = app.test_client()
    wins = []
    for _ in range(6):
        pid = buy(client, fh, menu, menu.created_items[1])["purchase_id"]
        assert client.post(f"/queue/{pid}/start", headers=mh).status_code == 200

        def act(what):
            c = app.test_client()
            if what == "complete":
                return what, c.post(f"/queue/{pid}/complete", headers=mh)
            return what, c.post(f"/queue/{pid}/reject", headers=mh, json={"reason": "other"})

        results = run_concurrently(act, [("complete",), ("reject",), ("complete",), ("reject",)])
        ok = [w for w, r in results if r.status_code == 200]
        assert len(ok) == 1
        assert all(r.status_code == 409 and r.json["error"]["code"] == "invalid_state"
                   for _w, r in results if r.status_code != 200)
        kinds = sorted(e.kind for e in ledger_rows(uuid.UUID(pid)))
        assert kinds == (["escrow_hold", "escrow_release", "loyalty_award"] if ok[0] == "complete"
                         else ["escrow_hold", "escrow_refund"])
        wins.append(ok[0])
        assert_books_balance()
    earned = 500 * wins.count("complete")
    assert balance(model.id, "earnings") == earned
    assert balance(fan.id, "wallet") == 10_000 - earned
    empty_queue_and_books(model)


def test_only_the_owner_may_act_and_wrong_states_are_409(client, factory):
    model, other_model = factory.user("model"), factory.user("model")
    fan, other_fan = factory.user("fan", tokens=1000), factory.user("fan")
    mh, omh, fh, ofh = (factory.headers(u) for u in (model, other_model, fan, other_fan))
    menu = queue_menu(factory, model)
    p1 = buy(client, fh, menu, menu.created_items[0])["purchase_id"]
    p2 = buy(client, fh, menu, menu.created_items[2])["purchase_id"]

    for path in ("start", "complete"):
        r = client.post(f"/queue/{p1}/{path}", headers=omh)
        assert (r.status_code, r.json["error"]["code"]) == (404, "not_found")
    assert client.post(f"/queue/{p1}/reject", headers=omh, json={"reason": "other"}).status_code == 404
    assert client.post(f"/queue/{p1}/cancel", headers=ofh).status_code == 404
    assert client.post(f"/queue/{uuid.uuid4()}/start", headers=mh).status_code == 404
    assert client.post(f"/queue/{p1}/start", headers=fh).status_code == 403  # fans do not start entries
    assert client.post(f"/queue/{p1}/cancel", headers=mh).status_code == 403
    assert listed(client, omh)["entries"] == []
    assert client.get("/queue", headers=fh).status_code == 403

    r = client.post(f"/queue/{p1}/reject", headers=mh, json={"reason": "deadline_passed"})
    assert (r.status_code, r.json["error"]["code"]) == (422, "invalid_request")
    assert client.post(f"/queue/{p1}/reject", headers=mh, json={}).status_code == 422

    assert client.post(f"/queue/{p1}/start", headers=mh).status_code == 200
    r = client.post(f"/queue/{p2}/start", headers=mh)
    assert (r.status_code, r.json["error"]["code"]) == (409, "already_in_progress")
    r = client.post(f"/queue/{p1}/start", headers=mh)
    assert (r.status_code, r.json["error"]["code"]) == (409, "invalid_state")
    r = client.post(f"/queue/{p1}/cancel", headers=fh)
    assert (r.status_code, r.json["error"]["code"]) == (409, "already_started")
    r = client.post(f"/queue/{p2}/complete", headers=mh)
    assert (r.status_code, r.json["error"]["code"]) == (409, "invalid_state")

    assert client.post(f"/queue/{p2}/cancel", headers=fh).status_code == 200
    r = client.post(f"/queue/{p2}/cancel", headers=fh)
    assert (r.status_code, r.json["error"]["code"]) == (409, "invalid_state")
    assert get_purchase(uuid.UUID(p1)).status == "in_progress"
    assert balance(fan.id, "wallet") == 1000 - 200
    assert_books_balance()


def test_queue_capacity_holds_at_intake_and_within_one_settlement_batch(factory, session):
    from conftest import make_settings, wait_for_idle_settlement

    from models.purchases import Purchase, purchase_day_of
    from models.services.settlement import settle_pending
    from web import create_app

    settings = make_settings(queue_capacity=3)  # this process only: intake and the batch settled below
    client = create_app(settings).test_client()
    model, fans = factory.user("model"), [factory.user("fan", tokens=1000) for _ in range(4)]
    menu = queue_menu(factory, model, order="fifo")
    item = menu.created_items[0]
    buy(client, factory.headers(fans[0]), menu, item)  # one entry open
    wait_for_idle_settlement()

    # Three purchases that passed intake's precheck while the queue held one entry, settled in one batch:
    # the batch counts its own entries, so it queues two and refuses the third.
    now = utcnow()
    pending = [Purchase(fan_id=f.id, model_id=model.id, menu_id=menu.id, item_id=item.id,
                        item_name=item.name, token_value=item.token_value,
                        loyalty_points=item.bonus_loyalty_points, estimated_duration_minutes=10,
                        transaction_type="queued", purchase_day=purchase_day_of(now, settings.tz),
                        created_at=now + timedelta(microseconds=i))
               for i, f in enumerate(fans[1:])]
    session.add_all(pending)
    session.commit()
    settled = settle_pending(session, settings, [p.id for p in pending])
    assert [(p.status, p.failure_reason) for p in settled] == [("queued", None), ("queued", None),
                                                               ("failed", "queue_full")]
    assert [balance(f.id, "wallet") for f in fans] == [800, 800, 800, 1000]

    # Full now: intake refuses at once and writes nothing.
    r = client.post("/menu/purchase", json={"menu_id": str(menu.id), "item_id": str(item.id)},
                    headers=factory.headers(fans[3]))
    assert (r.status_code, r.json["error"]["code"]) == (409, "queue_full")
    assert session.query(Purchase).filter_by(fan_id=fans[3].id).count() == 1
    assert_books_balance()


def test_the_models_queue_names_each_fan_by_display_name(client, factory, session):
    from models.users import User

    model, named, unnamed = factory.user("model"), factory.user("fan", tokens=1000), factory.user("fan", tokens=1000)
    session.get(User, named.id).display_name = "Ana"
    session.commit()
    menu = queue_menu(factory, model, order="fifo")
    buy(client, factory.headers(named), menu, menu.created_items[0])
    buy(client, factory.headers(unnamed), menu, menu.created_items[0])
    entries = client.get("/queue", headers=factory.headers(model)).json["entries"]
    assert [(e["fan_id"], e["fan_display_name"]) for e in entries] == [(str(named.id), "Ana"), (str(unnamed.id), None)]
