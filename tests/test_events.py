"""Events out: the outbox holds one event per committed state change, and the stream process (gunicorn + gevent,
the Procfile's `stream` line) delivers them live, filtered by viewer, resumable with Last-Event-ID."""
from __future__ import annotations

import sys
import time
import uuid
from datetime import timedelta

import pytest
from conftest import RUNTIME, new_session, subprocess_env
from processes import ProcessGroup, free_port, wait_http
from sqlalchemy import func, select
from sse_client import EventStream

from models.outbox import OutboxEvent, emit, sequence
from models.types import utcnow
from test_accounts import pending_purchase
from worker.tasks import relay, settle, sweep_deadlines

pytestmark = pytest.mark.usefixtures("celery_worker")

ITEMS = [{"name": "Kiss", "token_value": 10}, {"name": "Photo", "token_value": 200, "estimated_duration_minutes": 10}]


@pytest.fixture(scope="module")
def stream_server(database):
    port = free_port()
    server = ProcessGroup("stream", [sys.executable, "-m", "gunicorn", "-c", "python:web.stream_conf",
                                     "web.wsgi:app"],
                          subprocess_env(STREAM_PORT=port, STREAM_HEARTBEAT_SECONDS=1, STREAMS_PER_USER=3)).start()
    wait_http(f"http://127.0.0.1:{port}/healthz", process=server)
    yield f"http://127.0.0.1:{port}/events/stream"
    server.stop()


def open_stream(client, factory, user, url, **kwargs) -> EventStream:
    r = client.post("/events/ticket", headers=factory.headers(user))
    assert r.status_code == 201, r.json
    stream = EventStream(f"{url}?ticket={r.json['ticket']}", **kwargs)
    assert stream.status_code == 200
    stream.wait_for(lambda _m: stream.comments > 0, what="connected")
    return stream


def buy(client, factory, fan, menu, item):
    r = client.post("/menu/purchase", json={"menu_id": str(menu.id), "item_id": str(item.id)},
                    headers=factory.headers(fan))
    assert r.status_code == 200, r.json
    return r.json["purchase_id"]


def events_of(purchase_id) -> list[str]:
    s = new_session()
    try:
        return list(s.scalars(select(OutboxEvent.type).where(OutboxEvent.purchase_id == uuid.UUID(purchase_id))
                              .order_by(OutboxEvent.id)))
    finally:
        s.close()


def wait_relayed(timeout=10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        s = new_session()
        try:
            if s.scalar(select(OutboxEvent.id).where(OutboxEvent.seq.is_(None)).limit(1)) is None:
                return
        finally:
            s.close()
        time.sleep(0.05)
    raise AssertionError("events were not relayed")


def test_every_purchase_path_writes_exactly_its_events(client, factory):
    model, admin = factory.user("model"), factory.user("admin")
    rich, poor = factory.user("fan", tokens=10_000), factory.user("fan", tokens=5)
    mh, fh = factory.headers(model), factory.headers(rich)
    off = factory.menu(model, items=ITEMS)
    on = factory.menu(model, items=ITEMS, queue_mode="ON")
    completed = buy(client, factory, rich, off, off.created_items[0])
    failed = str(pending_purchase(poor, model, off, off.created_items[1]))  # the balance is checked again
    settle([failed])
    performed, rejected, cancelled, refunded, overdue, rejected_queued = (
        buy(client, factory, rich, on, on.created_items[0]) for _ in range(6))
    for pid in (performed, rejected):
        assert client.post(f"/queue/{pid}/start", headers=mh).status_code == 200
        action = (client.post(f"/queue/{pid}/complete", headers=mh) if pid == performed else
                  client.post(f"/queue/{pid}/reject", headers=mh, json={"reason": "unavailable"}))
        assert action.status_code == 200, action.json
    assert client.post(f"/queue/{rejected_queued}/reject", headers=mh, json={"reason": "unavailable"}).status_code == 200
    assert client.post(f"/queue/{cancelled}/cancel", headers=fh).status_code == 200
    r = client.post(f"/admin/purchases/{refunded}/refund", headers={**factory.headers(admin), "Idempotency-Key": "r1"},
                    json={"reason": "goodwill"})
    assert r.status_code == 200, r.json
    sweep_deadlines(now=utcnow() + timedelta(days=30))

    assert events_of(completed) == ["purchase.accepted", "purchase.completed"]
    assert events_of(failed) == ["purchase.accepted", "purchase.failed"]
    queued = ["purchase.accepted", "purchase.queued"]
    assert events_of(performed) == queued + ["queue.entry.started", "queue.entry.completed"]
    assert events_of(rejected) == queued + ["queue.entry.started", "queue.entry.rejected"]
    assert events_of(rejected_queued) == queued + ["queue.entry.rejected"]
    assert events_of(cancelled) == queued + ["queue.entry.cancelled"]
    assert events_of(refunded) == queued + ["queue.entry.refunded"]
    assert events_of(overdue) == queued + ["queue.entry.refunded"]
    s = new_session()
    try:
        changes = s.scalar(select(OutboxEvent).where(OutboxEvent.purchase_id == uuid.UUID(overdue),
                                                     OutboxEvent.type == "queue.entry.refunded"))
        assert (changes.payload["by"], changes.payload["reason"], changes.payload["token_value"]) == \
            ("deadline", "deadline_passed", 10)
        # Every change of the model's queue: 6 settled into it in one or more batches, then 2 starts, 1
        # completion, 5 refunds.
        queue_changes = s.scalar(select(OutboxEvent.id).where(OutboxEvent.type == "queue.changed").limit(1))
        assert queue_changes is not None
    finally:
        s.close()
    wait_relayed()
    s = new_session()
    try:
        seqs = list(s.scalars(select(OutboxEvent.seq).order_by(OutboxEvent.seq)))
        assert seqs == list(range(1, len(seqs) + 1))  # numbered without gaps
    finally:
        s.close()


def test_a_refused_intake_or_a_rolled_back_change_writes_no_event(client, factory):
    model, fan = factory.user("model"), factory.user("fan", tokens=100)
    menu = factory.menu(model, items=ITEMS)
    r = client.post("/menu/purchase", json={"menu_id": str(menu.id), "item_id": str(uuid.uuid4())},
                    headers=factory.headers(fan))
    assert r.status_code == 404
    s = new_session()
    try:
        before = s.scalar(select(func.count()).select_from(OutboxEvent))  # the model's show start
        emit(s, "menu.changed", model_id=model.id, change="test")
        s.rollback()
        assert s.scalar(select(func.count()).select_from(OutboxEvent)) == before == 1
    finally:
        s.close()


def test_a_fan_sees_their_purchase_settle_and_their_queue_place_move(client, factory, stream_server):
    model, fan = factory.user("model"), factory.user("fan", tokens=10_000)
    others = [factory.user("fan", tokens=10_000) for _ in range(2)]
    mh = factory.headers(model)
    on = factory.menu(model, items=ITEMS, queue_mode="ON", queue_order="fifo")
    off = factory.menu(model, items=ITEMS)
    ahead = [buy(client, factory, other, on, on.created_items[1]) for other in others]
    stream = open_stream(client, factory, fan, stream_server)
    try:
        tip = buy(client, factory, fan, off, off.created_items[0])
        stream.wait_for(lambda m: [x["event"] for x in m if x["data"].get("purchase_id") == tip] ==
                        ["purchase.accepted", "purchase.completed"], what="the tip settled")
        mine = buy(client, factory, fan, on, on.created_items[1])
        stream.wait_for(lambda m: any(x["event"] == "queue.position" and x["data"]["data"]["queue_position"] == 3
                                      for x in m), what="position 3")
        for pid in ahead:
            assert client.post(f"/queue/{pid}/start", headers=mh).status_code == 200
            assert client.post(f"/queue/{pid}/complete", headers=mh).status_code == 200
        stream.wait_for(lambda m: any(x["event"] == "queue.position" and x["data"]["data"]["queue_position"] == 1
                                      for x in m), what="position 1")
        places = [x["data"]["data"] for x in stream.of("queue.position") if x["data"]["purchase_id"] == mine]
        moves = [p["queue_position"] for i, p in enumerate(places) if i == 0 or places[i - 1] != p]
        assert moves == [3, 2, 1]
        assert places[-1]["estimated_wait_minutes"] == 0
        # Only the fan's own events: nothing of the other fans' purchases, no queue internals.
        seen = {x["data"]["purchase_id"] for x in stream.of() if x["event"] != "queue.position"}
        assert seen == {tip, mine}
        assert not stream.of("queue.changed")
        ids = [x["id"] for x in stream.of() if x["id"] is not None]
        assert ids == sorted(ids)
    finally:
        stream.close()


def test_a_reconnect_with_last_event_id_misses_nothing(client, factory, stream_server):
    model, fan = factory.user("model"), factory.user("fan", tokens=10_000)
    off = factory.menu(model, items=ITEMS)
    stream = open_stream(client, factory, model, stream_server)
    buy(client, factory, fan, off, off.created_items[0])
    got = stream.wait_for(lambda m: len([x for x in m if x["event"] == "purchase.completed"]) == 1)
    last = got[-1]["id"]
    stream.close()
    missed = [buy(client, factory, fan, off, off.created_items[0]) for _ in range(3)]
    wait_relayed()
    again = open_stream(client, factory, model, stream_server, last_event_id=last)
    try:
        again.wait_for(lambda m: len([x for x in m if x["event"] == "purchase.completed"]) == 3, what="replay")
        s = new_session()
        try:
            expected = list(s.scalars(select(OutboxEvent.seq).where(OutboxEvent.model_id == model.id,
                                                                     OutboxEvent.seq > last)
                                      .order_by(OutboxEvent.seq)))
        finally:
            s.close()
        assert [x["id"] for x in again.of()] == expected
        assert {x["data"]["purchase_id"] for x in again.of() if x["data"]["purchase_id"]} == set(missed)
    finally:
        again.close()


def test_an_event_whose_publish_was_lost_still_reaches_the_stream(client, factory, stream_server):
    model = factory.user("model")
    stream = open_stream(client, factory, model, stream_server)
    try:
        with RUNTIME.session_scope() as s:
            emit(s, "menu.changed", model_id=model.id, change="menu.updated")
            s.info.pop("outbox_written")  # no relay wake-up: this test plays the relay, minus its publish
            s.commit()
        with RUNTIME.session_scope() as s:
            numbered = sequence(s)
            s.commit()
        assert [e.type for e in numbered] == ["menu.changed"]
        stream.wait_for(lambda m: any(x["event"] == "menu.changed" for x in m), what="the unpublished event")
        assert relay(RUNTIME) == 0
    finally:
        stream.close()


def test_tickets_are_single_use_and_viewers_see_only_their_own(client, factory, stream_server):
    import requests

    model, other_model, admin, fan = (factory.user("model"), factory.user("model"), factory.user("admin"),
                                      factory.user("fan", tokens=100))
    r = client.post("/events/ticket", headers=factory.headers(fan))
    url = f"{stream_server}?ticket={r.json['ticket']}"
    first = EventStream(url)
    assert first.status_code == 200
    first.close()
    reused = requests.get(url, timeout=5)
    assert (reused.status_code, reused.json()["error"]["code"]) == (401, "invalid_ticket")
    assert requests.get(stream_server, timeout=5).status_code == 401
    assert client.post("/events/ticket").status_code == 401

    menu = factory.menu(model, items=ITEMS)
    other_menu = factory.menu(other_model, items=ITEMS)
    mine = open_stream(client, factory, model, stream_server)
    filtered = EventStream(f"{stream_server}?model_id={other_model.id}", headers=factory.headers(admin))
    try:
        own = buy(client, factory, fan, menu, menu.created_items[0])
        theirs = buy(client, factory, fan, other_menu, other_menu.created_items[0])
        mine.wait_for(lambda m: any(x["event"] == "purchase.completed" for x in m), what="model stream")
        filtered.wait_for(lambda m: any(x["event"] == "purchase.completed" for x in m), what="admin filtered")
        time.sleep(0.5)
        assert {x["data"]["purchase_id"] for x in mine.of() if x["data"]["purchase_id"]} == {own}
        assert {x["data"]["purchase_id"] for x in filtered.of() if x["data"]["purchase_id"]} == {theirs}
    finally:
        mine.close()
        filtered.close()


def test_another_deployment_on_the_same_redis_server_reaches_no_stream(client, factory, stream_server):
    """Issue 28, item 9: Redis pub/sub ignores database numbers. Another deployment's event numbered "last + 1"
    was taken as ours and our own event with that number skipped on every live stream."""
    import json

    from models import outbox

    model = factory.user("model")
    stream = open_stream(client, factory, model, stream_server)
    try:
        other = outbox.channel("postgresql+psycopg://postgres@127.0.0.1:5432/another_deployment")
        assert other != RUNTIME.events_channel
        with RUNTIME.session_scope() as s:
            last = outbox.last_seq(s)
        forged = {"id": last + 1, "type": "menu.changed", "occurred_at": utcnow().isoformat(),
                  "model_id": str(model.id), "fan_id": None, "purchase_id": None, "data": {"change": "forged"}}
        for name in (other, "perfmenu:events"):  # the other deployment's channel, and the one all used to share
            RUNTIME.redis.publish(name, json.dumps(forged))
        with RUNTIME.session_scope() as s:
            emit(s, "menu.changed", model_id=model.id, change="real")
            s.commit()  # the relay numbers it and publishes it on our channel
        got = stream.wait_for(lambda m: any(x["data"].get("data", {}).get("change") == "real" for x in m),
                              what="our own event")
        changes = [(m["id"], m["data"]["data"]["change"]) for m in got if m["event"] == "menu.changed"]
        assert changes == [(last + 1, "real")], changes
    finally:
        stream.close()


def test_one_user_opens_at_most_streams_per_user_streams(client, factory, stream_server):
    """Issue 28, item 8: one fan's 320 streams took the stream process's connections from everybody else."""
    fan, other = factory.user("fan"), factory.user("fan")
    streams = [open_stream(client, factory, fan, stream_server) for _ in range(3)]  # STREAMS_PER_USER=3 here
    try:
        ticket = client.post("/events/ticket", headers=factory.headers(fan)).json["ticket"]
        refused = EventStream(f"{stream_server}?ticket={ticket}")
        assert refused.status_code == 429, refused.status_code
        refused.close()
        open_stream(client, factory, other, stream_server).close()  # another user is not held back
        streams.pop().close()
        deadline = time.monotonic() + 10
        while True:  # the closed one's place is free once the server sees it closed (its next write)
            ticket = client.post("/events/ticket", headers=factory.headers(fan)).json["ticket"]
            again = EventStream(f"{stream_server}?ticket={ticket}")
            if again.status_code == 200 or time.monotonic() > deadline:
                break
            again.close()
            time.sleep(0.5)
        assert again.status_code == 200
        streams.append(again)
    finally:
        for stream in streams:
            stream.close()


def test_a_platform_users_stream_ends_when_the_account_is_deactivated(client, factory, database):
    """Issue 28, item 7: streams opened with a platform token were never checked again."""
    from fake_platform import AUDIENCE, ISSUER, FakePlatform

    platform = FakePlatform()
    platform.add_key("k1")
    port = free_port()
    env = dict(STREAM_PORT=port, STREAM_HEARTBEAT_SECONDS=0.5, STREAM_SESSION_CHECK_SECONDS=1,
               PLATFORM_JWT_JWKS_URL=platform.jwks_url, PLATFORM_JWT_ISSUER=ISSUER, PLATFORM_JWT_AUDIENCE=AUDIENCE)
    server = ProcessGroup("stream", [sys.executable, "-m", "gunicorn", "-c", "python:web.stream_conf",
                                     "web.wsgi:app"], subprocess_env(**env)).start()
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz", process=server)
        url = f"http://127.0.0.1:{port}/events/stream"
        token = platform.token("platform-fan-7", "fan", "k1")
        stream = EventStream(url, headers={"Authorization": f"Bearer {token}"})
        try:
            assert stream.status_code == 200
            stream.wait_for(lambda _m: stream.comments > 0, what="connected")
            with RUNTIME.session_scope() as s:
                from models.users import User
                s.execute(User.__table__.update().where(User.external_id == "platform-fan-7").values(is_active=False))
                s.commit()
            ended = stream.wait_for(lambda m: any(x["event"] == "end" for x in m), timeout=10, what="end")
            assert [m["data"] for m in ended if m["event"] == "end"] == [{"reason": "account_inactive"}]
        finally:
            stream.close()
        short = platform.token("platform-fan-8", "fan", "k1", expires_in=2)  # ends when its token does
        stream = EventStream(url, headers={"Authorization": f"Bearer {short}"})
        try:
            ended = stream.wait_for(lambda m: any(x["event"] == "end" for x in m), timeout=10, what="end")
            assert [m["data"] for m in ended if m["event"] == "end"] == [{"reason": "token_expired"}]
        finally:
            stream.close()
    finally:
        server.stop()
        platform.stop()
