"""Issue 14: the toy timeline. Each model's toy plays one paid buzz after another, in settlement order (Queue ON:
when the model starts the entry), none cut short; a Stop ends a rejected entry's buzz and the next one starts; a
Queue OFF buzz too late for its slot expires instead of arriving late. Asserted on what the fake toy played
(tests/fake_lovense.py `plays`), with real Celery workers. Short items (2-3 s) keep it fast; the 5 x 10 s case of
the issue is marked slow."""
from __future__ import annotations

import time
import uuid

import pytest
from conftest import WorkerProcess, get_purchase, new_session, run_concurrently
from sqlalchemy import select

from models.lovense import LovenseActivation
from models.purchases import Purchase
from models.runtime import Runtime
from worker.celery_app import celery
from worker.tasks import sweep_activations

from test_lovense import buy, paired_model_with

pytestmark = pytest.mark.usefixtures("celery_worker")
COMMAND = "/api/lan/v2/command"


def toy_item(seconds, queue_on=False, offset_ms=0, name="Buzz"):
    return {"name": name, "token_value": 10, "estimated_duration_minutes": 1,
            "lovense_activation": {"enabled": True, "device_type": "vibrator", "intensity": 8,
                                   "duration_ms": seconds * 1000, "timing_offset": offset_ms, "pattern": "steady"}}


def rows(model_id) -> list[LovenseActivation]:
    s = new_session()
    try:
        return list(s.scalars(select(LovenseActivation).where(LovenseActivation.model_id == model_id)
                              .order_by(LovenseActivation.starts_at, LovenseActivation.id)))
    finally:
        s.close()


def row_of(purchase_id) -> LovenseActivation:
    s = new_session()
    try:
        return s.scalar(select(LovenseActivation).where(LovenseActivation.purchase_id == purchase_id))
    finally:
        s.close()


def wait_until(predicate, timeout, what, rows=()):
    """Wait for `predicate`; on a timeout, say `what` and how the activations of `rows` stand."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            states = [(r.status, r.attempts, r.last_error, r.starts_at, r.scheduled_at) for r in map(row_of, rows)]
            raise AssertionError(f"{what}: {states}")
        time.sleep(0.05)


def settlement_order(purchase_ids) -> list:
    s = new_session()
    try:
        ps = [s.get(Purchase, i) for i in purchase_ids]
        return [p.id for p in sorted(ps, key=lambda p: (p.settled_at, p.created_at, str(p.id)))]
    finally:
        s.close()


def five_fans_back_to_back(client, factory, fake_lovense, seconds):
    model, menu = paired_model_with(client, factory, toy_item(seconds))
    fans = [factory.user("fan", tokens=100) for _ in range(5)]
    headers = [factory.headers(fan) for fan in fans]  # signed in first: the purchases themselves are timed

    def buy_with(fan_headers):
        r = client.post("/menu/purchase", json={"menu_id": str(menu.id), "item_id": str(menu.created_items[0].id)},
                        headers=fan_headers)
        assert r.status_code == 200, r.json
        return uuid.UUID(r.json["purchase_id"])

    started = time.monotonic()
    ids = run_concurrently(buy_with, [(h,) for h in headers])
    assert time.monotonic() - started < 1.5  # five purchases within about a second

    # While the first plays: the model's timeline and each fan's place on it.
    wait_until(lambda: len(fake_lovense.plays(model.id)) == 1, 5, "the first buzz did not start")
    timeline = client.get("/lovense/timeline", headers=factory.headers(model)).json
    assert timeline["now_playing"]["duration_seconds"] == seconds and len(timeline["waiting"]) == 4
    slots = [timeline["now_playing"], *timeline["waiting"]]
    assert [s["purchase_id"] for s in slots] == [str(i) for i in settlement_order(ids)]
    assert [s["position"] for s in slots] == [0, 1, 2, 3, 4]
    assert {s["fan_id"] for s in slots} == {str(f.id) for f in fans}
    assert all(a["ends_at"] <= b["starts_at"] for a, b in zip(slots, slots[1:]))
    last = slots[-1]
    fan_of_last = next(f for f in fans if str(f.id) == last["fan_id"])
    toy = client.get(f"/menu/purchase/{last['purchase_id']}/status", headers=factory.headers(fan_of_last)).json["toy"]
    assert (toy["status"], toy["position"]) == ("pending", 4)

    wait_until(lambda: all(row_of(i).status == "sent" for i in ids), 5 * seconds + 10, "not all played")
    time.sleep(seconds)  # let the last one finish on the toy
    plays = fake_lovense.plays(model.id)
    assert len(plays) == 5
    assert [p["cut"] for p in plays] == [False] * 5  # none cut short: each ran its full timeSec
    assert all(p["command"]["timeSec"] == seconds for p in plays)
    gaps = [b["start"] - a["end"] for a, b in zip(plays, plays[1:])]
    assert all(0 <= g < 1.0 for g in gaps), gaps  # back to back
    assert [r.purchase_id for r in rows(model.id)] == settlement_order(ids)  # played in settlement order
    return plays


def test_five_fans_within_a_second_play_back_to_back_in_settlement_order(client, factory, fake_lovense):
    five_fans_back_to_back(client, factory, fake_lovense, seconds=2)


@pytest.mark.slow
def test_five_fans_ten_second_items_play_back_to_back(client, factory, fake_lovense):
    five_fans_back_to_back(client, factory, fake_lovense, seconds=10)


def test_queue_on_reject_mid_buzz_stops_the_toy_and_the_next_slot_starts(client, factory, fake_lovense):
    model, menu = paired_model_with(client, factory, toy_item(30, queue_on=True), queue_mode="ON",
                                    visibility="public")
    off_menu = factory.menu(model, name="Tips", items=[toy_item(2, name="Quick")])
    fan, other = factory.user("fan", tokens=100), factory.user("fan", tokens=100)
    entry = buy(client, factory, fan, menu, menu.created_items[0])
    headers = factory.headers(model)
    assert client.post(f"/queue/{entry}/start", headers=headers).status_code == 200
    wait_until(lambda: row_of(entry).status == "sent", 5, "the entry's buzz did not start")
    tip = buy(client, factory, other, off_menu, off_menu.created_items[0])  # waits behind the 30 s buzz
    timeline = client.get("/lovense/timeline", headers=headers).json
    assert timeline["now_playing"]["purchase_id"] == str(entry)
    assert [s["purchase_id"] for s in timeline["waiting"]] == [str(tip)]
    assert row_of(tip).status == "pending"

    time.sleep(1)  # mid-buzz
    assert client.post(f"/queue/{entry}/reject", json={"reason": "other"}, headers=headers).status_code == 200
    rejected_at = time.time()
    wait_until(lambda: row_of(tip).status == "sent", 5, "the next slot did not start after the Stop")
    stopped = row_of(entry)
    assert (stopped.status, stopped.last_error) == ("stopped", "purchase_refunded")
    received = [r for r in fake_lovense.requests if r["path"] == COMMAND]
    assert [r["json"].get("action") for r in received] == ["Vibrate:8", "Stop", "Vibrate:8"]
    assert received[1]["at"] - rejected_at < 3  # the Stop reached the toy
    assert received[2]["at"] >= received[1]["at"]  # the next buzz after the Stop, long before the 30 s were up
    assert received[2]["at"] - rejected_at < 4
    time.sleep(2.2)
    plays = fake_lovense.plays(model.id)
    assert [(p["cut"], p["command"]["timeSec"]) for p in plays] == [(True, 30), (False, 2)]
    assert client.get("/lovense/timeline", headers=headers).json == {
        "model_id": str(model.id), "now_playing": None, "waiting": [], "ends_at": None}
    assert get_purchase(entry).status == "refunded"


def test_unpairing_stops_the_toy(client, factory, fake_lovense):
    model, menu = paired_model_with(client, factory, toy_item(30))
    purchase_id = buy(client, factory, factory.user("fan", tokens=100), menu, menu.created_items[0])
    wait_until(lambda: row_of(purchase_id).status == "sent", 5, "the buzz did not start")
    assert client.delete("/lovense/link", headers=factory.headers(model)).status_code == 200
    wait_until(lambda: row_of(purchase_id).status == "stopped", 5, "the buzz was not stopped")
    assert row_of(purchase_id).last_error == "unpaired"
    assert [p["cut"] for p in fake_lovense.plays(model.id)] == [True]
    assert fake_lovense.commands(model.id)[-1]["action"] == "Stop"


def test_the_kill_switch_stops_playing_toys(client, factory, fake_lovense, app):
    from conftest import make_settings

    model, menu = paired_model_with(client, factory, toy_item(30))
    purchase_id = buy(client, factory, factory.user("fan", tokens=100), menu, menu.created_items[0])
    wait_until(lambda: row_of(purchase_id).status == "sent", 5, "the buzz did not start")
    # Beat's sweep in a process started with LOVENSE_ENABLED=false.
    sweep_activations(rt=Runtime(make_settings(lovense_enabled=False)))
    wait_until(lambda: row_of(purchase_id).status == "stopped", 5, "the buzz was not stopped")
    assert row_of(purchase_id).last_error == "disabled"
    assert fake_lovense.commands(model.id)[-1]["action"] == "Stop"


@pytest.fixture
def short_freshness_worker(celery_worker):
    """A worker whose Queue OFF buzzes expire 1.5 s after their slot and who retries a 507 for as long as it
    takes; the session's worker stops taking tasks meanwhile."""
    session_node = next(n for reply in celery.control.ping(timeout=1) for n in reply if celery_worker.node in n)
    celery.control.cancel_consumer("celery", destination=[session_node], reply=True)
    # The retries of three offline buzzes would reach the per-model cap of 20 commands a minute, and the next
    # attempt would wait for the next minute: the cap is raised here, it is not what this test is about.
    worker = WorkerProcess(LOVENSE_FRESHNESS_SECONDS="1.5", LOVENSE_MAX_ATTEMPTS="1000", LOVENSE_RATE_LIMIT="100000",
                           LOVENSE_BACKOFF_SECONDS="0.1", LOVENSE_BACKOFF_MAX_SECONDS="0.3").start()
    yield worker
    worker.stop()
    celery.control.add_consumer("celery", destination=[session_node], reply=True)


def test_toy_offline_expires_late_queue_off_buzzes_and_the_timeline_continues(client, factory, fake_lovense,
                                                                               short_freshness_worker):
    model, menu = paired_model_with(client, factory, toy_item(2))
    admin = factory.user("admin")
    fake_lovense.script(COMMAND, default=(200, {"result": False, "code": 507, "message": "app offline"}, 0))
    fans = [factory.user("fan", tokens=100) for _ in range(3)]
    ids = [buy(client, factory, fan, menu, menu.created_items[0]) for fan in fans]
    wait_until(lambda: all(row_of(i).status == "expired" for i in ids), 15, "the offline buzzes did not expire", ids)
    assert {(row_of(i).last_error, row_of(i).attempts > 0) for i in ids} == {("too_late", True)}
    assert fake_lovense.plays(model.id) == []  # none arrived late: the toy played nothing

    fake_lovense.script(COMMAND, default=(200, {"result": True, "code": 200, "message": "Success"}, 0))
    fresh = buy(client, factory, factory.user("fan", tokens=100), menu, menu.created_items[0])
    wait_until(lambda: row_of(fresh).status == "sent", 5, "the timeline did not continue")
    assert (row_of(fresh).sent_at - get_purchase(fresh).settled_at).total_seconds() < 2
    # An operator may still send an expired one: a new slot at the end of the timeline.
    r = client.post(f"/lovense/activations/{ids[0]}/resend", headers=factory.headers(admin))
    assert r.status_code == 202, r.json
    wait_until(lambda: row_of(ids[0]).status == "sent", 8, "the re-sent buzz did not play")
    time.sleep(2.1)
    plays = fake_lovense.plays(model.id)
    assert [p["cut"] for p in plays] == [False, False]
    assert plays[1]["start"] >= plays[0]["end"]
