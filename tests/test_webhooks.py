"""Issue 15: signed webhooks to the platform, end to end: purchases through the API, the relay in the session's
Celery worker, delivery by a worker of the Procfile's `webhooks` line (the webhooks queue) to a
real HTTP receiver on 127.0.0.1 (tests/fake_webhook_receiver.py), and the admin API under /admin/webhooks.

The test run's app and delivery workers allow 127.0.0.1 (WEBHOOK_ALLOWED_NETWORKS); the refusal tests use the
run's plain settings, which allow no private address. Signatures are checked by the Standard Webhooks reference
implementation (the `standardwebhooks` package, in tests/fake_webhook_receiver.py), not with models.webhooks.sign."""
from __future__ import annotations

import base64
import json
import time
import uuid

import socket

import pytest
from conftest import SETTINGS, WebhookWorkerProcess, make_settings, new_session
from fake_webhook_receiver import FakeWebhookReceiver
from test_events import wait_relayed
from sqlalchemy import select

from models.outbox import OutboxEvent
from models.webhooks import (
    UrlRefused,
    WebhookDelivery,
    WebhookEndpoint,
    check_url,
    new_secret,
    retry_delay,
    send,
    valid_secret,
)
from web import create_app
from worker.celery_app import celery
from worker.tasks import dispatch_webhooks

pytestmark = pytest.mark.usefixtures("celery_worker")

ALLOWED = "127.0.0.1"
# Short retries, so a test sees several attempts in a second or two.
FAST_RETRIES = {"WEBHOOK_ALLOWED_NETWORKS": ALLOWED, "WEBHOOK_BACKOFF_SECONDS": "0.2"}


@pytest.fixture
def app(database):
    """The API with 127.0.0.1 allowed as a webhook address (the receivers listen there)."""
    app = create_app(make_settings(webhook_allowed_networks=(ALLOWED,)))
    app.config["TESTING"] = True
    return app


@pytest.fixture
def receivers():
    """Start receivers on demand: `receivers()` -> a running FakeWebhookReceiver; all stopped at the end."""
    started = []

    def start():
        started.append(FakeWebhookReceiver().start())
        return started[-1]

    yield start
    for receiver in started:
        receiver.stop()


@pytest.fixture
def webhook_workers():
    """Start webhook workers on demand, with environment changes: `webhook_workers(**env)`; all stopped at the
    end. Only one runs at a time in these tests unless a test says otherwise."""
    started = []

    def start(**env):
        started.append(WebhookWorkerProcess(**{**FAST_RETRIES, **env}).start())
        return started[-1]

    yield start
    for worker in started:
        worker.stop()


def register(client, headers, url, **fields) -> dict:
    r = client.post("/admin/webhooks", json={"url": url, **fields}, headers=headers)
    assert r.status_code == 201, r.json
    return r.json


def buy(client, factory, fan, menu) -> str:
    r = client.post("/menu/purchase", json={"menu_id": str(menu.id), "item_id": str(menu.created_items[0].id)},
                    headers=factory.headers(fan))
    assert r.status_code == 200, r.json
    return r.json["purchase_id"]


def shop(factory, tokens=100):
    """A model with a Queue OFF menu and a fan who can buy from it. The model goes live (a show.changed event):
    built before an endpoint is registered, and relayed before this returns, so that event is no endpoint's."""
    model = factory.user("model")
    built = factory.user("fan", tokens=tokens), factory.menu(model)
    wait_relayed()
    return built


verify = FakeWebhookReceiver.verify


def events_of(purchase_id) -> list[OutboxEvent]:
    s = new_session()
    try:
        return list(s.scalars(select(OutboxEvent).where(OutboxEvent.purchase_id == uuid.UUID(purchase_id))
                              .order_by(OutboxEvent.id)))
    finally:
        s.close()


def deliveries(endpoint_id) -> list[WebhookDelivery]:
    s = new_session()
    try:
        return list(s.scalars(select(WebhookDelivery).where(WebhookDelivery.endpoint_id == uuid.UUID(endpoint_id))
                              .order_by(WebhookDelivery.event_seq)))
    finally:
        s.close()


def numbered(purchase_id, count: int, timeout: float = 10) -> list[OutboxEvent]:
    """The purchase's events once `count` of them carry their seq (the relay numbered them)."""
    deadline = time.monotonic() + timeout
    while True:
        events = [e for e in events_of(purchase_id) if e.seq is not None]
        if len(events) >= count or time.monotonic() > deadline:
            assert len(events) == count, [(e.type, e.seq) for e in events_of(purchase_id)]
            return events
        time.sleep(0.05)


def wait_until(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def statuses(endpoint_id) -> list[str]:
    return [d.status for d in deliveries(endpoint_id)]


def test_a_purchase_reaches_the_endpoint_signed_in_order(client, factory, receivers, webhook_workers,
                                                         celery_worker):
    hooks_worker = webhook_workers()
    # The Procfile's arrangement: the settlement worker takes the default queue only, the webhook worker its own.
    queues = {node.split("@")[0]: {q["name"] for q in found}
              for node, found in (celery.control.inspect(timeout=2).active_queues() or {}).items()}
    assert (queues[celery_worker.node], queues[hooks_worker.node]) == ({"celery"}, {"webhooks"}), queues
    receiver = receivers()
    admin = factory.headers(factory.user("admin"))
    fan, menu = shop(factory)
    endpoint = register(client, admin, receiver.url, description="platform notifications")
    assert endpoint["secret"].startswith("whsec_") and endpoint["is_active"] and endpoint["event_types"] == []

    purchase_id = buy(client, factory, fan, menu)
    events = numbered(purchase_id, 2)
    assert [e.type for e in events] == ["purchase.accepted", "purchase.completed"]
    assert receiver.wait_for(lambda: len(receiver.processed) >= 2, 10), receiver.requests
    mine = [r for r in receiver.requests if (r["json"] or {}).get("purchase_id") == purchase_id]
    assert [r["headers"]["webhook-id"] for r in mine] == [str(e.seq) for e in events]  # in order, id = seq
    for request, event in zip(mine, events):
        assert verify(endpoint["secret"], request)
        assert request["json"] == json.loads(json.dumps(event.as_message()))
        assert request["json"]["id"] == int(request["headers"]["webhook-id"])
        assert abs(int(request["headers"]["webhook-timestamp"]) - time.time()) < 60
        assert request["headers"]["content-type"] == "application/json"
        assert request["headers"]["user-agent"] == "perfmenu-webhooks"
        assert request["path"] == "/hooks"
    assert not verify("whsec_" + base64.b64encode(b"x" * 24).decode(), mine[0])  # the check can fail
    assert mine[0]["connection"] == mine[1]["connection"]  # one session per process: its connection was reused
    wait_until(lambda: statuses(endpoint["id"]) == ["delivered", "delivered"], 5, "not marked delivered")
    rows = deliveries(endpoint["id"])
    assert [(d.attempts, d.last_status_code, d.last_error) for d in rows] == [(1, 200, None)] * 2

    listed = client.get(f"/admin/webhooks/{endpoint['id']}/deliveries", headers=admin).json
    assert listed["total"] == 2
    assert [(d["event_id"], d["event_type"], d["status"]) for d in listed["deliveries"]] == \
        [(events[1].seq, "purchase.completed", "delivered"), (events[0].seq, "purchase.accepted", "delivered")]


def test_failures_are_retried_with_growing_delays_and_the_receiver_dedupes(client, factory, receivers,
                                                                          webhook_workers):
    """Two 500s, then an answer that comes after our timeout (the receiver processed the event, we could not
    know), then a 200 for the same webhook-id: processed once. The later event does not wait behind the failing
    one (issue 28, item 10): it is delivered at once, while the first waits for its retries."""
    webhook_workers(WEBHOOK_TIMEOUT_SECONDS="1")
    receiver = receivers()
    receiver.script((500, 0), (500, 0), (200, 1.5), event_type="purchase.accepted")
    admin = factory.headers(factory.user("admin"))
    endpoint = register(client, admin, receiver.url, event_types=["purchase.accepted", "purchase.completed"])
    fan, menu = shop(factory)

    purchase_id = buy(client, factory, fan, menu)
    first, second = numbered(purchase_id, 2)
    wait_until(lambda: statuses(endpoint["id"]) == ["delivered", "delivered"], 20, "not delivered")
    assert receiver.ids() == [second.seq, first.seq]
    assert receiver.duplicates == [str(first.seq)]
    second_at = next(r["at"] for r in receiver.requests if r["headers"]["webhook-id"] == str(second.seq))
    attempts = [r for r in receiver.requests if r["headers"]["webhook-id"] == str(first.seq)]
    assert [r["status"] for r in attempts] == [500, 500, 200, 200]
    assert second_at < attempts[1]["at"]
    gaps = [b["at"] - a["at"] for a, b in zip(attempts, attempts[1:])]
    # Equal jitter: at least half of 0.2 * 2^(n-1) s after each failure (the third also waited out the timeout).
    assert gaps[0] >= 0.1 and gaps[1] >= 0.2 and gaps[2] >= 1 + 0.4, gaps
    assert all(verify(endpoint["secret"], r) for r in attempts)
    rows = deliveries(endpoint["id"])
    assert [(d.attempts, d.last_status_code, d.last_error) for d in rows] == [(4, 200, None), (1, 200, None)]


def test_an_endpoint_that_keeps_failing_goes_dead_then_replays_deliver(client, factory, receivers,
                                                                       webhook_workers):
    webhook_workers(WEBHOOK_RETRY_HOURS="0.0003", WEBHOOK_BACKOFF_SECONDS="0.1")  # ~1 s of retries
    receiver = receivers()
    receiver.script(default=(503, 0))
    admin = factory.headers(factory.user("admin"))
    fan, menu = shop(factory)
    endpoint = register(client, admin, receiver.url)

    purchase_id = buy(client, factory, fan, menu)
    first, second = numbered(purchase_id, 2)
    wait_until(lambda: statuses(endpoint["id"]) == ["dead", "dead"], 20, "not dead")
    rows = deliveries(endpoint["id"])
    assert rows[0].attempts >= 3 and rows[0].last_error == "http_503" and rows[0].last_status_code == 503
    assert receiver.processed == []
    dead = client.get(f"/admin/webhooks/{endpoint['id']}/deliveries?status=dead", headers=admin).json
    assert dead["total"] == 2 and {d["last_error"] for d in dead["deliveries"]} == {"http_503"}
    assert client.get(f"/admin/webhooks/{endpoint['id']}", headers=admin).json["dead"] == 2

    receiver.script(default=(200, 0))  # the platform fixed its receiver
    r = client.post(f"/admin/webhooks/{endpoint['id']}/replay", json={"delivery_id": rows[1].id}, headers=admin)
    assert r.status_code == 200 and r.json == {"queued": 1}, r.json
    wait_until(lambda: statuses(endpoint["id"]) == ["dead", "delivered"], 10, "the replayed delivery was not sent")
    assert receiver.ids() == [second.seq]

    r = client.post(f"/admin/webhooks/{endpoint['id']}/replay", json={"from_seq": first.seq, "to_seq": second.seq},
                    headers=admin)
    assert r.json == {"queued": 2}, r.json
    wait_until(lambda: statuses(endpoint["id"]) == ["delivered", "delivered"], 10, "the range was not sent")
    assert receiver.ids() == [second.seq, first.seq]
    assert receiver.duplicates == [str(second.seq)]  # the range sent it again: the receiver skipped it
    assert all(verify(endpoint["secret"], r) for r in receiver.requests)
    assert deliveries(endpoint["id"])[0].attempts > rows[0].attempts  # attempts are kept across a replay

    # An endpoint registered afterwards gets the range's events it wants now.
    late_receiver = receivers()
    late = register(client, admin, late_receiver.url, event_types=["purchase.completed"])
    r = client.post(f"/admin/webhooks/{late['id']}/replay", json={"from_seq": first.seq, "to_seq": second.seq},
                    headers=admin)
    assert r.json == {"queued": 1}, r.json
    assert late_receiver.wait_for(lambda: late_receiver.ids() == [second.seq], 10), late_receiver.requests
    assert verify(late["secret"], late_receiver.requests[0])


def test_a_slow_endpoint_does_not_delay_another(client, factory, receivers, webhook_workers):
    webhook_workers()
    slow, healthy = receivers(), receivers()
    slow.script(default=(200, 3))
    admin = factory.headers(factory.user("admin"))
    fan, menu = shop(factory)
    slow_endpoint = register(client, admin, slow.url)
    register(client, admin, healthy.url)

    bought_at = time.time()
    purchase_id = buy(client, factory, fan, menu)
    first, second = numbered(purchase_id, 2)
    assert healthy.wait_for(lambda: healthy.ids() == [first.seq, second.seq], 5), healthy.requests
    assert healthy.processed[-1]["at"] - bought_at < 1.5
    assert len(slow.requests) <= 1  # still on its first event
    wait_until(lambda: statuses(slow_endpoint["id"]) == ["delivered", "delivered"], 15, "the slow one is stuck")
    assert slow.ids() == [first.seq, second.seq]


def test_a_worker_killed_mid_delivery_delivers_at_least_once(client, factory, receivers, webhook_workers):
    """The worker dies while the receiver holds the request: the lock it held runs out, beat's dispatch asks for
    a run, another worker sends the event again and the receiver, which processed it, skips the duplicate."""
    doomed = webhook_workers(WEBHOOK_TIMEOUT_SECONDS="2")  # its lock lives 2 * 2 + 5 s
    receiver = receivers()
    receiver.script((200, 60))  # processed, then the answer hangs
    admin = factory.headers(factory.user("admin"))
    fan, menu = shop(factory)
    endpoint = register(client, admin, receiver.url)

    purchase_id = buy(client, factory, fan, menu)
    first, second = numbered(purchase_id, 2)
    assert receiver.wait_for(lambda: len(receiver.requests) == 1, 10)
    doomed.group.kill()  # SIGKILL to the whole worker, mid-request
    receiver.release()
    webhook_workers(WEBHOOK_TIMEOUT_SECONDS="2")
    assert statuses(endpoint["id"]) == ["pending", "pending"]

    deadline = time.monotonic() + 30
    while statuses(endpoint["id"]) != ["delivered", "delivered"]:  # beat's job, run here every half second
        assert time.monotonic() < deadline, (statuses(endpoint["id"]), receiver.requests)
        dispatch_webhooks()
        time.sleep(0.5)
    assert receiver.ids() == [first.seq, second.seq]
    assert receiver.duplicates == [str(first.seq)]
    assert [d.attempts for d in deliveries(endpoint["id"])] == [1, 1]  # the killed attempt was never recorded


def test_private_and_loopback_urls_are_refused(factory, receivers, webhook_workers, database):
    strict = create_app(SETTINGS)  # the run's settings: no private network allowed
    client = strict.test_client()
    admin = factory.headers(factory.user("admin"))
    for url in ("http://127.0.0.1:9/", "http://10.0.0.1/hook", "http://localhost/", "http://[::1]/",
                "http://169.254.169.254/latest/meta-data/", "http://0.0.0.0/", "http://2130706433/",
                "http://127.0.0.1:18402\\@1.1.1.1/../hook/ok", "http://169.254.169.254\\@1.1.1.1/",
                "http://[2002:a9fe:a9fe::]/", "http://[2002:7f00:1::]/"):
        r = client.post("/admin/webhooks", json={"url": url}, headers=admin)
        assert r.status_code == 422 and r.json["error"]["code"] == "webhook_url_refused", (url, r.json)
    for url in ("ftp://example.com/hook", "file:///etc/passwd", "http:///nohost", "example.com/hook",
                "http://exa mple.com/"):
        r = client.post("/admin/webhooks", json={"url": url}, headers=admin)
        assert r.status_code == 422 and r.json["error"]["code"] == "webhook_url_refused", (url, r.json)
    s = new_session()
    try:
        assert s.scalars(select(WebhookEndpoint)).all() == []
    finally:
        s.close()

    # Checked again at every attempt: a worker that does not allow 127.0.0.1 records refused_address.
    allowing = create_app(make_settings(webhook_allowed_networks=(ALLOWED,))).test_client()
    receiver = receivers()
    endpoint = register(allowing, admin, receiver.url)
    webhook_workers(WEBHOOK_ALLOWED_NETWORKS="")
    fan, menu = shop(factory)
    buy(allowing, factory, fan, menu)
    wait_until(lambda: any(d.attempts for d in deliveries(endpoint["id"])), 10, "no attempt")
    row = deliveries(endpoint["id"])[0]
    assert (row.status, row.last_error, row.last_status_code) == ("pending", "refused_address", None)
    assert receiver.requests == []


def test_admin_api(client, factory, receivers, webhook_workers):
    webhook_workers()
    receiver = receivers()
    admin = factory.headers(factory.user("admin"))
    own_secret = "whsec_" + base64.b64encode(b"k" * 32).decode()
    endpoint = register(client, admin, receiver.url, event_types=["purchase.completed", "purchase.completed"],
                        secret=own_secret)
    assert endpoint["secret"] == own_secret and endpoint["event_types"] == ["purchase.completed"]

    listed = client.get("/admin/webhooks", headers=admin).json["endpoints"]
    assert [e["id"] for e in listed] == [endpoint["id"]] and "secret" not in listed[0]
    shown = client.get(f"/admin/webhooks/{endpoint['id']}", headers=admin).json
    assert "secret" not in shown and shown["pending"] == 0 and shown["dead"] == 0
    assert client.get(f"/admin/webhooks/{uuid.uuid4()}", headers=admin).status_code == 404

    for body in ({"url": receiver.url, "event_types": ["purchase.nope"]},
                 {"url": receiver.url, "secret": "whsec_short"},
                 {"url": receiver.url, "secret": "not-a-secret" * 4}):
        r = client.post("/admin/webhooks", json=body, headers=admin)
        assert r.status_code == 422 and r.json["error"]["code"] == "invalid_request", (body, r.json)

    rotated = client.post(f"/admin/webhooks/{endpoint['id']}/rotate-secret", headers=admin).json
    assert rotated["secret"].startswith("whsec_") and rotated["secret"] != own_secret
    fan, menu = shop(factory, tokens=100)
    first = buy(client, factory, fan, menu)
    assert receiver.wait_for(lambda: len(receiver.processed) == 1, 10)
    assert receiver.processed[0]["type"] == "purchase.completed"  # only the type it asked for
    assert verify(rotated["secret"], receiver.requests[0]) and not verify(own_secret, receiver.requests[0])

    r = client.post(f"/admin/webhooks/{endpoint['id']}/disable", headers=admin)
    assert r.status_code == 200 and r.json["is_active"] is False
    second = buy(client, factory, fan, menu)
    numbered(second, 2)
    time.sleep(0.5)
    assert len(receiver.processed) == 1 and len(deliveries(endpoint["id"])) == 1  # nothing for a disabled one
    assert client.post(f"/admin/webhooks/{endpoint['id']}/enable", headers=admin).json["is_active"] is True
    completed = [e.seq for e in events_of(second) if e.type == "purchase.completed"]
    r = client.post(f"/admin/webhooks/{endpoint['id']}/replay", json={"from_seq": 1, "to_seq": completed[0]},
                    headers=admin)
    assert r.json == {"queued": 2}, r.json  # the first again, and the one it missed while disabled
    assert receiver.wait_for(lambda: len(receiver.processed) == 2, 10), receiver.requests
    assert receiver.ids()[1] == completed[0] and receiver.duplicates == [str(numbered(first, 2)[1].seq)]

    page = client.get(f"/admin/webhooks/{endpoint['id']}/deliveries?limit=1&offset=1", headers=admin).json
    assert page["total"] == 2 and len(page["deliveries"]) == 1 and page["deliveries"][0]["event_id"] < completed[0]
    for body in ({"delivery_id": 1, "from_seq": 1, "to_seq": 2}, {"from_seq": 5, "to_seq": 4},
                 {"from_seq": 1, "to_seq": 10_001}, {"to_seq": 3}, {}):
        r = client.post(f"/admin/webhooks/{endpoint['id']}/replay", json=body, headers=admin)
        assert r.status_code == 422, (body, r.json)
    r = client.post(f"/admin/webhooks/{endpoint['id']}/replay", json={"delivery_id": 999_999}, headers=admin)
    assert r.status_code == 404

    s = new_session()
    try:
        from models.audit import AuditEvent
        actions = [a for (a,) in s.execute(select(AuditEvent.action).where(AuditEvent.subject_id == endpoint["id"])
                                           .order_by(AuditEvent.id))]
    finally:
        s.close()
    assert actions == ["webhook.created", "webhook.secret_rotated", "webhook.disabled", "webhook.enabled",
                       "webhook.replayed"]


def test_only_admins(client, factory):
    for role in ("fan", "model"):
        headers = factory.headers(factory.user(role))
        r = client.post("/admin/webhooks", json={"url": "https://example.com/hook"}, headers=headers)
        assert r.status_code == 403 and r.json["error"]["code"] == "forbidden"
        assert client.get("/admin/webhooks", headers=headers).status_code == 403
        assert client.post(f"/admin/webhooks/{uuid.uuid4()}/replay", json={"delivery_id": 1},
                           headers=headers).status_code == 403
    assert client.get("/admin/webhooks").status_code == 401


# --- the rules, without the services -----------------------------------------------------------------------------

class Edge:
    """A random source that always picks one end of the range."""

    def __init__(self, high: bool):
        self.high = high

    def uniform(self, low, high):
        return high if self.high else low


def test_retry_delay_doubles_with_equal_jitter_up_to_an_hour():
    for attempts, low, high in ((1, 2.5, 5), (2, 5, 10), (3, 10, 20), (11, 1800, 3600), (500, 1800, 3600)):
        assert (retry_delay(5, attempts, Edge(False)), retry_delay(5, attempts, Edge(True))) == (low, high)


def test_secrets_are_whsec_and_24_to_64_bytes_of_base64():
    assert valid_secret(new_secret())
    for size, ok in ((23, False), (24, True), (64, True), (65, False)):
        assert valid_secret("whsec_" + base64.b64encode(b"k" * size).decode()) is ok, size
    for bad in ("k" * 40, "whsec_" + "!" * 40, base64.b64encode(b"k" * 32).decode(), "whsec_"):
        assert not valid_secret(bad), bad


def test_url_rules():
    check_url("http://8.8.8.8/hook")  # a public address (no name to resolve)
    check_url("http://127.0.0.1:9/", ["127.0.0.1"])
    check_url("https://10.1.2.3/", ["10.0.0.0/8"])
    for url in ("http://127.0.0.1/", "http://[::1]/", "http://[::ffff:127.0.0.1]/", "http://[fe80::1]/",
                "http://224.0.0.1/", "http://100.64.0.1/", "http://240.0.0.1/", "http://192.168.1.1/",
                "http://[fd00::1]/"):
        with pytest.raises(UrlRefused) as refused:
            check_url(url, ["10.0.0.0/8"])
        assert refused.value.code == "refused_address", url
    # Issue 28, item 11: IPv6 forms that carry a private IPv4 address (6to4, NAT64, Teredo).
    for url in ("http://[2002:a9fe:a9fe::]/", "http://[2002:7f00:1::]/", "http://[64:ff9b::7f00:1]/",
                "http://[64:ff9b::a9fe:a9fe]/", "http://[2001:0:4136:e378:8000:63bf:80ff:fffe]/"):
        with pytest.raises(UrlRefused) as refused:
            check_url(url, ["10.0.0.0/8"])
        assert refused.value.code == "refused_address", url
    # Issue 28, item 1: forms that parsers read differently (a backslash ends urllib3's authority, not
    # urlsplit's), and user info, are refused whatever host either parser sees.
    for url in ("ftp://8.8.8.8/", "http://", "//8.8.8.8/", "http://8.8.8.8:99999/", "http://8.8.8.8/\n",
                "http://[::1/", "http://127.0.0.1:18402\\@1.1.1.1/../hook/ok", "http://10.0.0.1:6379\\@8.8.8.8/",
                "http://8.8.8.8\\@8.8.4.4/", "http://user:pw@8.8.8.8/", "http://8.8.8.8@127.0.0.1/"):
        with pytest.raises(UrlRefused) as refused:
            check_url(url)
        assert refused.value.code == "invalid_url", url


def test_an_attempt_connects_to_the_address_it_checked(monkeypatch, receivers):
    """Issue 28, item 4 (DNS rebinding): the name's first answer (allowed) is the address connected to; a second
    resolution, which here would answer another address, is never made."""
    allowed = receivers()
    port = allowed._server.server_address[1]
    other = FakeWebhookReceiver(("127.0.0.2", port)).start()
    answers = iter([["127.0.0.1"], ["127.0.0.2"], ["127.0.0.2"]])
    real = socket.getaddrinfo

    def rebinding_dns(host, *args, **kwargs):  # a name server whose answer changes at each question
        if host != "rebind.test":
            return real(host, *args, **kwargs)
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, port)) for address in next(answers)]

    monkeypatch.setattr(socket, "getaddrinfo", rebinding_dns)
    try:
        settings = make_settings(webhook_allowed_networks=("127.0.0.1/32",))
        attempt = send(settings, f"http://rebind.test:{port}/hooks", new_secret(), "1", b"{}")
        assert attempt.ok and len(allowed.requests) == 1 and other.requests == []
        assert allowed.requests[0]["headers"]["host"] == f"rebind.test:{port}"
        # The next attempt asks again, gets the other address, and refuses it without connecting.
        assert send(settings, f"http://rebind.test:{port}/hooks", new_secret(), "2", b"{}").error == "refused_address"
        assert other.requests == []
    finally:
        other.stop()


def test_a_dripping_endpoint_is_cut_at_its_deadline_and_holds_back_no_other(client, factory, receivers,
                                                                            webhook_workers):
    """Issue 28, item 3: a receiver that answers one byte a second (no read ever times out) gets one attempt at
    a time, each ended at WEBHOOK_TIMEOUT_SECONDS in all; a healthy endpoint's events arrive within 2 s of their
    commit meanwhile."""
    webhook_workers(WEBHOOK_TIMEOUT_SECONDS="2")
    dripping, healthy = receivers(), receivers()
    dripping.script(default=(200, 0, 1.0))
    admin = factory.headers(factory.user("admin"))
    fan, menu = shop(factory)
    dripping_endpoint = register(client, admin, dripping.url)
    register(client, admin, healthy.url)

    for _ in range(3):
        purchase_id = buy(client, factory, fan, menu)
        events = numbered(purchase_id, 2)
        assert healthy.wait_for(lambda: set(healthy.ids()) >= {e.seq for e in events}, 5), healthy.requests
        for event in events:
            arrived = next(p["at"] for p in healthy.processed if int(p["id"]) == event.seq)
            assert arrived - event.occurred_at.timestamp() < 2.0
        time.sleep(1)
    wait_until(lambda: any(d.last_error == "timeout" for d in deliveries(dripping_endpoint["id"])), 10,
               "the dripping attempt was not cut")
    starts = [r["at"] for r in dripping.requests]
    gaps = [b - a for a, b in zip(starts, starts[1:])]
    # One attempt at a time, each cut at 2 s and followed by a short backoff (WEBHOOK_BACKOFF_SECONDS=0.2).
    assert gaps and all(1.9 <= gap < 2 + 1.5 for gap in gaps), gaps
