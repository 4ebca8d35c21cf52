"""Issue 4: Lovense pairing and toy activations, against a fake Lovense API (a real HTTP server on 127.0.0.1)
and a real Celery worker whose LOVENSE_API_URL points at it (short timeouts and backoffs: see conftest)."""
from __future__ import annotations

import secrets
import threading
import time
import uuid
from datetime import timedelta

import pytest
from conftest import LOVENSE_TEST_ENV, RUNTIME, make_settings, assert_books_balance, balance, get_purchase
from fake_lovense import OK, hang, http_status, reply_code
from sqlalchemy import select

from conftest import new_session
from models.lovense import LovenseActivation, LovensePairing, pairing_utoken
from models.types import utcnow
from models.runtime import Runtime
from models.services import activations
from models.services.lovense_api import build_command
from worker.tasks import activate_toy

pytestmark = pytest.mark.usefixtures("celery_worker")

TOKEN = LOVENSE_TEST_ENV["LOVENSE_DEVELOPER_TOKEN"]
SECRET = LOVENSE_TEST_ENV["LOVENSE_CALLBACK_SECRET"]


def lovense(device, intensity, seconds, offset_ms, pattern):
    return {"enabled": True, "device_type": device, "intensity": intensity, "duration_ms": seconds * 1000,
            "timing_offset": offset_ms, "pattern": pattern}


# The seed's Lovense items (the starter menus).
TEASE_LOW = {"name": "Lovense Tease - Low", "token_value": 20, "bonus_loyalty_points": 10,
             "lovense_activation": lovense("vibrator", 5, 10, 500, "steady")}
TEASE_MEDIUM = {"name": "Lovense Tease - Medium", "token_value": 50, "bonus_loyalty_points": 30,
                "lovense_activation": lovense("vibrator", 10, 15, 500, "pulse")}
TEASE_HIGH = {"name": "Lovense Tease - High", "token_value": 100, "bonus_loyalty_points": 75,
              "lovense_activation": lovense("vibrator", 18, 20, 500, "wave")}
CONTROL_5_MIN = {"name": "Control My Lovense 5 minutes", "token_value": 1000, "bonus_loyalty_points": 1100,
                 "lovense_activation": lovense("all", 20, 300, 1000, "custom")}
FINAL = ("sent", "failed", "skipped", "unconfirmed")


def issue_pairing(model_id, minutes=15) -> str:
    """What POST /lovense/qr-code stores and hands Lovense, without asking the fake for a QR code."""
    s = new_session()
    try:
        nonce, expires_at = secrets.token_hex(16), utcnow() + timedelta(minutes=minutes)
        s.add(LovensePairing(nonce=nonce, model_id=model_id, expires_at=expires_at))
        s.commit()
        return pairing_utoken(SECRET, model_id, nonce, expires_at)
    finally:
        s.close()


def pair(client, model):
    r = client.post("/lovense/callback", json={"uid": str(model.id), "utoken": issue_pairing(model.id),
                                               "toys": {"t1": {"name": "lush", "status": 1}}})
    assert r.status_code == 200, r.json


def buy(client, factory, fan, menu, item):
    r = client.post("/menu/purchase", json={"menu_id": str(menu.id), "item_id": str(item.id)},
                    headers=factory.headers(fan))
    assert r.status_code == 200, r.json
    return uuid.UUID(r.json["purchase_id"])


def activation(purchase_id) -> LovenseActivation | None:
    s = new_session()
    try:
        return s.scalar(select(LovenseActivation).where(LovenseActivation.purchase_id == purchase_id))
    finally:
        s.close()


def wait_activation(purchase_id, timeout=15.0) -> LovenseActivation:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        row = activation(purchase_id)
        if row is not None and row.status in FINAL:
            return row
        time.sleep(0.05)
    raise AssertionError(f"activation of {purchase_id} not final: {activation(purchase_id)}")


def slot_due_now(purchase_id) -> None:
    """Move a purchase's slot (a minute away, so the worker leaves it alone) to now, for a run in this process."""
    s = new_session()
    try:
        row = s.scalar(select(LovenseActivation).where(LovenseActivation.purchase_id == purchase_id))
        now = utcnow()
        row.ends_at, row.starts_at = now + (row.ends_at - row.starts_at), now
        s.commit()
    finally:
        s.close()


def paired_model_with(client, factory, *items, **menu_fields):
    model = factory.user("model")
    pair(client, model)
    menu = factory.menu(model, items=list(items), **menu_fields)
    return model, menu


def test_exact_commands_for_the_three_seed_tease_items(client, factory, fake_lovense):
    fan = factory.user("fan", tokens=1000)
    expected = [
        {"command": "Function", "action": "Vibrate:5", "timeSec": 10, "apiVer": 1},
        {"command": "Preset", "name": "pulse", "timeSec": 15, "apiVer": 1},
        {"command": "Preset", "name": "wave", "timeSec": 20, "apiVer": 1},
    ]
    # One model each: one model's toy would play them one after the other (test_timeline.py).
    for item, body in zip((TEASE_LOW, TEASE_MEDIUM, TEASE_HIGH), expected):
        model, menu = paired_model_with(client, factory, item)
        fake_lovense.reset()
        purchase_id = buy(client, factory, fan, menu, menu.created_items[0])
        row = wait_activation(purchase_id)
        assert (row.status, row.attempts, row.last_error) == ("sent", 1, None)
        assert fake_lovense.commands() == [{"token": TOKEN, "uid": str(model.id), **body}]
        # Sent timing_offset (500 ms) after settlement, not before.
        settled_at = get_purchase(purchase_id).settled_at.timestamp()
        sent_at = fake_lovense.requests[0]["at"]
        assert 0.45 <= sent_at - settled_at < 5, sent_at - settled_at
        assert get_purchase(purchase_id).status == "completed"
    assert balance(fan.id, "wallet") == 1000 - 20 - 50 - 100
    assert_books_balance()


def test_queue_on_item_activates_when_the_model_starts_it(client, factory, fake_lovense):
    fan = factory.user("fan", tokens=1000)
    model, menu = paired_model_with(client, factory, CONTROL_5_MIN, queue_mode="ON", visibility="public")
    purchase_id = buy(client, factory, fan, menu, menu.created_items[0])
    assert get_purchase(purchase_id).status == "queued"
    time.sleep(0.5)
    assert fake_lovense.commands() == [] and activation(purchase_id) is None  # nothing until the model starts

    r = client.post(f"/queue/{purchase_id}/start", headers=factory.headers(model))
    assert r.status_code == 200, r.json
    started_at = time.time()

    row = wait_activation(purchase_id)
    assert 0.95 <= fake_lovense.requests[0]["at"] - started_at < 6  # timing_offset 1 s after the start
    assert row.status == "sent"
    assert fake_lovense.commands() == [
        {"token": TOKEN, "uid": str(model.id), "command": "Function", "action": "All:20",
         "timeSec": 300, "apiVer": 1}
    ]
    assert get_purchase(purchase_id).status == "in_progress"
    assert_books_balance()


def test_entry_refunded_before_its_lost_activation_ran_is_skipped_not_left_pending(client, factory, fake_lovense):
    # Found by the bank test: the model starts an entry, the activation task claims its row and dies with its
    # worker; the model rejects the entry; when the sweep asks again, the row must be finished, not left pending.
    fan = factory.user("fan", tokens=1000)
    model, menu = paired_model_with(client, factory, CONTROL_5_MIN, queue_mode="ON", visibility="public")
    purchase_id = buy(client, factory, fan, menu, menu.created_items[0])
    s = new_session()
    try:
        s.add(LovenseActivation(purchase_id=purchase_id, model_id=model.id))  # what the dead task left behind
        s.commit()
    finally:
        s.close()
    assert client.post(f"/queue/{purchase_id}/reject", json={"reason": "other"},
                       headers=factory.headers(model)).status_code == 200
    assert activations.run(RUNTIME, purchase_id).status == "skipped"
    row = activation(purchase_id)
    assert (row.status, row.last_error, row.attempts) == ("skipped", "purchase_refunded", 0)
    assert fake_lovense.commands(uid=model.id) == []
    assert_books_balance()


def test_entry_refunded_after_start_before_its_activation_ran_has_a_skipped_record(client, factory, fake_lovense):
    # Found by the bank test: started, then rejected before the activation task ran (its 1 s offset).
    fan = factory.user("fan", tokens=1000)
    model, menu = paired_model_with(client, factory, CONTROL_5_MIN, queue_mode="ON", visibility="public")
    purchase_id = buy(client, factory, fan, menu, menu.created_items[0])
    headers = factory.headers(model)
    assert client.post(f"/queue/{purchase_id}/start", headers=headers).status_code == 200
    assert client.post(f"/queue/{purchase_id}/reject", json={"reason": "other"}, headers=headers).status_code == 200
    row = wait_activation(purchase_id)
    assert (row.status, row.last_error) == ("skipped", "purchase_refunded")
    assert fake_lovense.commands(uid=model.id) == []


def test_503_then_507_then_200_is_one_activation_after_retries(client, factory, fake_lovense):
    fan = factory.user("fan", tokens=100)
    model, menu = paired_model_with(client, factory, TEASE_LOW)
    fake_lovense.script("/api/lan/v2/command", http_status(503), reply_code(507))
    purchase_id = buy(client, factory, fan, menu, menu.created_items[0])
    row = wait_activation(purchase_id)
    assert (row.status, row.attempts, row.last_error) == ("sent", 3, None)
    assert row.sent_at is not None
    assert len(fake_lovense.commands()) == 3
    assert len({str(c) for c in fake_lovense.commands()}) == 1  # the same command each time
    assert get_purchase(purchase_id).status == "completed"
    assert balance(model.id, "earnings") == 20
    assert_books_balance()


@pytest.mark.parametrize("reply,error", [
    (reply_code(501), "lovense_501"),
    (reply_code(503), "lovense_503"),
    (reply_code(400), "lovense_400"),
    (http_status(404), "http_404"),
])
def test_permanent_error_fails_after_one_try_and_an_admin_can_resend(client, factory, fake_lovense, reply, error):
    fan, admin = factory.user("fan", tokens=100), factory.user("admin")
    model, menu = paired_model_with(client, factory, TEASE_LOW)
    fake_lovense.script("/api/lan/v2/command", default=reply)
    purchase_id = buy(client, factory, fan, menu, menu.created_items[0])
    row = wait_activation(purchase_id)
    assert (row.status, row.attempts, row.last_error) == ("failed", 1, error)
    time.sleep(0.5)  # longer than any backoff: no retry comes
    assert len(fake_lovense.commands()) == 1
    assert get_purchase(purchase_id).status == "completed"
    assert_books_balance()

    admin_headers = factory.headers(admin)
    listed = client.get("/lovense/activations", headers=admin_headers)
    assert listed.status_code == 200
    assert [a["purchase_id"] for a in listed.json["activations"]] == [str(purchase_id)]
    assert listed.json["activations"][0]["last_error"] == error
    assert client.get("/lovense/activations", headers=factory.headers(fan)).status_code == 403

    fake_lovense.script("/api/lan/v2/command", default=OK)
    r = client.post(f"/lovense/activations/{purchase_id}/resend", headers=admin_headers)
    assert r.status_code == 202, r.json
    row = wait_activation(purchase_id)
    assert (row.status, row.attempts) == ("sent", 1)
    assert len(fake_lovense.commands()) == 2
    # Only failed or skipped activations are re-sent.
    assert client.post(f"/lovense/activations/{purchase_id}/resend", headers=admin_headers).status_code == 409
    assert client.post(f"/lovense/activations/{uuid.uuid4()}/resend", headers=admin_headers).status_code == 404
    assert client.get("/lovense/activations?status=failed", headers=admin_headers).json["total"] == 0


def test_no_answer_is_unconfirmed_never_sent_again_and_an_admin_can_resend(client, factory, fake_lovense):
    # The fake takes the command (the toy plays it) and answers after 3 s; the read timeout is 0.5 s. Sending it again
    # would play it twice, so it is recorded `unconfirmed` and left alone.
    fan, admin = factory.user("fan", tokens=100), factory.user("admin")
    item = {**TEASE_LOW, "lovense_activation": {**TEASE_LOW["lovense_activation"], "duration_ms": 3000,
                                                "timing_offset": 0}}
    model, menu = paired_model_with(client, factory, item)
    fake_lovense.script("/api/lan/v2/command", hang(3))
    purchase_id = buy(client, factory, fan, menu, menu.created_items[0])
    row = wait_activation(purchase_id)
    assert (row.status, row.attempts, row.last_error, row.sending_since) == ("unconfirmed", 1, "read_timeout", None)
    # Its slot is kept as if it plays (from the moment the outcome was known): the fan sees it playing.
    assert row.starts_at.timestamp() >= fake_lovense.requests[0]["at"]
    assert (row.ends_at - row.starts_at).total_seconds() == 3
    toy = client.get(f"/menu/purchase/{purchase_id}/status", headers=factory.headers(fan)).json["toy"]
    assert (toy["status"], toy["position"]) == ("playing", 0)
    time.sleep(1.0)  # longer than any backoff: no retry comes
    assert len(fake_lovense.commands(uid=model.id)) == 1
    assert len(fake_lovense.plays(model.id)) == 1  # the toy played it once
    assert get_purchase(purchase_id).status == "completed"
    assert balance(fan.id, "wallet") == 80
    assert_books_balance()

    # An operator who knows it did not play sends it again.
    admin_headers = factory.headers(admin)
    listed = client.get("/lovense/activations?status=unconfirmed", headers=admin_headers).json
    assert [(a["purchase_id"], a["last_error"]) for a in listed["activations"]] == [(str(purchase_id), "read_timeout")]
    r = client.post(f"/lovense/activations/{purchase_id}/resend", headers=admin_headers)
    assert r.status_code == 202, r.json
    row = wait_activation(purchase_id)
    assert (row.status, row.attempts, row.last_error) == ("sent", 1, None)
    assert len(fake_lovense.plays(model.id)) == 2


def test_unreachable_lovense_is_a_retryable_connection_error():
    from processes import free_port

    from models.services.lovense_api import LovenseClient

    dead_port = free_port()  # a port nobody listens on
    lovense_client = LovenseClient(RUNTIME.settings)
    lovense_client.base_url = f"http://127.0.0.1:{dead_port}"
    outcome = lovense_client.send("uid-1", build_command(TEASE_LOW["lovense_activation"]))
    assert (outcome.ok, outcome.error, outcome.retryable, outcome.unknown) == (False, "connection_error", True, False)


def test_a_connection_dropped_after_the_request_went_out_is_unknown():
    import socket

    from models.services.lovense_api import LovenseClient

    server = socket.create_server(("127.0.0.1", 0))  # reads the request, then closes without an answer

    def drop():
        conn, _ = server.accept()
        conn.recv(65536)
        conn.close()

    threading.Thread(target=drop, daemon=True).start()
    lovense_client = LovenseClient(RUNTIME.settings)
    lovense_client.base_url = f"http://127.0.0.1:{server.getsockname()[1]}"
    try:
        outcome = lovense_client.send("uid-1", build_command(TEASE_LOW["lovense_activation"]))
    finally:
        server.close()
    assert (outcome.ok, outcome.error, outcome.retryable, outcome.unknown) == (False, "connection_lost", False, True)


def test_task_delivered_several_times_sends_one_command(client, factory, fake_lovense):
    fan = factory.user("fan", tokens=100)
    item = {**TEASE_LOW, "lovense_activation": {**TEASE_LOW["lovense_activation"], "timing_offset": 0}}
    model, menu = paired_model_with(client, factory, item)
    fake_lovense.script("/api/lan/v2/command", default=hang(0.3))  # slow enough for the deliveries to overlap
    purchase_id = buy(client, factory, fan, menu, menu.created_items[0])  # after_settlement enqueues one
    # ... and the same task arrives three more times: twice to the worker, once run here.
    activate_toy.apply_async(args=[str(purchase_id)])
    activate_toy.apply_async(args=[str(purchase_id)])
    threading.Thread(target=activations.run, args=(RUNTIME, purchase_id)).start()
    row = wait_activation(purchase_id)
    time.sleep(1.0)
    assert row.status == "sent"
    assert len(fake_lovense.commands(uid=model.id)) == 1
    assert activation(purchase_id).attempts == 1
    assert get_purchase(purchase_id).status == "completed"


def test_unpaired_model_is_skipped_and_nothing_is_sent(client, factory, fake_lovense):
    fan = factory.user("fan", tokens=100)
    model = factory.user("model")
    menu = factory.menu(model, items=[TEASE_LOW])
    purchase_id = buy(client, factory, fan, menu, menu.created_items[0])
    row = wait_activation(purchase_id)
    assert (row.status, row.last_error, row.attempts) == ("skipped", "unpaired", 0)
    assert fake_lovense.commands() == []
    assert get_purchase(purchase_id).status == "completed"


def test_item_without_activation_creates_no_record(client, factory, fake_lovense):
    fan = factory.user("fan", tokens=100)
    model, menu = paired_model_with(client, factory, {"name": "Kiss", "token_value": 10},
                                    {**TEASE_LOW, "lovense_activation": {**TEASE_LOW["lovense_activation"],
                                                                         "enabled": False}})
    ids = [buy(client, factory, fan, menu, item) for item in menu.created_items]
    time.sleep(1.0)
    assert [activation(i) for i in ids] == [None, None]
    assert fake_lovense.commands() == []


def test_kill_switch_skips(factory, fake_lovense, session, client):
    fan = factory.user("fan", tokens=100)
    item = {**TEASE_LOW, "lovense_activation": {**TEASE_LOW["lovense_activation"], "timing_offset": 60_000}}
    model, menu = paired_model_with(client, factory, item)
    purchase_id = buy(client, factory, fan, menu, menu.created_items[0])  # the worker's run is a minute away
    switched_off = Runtime(make_settings(lovense_enabled=False))  # this process only
    assert activations.run(switched_off, purchase_id).status == "skipped"
    row = activation(purchase_id)
    assert (row.status, row.last_error) == ("skipped", "disabled")
    assert fake_lovense.commands() == []


def test_pairing_round_trip(client, factory, fake_lovense):
    model, other = factory.user("model"), factory.user("model")
    headers = factory.headers(model)
    assert client.get("/lovense/link", headers=headers).json == {"linked": False, "uid": None, "toys": None,
                                                                 "linked_at": None}
    r = client.post("/lovense/qr-code", headers=headers)
    assert r.status_code == 200, r.json
    assert r.json == {"qr_url": "https://test2.lovense.com/UploadFiles/qr/20220106/xxx.jpg", "code": "ABCD1234"}
    [qr_request] = [q for q in fake_lovense.requests if q["path"] == "/api/lan/getQrCode"]
    sent = qr_request["json"]
    assert {k: sent[k] for k in ("token", "uid", "uname", "v")} == {
        "token": TOKEN, "uid": str(model.id), "uname": str(model.id), "v": 2}
    utoken = sent["utoken"]

    # Lovense calls back with the uid and utoken we gave it (and more we ignore).
    toys = {"a0b1c2": {"id": "a0b1c2", "name": "lush", "nickName": "", "status": 1}}
    callback = {"uid": str(model.id), "utoken": utoken, "toys": toys, "appVersion": "6.0.0", "platform": "ios"}
    assert client.post("/lovense/callback", json=callback).status_code == 200
    link = client.get("/lovense/link", headers=headers).json
    assert (link["linked"], link["uid"], link["toys"]) == (True, str(model.id), toys)

    # Forged: a made-up utoken, another model's utoken, a uid that is no model.
    for forged in ({**callback, "uid": str(other.id), "utoken": "0" * 64},
                   {**callback, "uid": str(other.id)},
                   {**callback, "uid": "not-a-model", "utoken": utoken}):
        r = client.post("/lovense/callback", json=forged)
        assert r.status_code == 403 and r.json["error"]["code"] == "invalid_utoken"
        assert utoken not in r.get_data(as_text=True)
    assert client.get("/lovense/link", headers=factory.headers(other)).json["linked"] is False
    bad = client.post("/lovense/callback", json={"uid": str(model.id)})
    assert bad.status_code == 422

    # Only models pair; then the model unlinks.
    assert client.post("/lovense/qr-code", headers=factory.headers(factory.user("fan"))).status_code == 403
    r = client.delete("/lovense/link", headers=headers)
    assert r.status_code == 200 and r.json["linked"] is False
    assert client.get("/lovense/link", headers=headers).json["linked"] is False

    # The captured callback, replayed after the unlink, links nothing.
    r = client.post("/lovense/callback", json=callback)
    assert r.status_code == 403 and r.json["error"]["code"] == "invalid_utoken"
    assert client.get("/lovense/link", headers=headers).json["linked"] is False


def test_a_pairing_is_used_once_expires_and_stores_the_uid_in_one_form(client, factory):
    model = factory.user("model")
    headers = factory.headers(model)
    first = issue_pairing(model.id)
    # Lovense may write the uid in capitals or without dashes: it is stored the way we sent it.
    toys = {"t1": {"name": "lush", "status": 1}}
    r = client.post("/lovense/callback", json={"uid": model.id.hex.upper(), "utoken": first, "toys": toys})
    assert r.status_code == 200, r.json
    assert client.get("/lovense/link", headers=headers).json["uid"] == str(model.id)
    # Lovense's later callback for the same pairing refreshes the toys of that link.
    off = {"t1": {"name": "lush", "status": 0}}
    assert client.post("/lovense/callback", json={"uid": str(model.id), "utoken": first, "toys": off}).status_code == 200
    assert client.get("/lovense/link", headers=headers).json["toys"] == off
    # A newer pairing takes over: the first utoken can no longer touch the link.
    assert client.post("/lovense/callback", json={"uid": str(model.id), "utoken": issue_pairing(model.id),
                                                  "toys": toys}).status_code == 200
    r = client.post("/lovense/callback", json={"uid": str(model.id), "utoken": first, "toys": off})
    assert r.status_code == 403 and r.json["error"]["code"] == "invalid_utoken"
    assert client.get("/lovense/link", headers=headers).json["toys"] == toys
    # An expired QR code links nothing; nor does a utoken whose expiry was edited (the signature covers it).
    other = factory.user("model")
    r = client.post("/lovense/callback", json={"uid": str(other.id), "utoken": issue_pairing(other.id, minutes=-1)})
    assert r.status_code == 403 and r.json["error"]["code"] == "pairing_expired"
    nonce, expires, signature = issue_pairing(other.id, minutes=-1).split(".")
    later = f"{nonce}.{int(expires) + 3600}.{signature}"
    r = client.post("/lovense/callback", json={"uid": str(other.id), "utoken": later})
    assert r.status_code == 403 and r.json["error"]["code"] == "invalid_utoken"
    assert client.get("/lovense/link", headers=factory.headers(other)).json["linked"] is False


def test_qr_code_when_lovense_refuses_is_502(client, factory, fake_lovense):
    fake_lovense.script("/api/lan/getQrCode", (200, {"result": False, "code": 501, "message": "bad token"}, 0))
    r = client.post("/lovense/qr-code", headers=factory.headers(factory.user("model")))
    assert r.status_code == 502 and r.json["error"]["code"] == "lovense_unavailable"
    assert TOKEN not in r.get_data(as_text=True)


# Redis rules (real Redis): one command in flight per model, and the per-model rate cap.

def test_model_lock_admits_one_holder(redis_client):
    model_id = uuid.uuid4()
    first = activations.acquire_model_lock(redis_client, model_id, 5)
    assert first is not None
    assert activations.acquire_model_lock(redis_client, model_id, 5) is None
    activations.release_model_lock(redis_client, model_id, "someone-else")
    assert activations.acquire_model_lock(redis_client, model_id, 5) is None
    activations.release_model_lock(redis_client, model_id, first)
    assert activations.acquire_model_lock(redis_client, model_id, 5) is not None
    assert activations.acquire_model_lock(redis_client, uuid.uuid4(), 5) is not None  # other models are free


def test_rate_cap_per_model_and_window(redis_client):
    model_id = uuid.uuid4()
    now = 1_000_000.0  # window [999960, 1000020) of 60 s
    assert [activations.take_rate_slot(redis_client, model_id, 2, 60, now) for _ in range(2)] == [0, 0]
    assert activations.take_rate_slot(redis_client, model_id, 2, 60, now) == pytest.approx(20.0)
    assert activations.take_rate_slot(redis_client, uuid.uuid4(), 2, 60, now) == 0
    assert activations.take_rate_slot(redis_client, model_id, 2, 60, now + 20) == 0  # the next window


def test_build_command_ranges_and_backoff():
    assert build_command(lovense("pump", 1, 1, 0, "steady"))["action"] == "Pump:1"
    assert build_command(lovense("pump", 20, 1, 0, "steady"))["action"] == "Pump:3"
    assert build_command(lovense("all", 99, 1, 0, "steady"))["action"] == "All:20"
    assert build_command(lovense("vibrator", -4, 1, 0, "steady"))["action"] == "Vibrate:0"
    assert build_command({**lovense("vibrator", 5, 1, 0, "steady"), "duration_ms": 1500})["timeSec"] == 2
    with pytest.raises(ValueError):
        build_command(lovense("laser", 5, 1, 0, "steady"))
    settings = RUNTIME.settings
    delays = [activations.backoff(n, settings) for n in (1, 2, 3, 10)]
    base, cap = settings.lovense_backoff_seconds, settings.lovense_backoff_max_seconds
    assert base / 2 <= delays[0] <= base and base <= delays[1] <= 2 * base
    assert cap / 2 <= delays[3] <= cap


def test_no_developer_token_or_utoken_in_logs(client, factory, fake_lovense, caplog):
    import logging

    caplog.set_level(logging.DEBUG)
    fan, model = factory.user("fan", tokens=100), factory.user("model")
    assert client.post("/lovense/qr-code", headers=factory.headers(model)).status_code == 200
    utoken = fake_lovense.requests[0]["json"]["utoken"]
    assert client.post("/lovense/callback", json={"uid": str(model.id), "utoken": utoken}).status_code == 200
    assert client.post("/lovense/callback", json={"uid": str(model.id), "utoken": utoken[::-1]}).status_code == 403
    item = {**TEASE_LOW, "lovense_activation": {**TEASE_LOW["lovense_activation"], "timing_offset": 60_000}}
    menu = factory.menu(model, items=[item])
    purchase_id = buy(client, factory, fan, menu, menu.created_items[0])  # the worker's run is a minute away
    fake_lovense.script("/api/lan/v2/command", reply_code(501))
    slot_due_now(purchase_id)
    assert activations.run(RUNTIME, purchase_id).status == "failed"  # here, so this process's logs are captured
    assert len(fake_lovense.commands()) == 1
    assert caplog.records
    assert TOKEN not in caplog.text and utoken not in caplog.text


def test_menus_say_before_buying_whether_the_toy_can_buzz(client, factory, database):
    from web import create_app

    fan, model = factory.user("fan"), factory.user("model")
    menu = factory.menu(model, items=[TEASE_LOW, {"name": "Kiss", "token_value": 10}])

    def statuses(c, user):
        items = c.get(f"/menu/{menu.id}", headers=factory.headers(user)).json["menu_items"]
        return [i["lovense_status"] for i in items]

    assert statuses(client, fan) == statuses(client, model) == ["unpaired", None]
    pair(client, model)
    assert statuses(client, fan) == ["ready", None]
    switched_off = create_app(make_settings(lovense_enabled=False)).test_client()
    assert statuses(switched_off, fan) == ["disabled", None]
    unconfigured = create_app(make_settings(lovense_developer_token="")).test_client()
    assert statuses(unconfigured, model) == ["not_configured", None]


def test_the_start_banner_warns_when_sold_toys_cannot_buzz(factory, database):
    from web import create_app

    model = factory.user("model")
    factory.menu(model, items=[TEASE_LOW, TEASE_MEDIUM, {"name": "Kiss", "token_value": 10}])
    factory.menu(model, name="Off", is_active=False, items=[TEASE_HIGH])
    unconfigured = create_app(make_settings(lovense_developer_token="")).test_cli_runner().invoke(args=["urls"])
    assert "warning: 2 active items have toy activations" in unconfigured.output, unconfigured.output
    configured = create_app(make_settings()).test_cli_runner().invoke(args=["urls"])
    assert configured.exit_code == 0 and "warning" not in configured.output
