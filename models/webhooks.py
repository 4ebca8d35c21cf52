"""Webhooks to the platform (docs/architecture.md, "Events out"): endpoints an admin registers, one delivery row
per (endpoint, event), signed with the Standard Webhooks scheme.

The relay adds the delivery rows in the transaction that numbers the events (models/outbox.py), so an event is
never numbered without its deliveries. A delivery is `pending` until an attempt gets a 2xx (`delivered`) or its
retry period ends (`dead`); an admin may replay any delivery, which makes it `pending` again.

Delivery (`deliver_due`, run by the task perfmenu.deliver_webhooks on the `webhooks` queue) goes endpoint by
endpoint: one run at a time per endpoint (a Redis lock that outlives one attempt), its due deliveries in event
order, one HTTP call at a time with no database transaction open, each within WEBHOOK_TIMEOUT_SECONDS in all.
A delivery that fails gets its own retry time (exponential backoff) and the run goes on with the later events, so
one refused event holds back nothing. A failure with no answer (timeout, refused connection) ends the run and the
endpoint backs off (a Redis key, at most MAX_ENDPOINT_BACKOFF_SECONDS), so an unreachable endpoint costs one
timeout per round, not one per event, and never holds a process that another endpoint needs. Redis only saves
work here: a lost lock or backoff key costs at most an extra attempt, and beat's dispatch finds every due
delivery in the database.

Every outgoing URL is checked before each attempt, and the attempt connects to the address checked
(models/infra/webhook_http.py): http(s), and every address its host resolves to public, unless the operator
allows it (WEBHOOK_ALLOWED_NETWORKS)."""
from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import logging
import random
import secrets
import time
import uuid
from dataclasses import dataclass
from http.client import HTTPException
from datetime import datetime, timedelta

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    ForeignKey,
    Index,
    Integer,
    String,
    UniqueConstraint,
    and_,
    exists,
    func,
    insert,
    literal,
    select,
    update,
)
from sqlalchemy.orm import Mapped, mapped_column
from urllib3.exceptions import HTTPError

from .db import Base
from .infra.webhook_http import AttemptTimedOut, UrlRefused, post, resolve
from .outbox import OutboxEvent
from .types import UTCDateTime, str_enum, utcnow

log = logging.getLogger(__name__)

DELIVERY_STATUSES = ("pending", "delivered", "dead")
SECRET_PREFIX = "whsec_"
SECRET_BYTES = (24, 64)  # the signing key's length, decoded (Standard Webhooks: 24 to 64 bytes)
USER_AGENT = "perfmenu-webhooks"
BATCH = 20  # deliveries read per query in a run
MAX_RUN_SECONDS = 10  # a run then ends and queues the next one: a busy endpoint gives its thread to others in turn
MAX_BACKOFF_SECONDS = 3600
MAX_ENDPOINT_BACKOFF_SECONDS = 60  # an unreachable endpoint is tried again at least this often
LOCK_MARGIN_SECONDS = 5  # the lock outlives one attempt (its total deadline) by this much
MAX_REPLAY = 10_000  # events in one replayed range
MAX_ANSWER_BYTES = 64 * 1024  # of an answer's body read (so its connection can be reused); a longer one is dropped


class WebhookEndpoint(Base):
    __tablename__ = "webhook_endpoints"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    url: Mapped[str] = mapped_column(String(2000))
    event_types: Mapped[list] = mapped_column(JSON, default=list)  # empty: every type
    secret: Mapped[str] = mapped_column(String(100))  # whsec_ + base64 of the signing key
    is_active: Mapped[bool] = mapped_column(Boolean, default=True)
    description: Mapped[str | None] = mapped_column(String(200))
    created_by: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("users.id"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    def wants(self, event_type: str) -> bool:
        return not self.event_types or event_type in self.event_types


class WebhookDelivery(Base):
    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        UniqueConstraint("endpoint_id", "event_id"),
        Index("ix_webhook_deliveries_due", "status", "next_attempt_at"),
    )

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    endpoint_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("webhook_endpoints.id"))
    event_id: Mapped[int] = mapped_column(ForeignKey("outbox_events.id"))
    event_seq: Mapped[int] = mapped_column(BigInteger)
    status: Mapped[str] = mapped_column(str_enum(*DELIVERY_STATUSES, name="delivery_status"), default="pending")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_status_code: Mapped[int | None] = mapped_column(Integer)
    last_error: Mapped[str | None] = mapped_column(String(60))
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


# --- secrets and signatures ------------------------------------------------------------------------------------

def new_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(24)).decode()


def valid_secret(secret: str) -> bool:
    """whsec_ + standard base64 of a 24 to 64 byte key."""
    if not secret.startswith(SECRET_PREFIX):
        return False
    try:
        key = base64.b64decode(secret.removeprefix(SECRET_PREFIX), validate=True)
    except (binascii.Error, ValueError):
        return False
    return SECRET_BYTES[0] <= len(key) <= SECRET_BYTES[1]


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """The `webhook-signature` header value: v1,<base64 HMAC-SHA256 of "id.timestamp.body">."""
    key = base64.b64decode(secret.removeprefix(SECRET_PREFIX))
    digest = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


# --- the outgoing address check --------------------------------------------------------------------------------

def check_url(url: str, allowed_networks=()) -> None:
    """Refuse (UrlRefused) a URL we would not call (webhook_http.resolve says why)."""
    resolve(url, allowed_networks)


# --- the relay's side ------------------------------------------------------------------------------------------

def add_deliveries(session, events) -> set:
    """One pending delivery per active endpoint that wants each event; the ids of the endpoints that got one."""
    endpoints = list(session.scalars(select(WebhookEndpoint).where(WebhookEndpoint.is_active)))
    now = utcnow()
    touched = set()
    for event in events:
        for endpoint in endpoints:
            if endpoint.wants(event.type):
                session.add(WebhookDelivery(endpoint_id=endpoint.id, event_id=event.id, event_seq=event.seq,
                                            status="pending", attempts=0, next_attempt_at=now, created_at=now))
                touched.add(endpoint.id)
    session.flush()
    return touched


# --- Redis: one run per endpoint, the endpoint's backoff, the "a run is scheduled" flag -------------------------

_EXTEND = ("if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) "
           "else return 0 end")
_RELEASE = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) else return 0 end"
SCHEDULED_TTL_SECONDS = 5


def _key(kind: str, endpoint_id) -> str:
    return f"perfmenu:webhooks:{kind}:{endpoint_id}"


def lock_seconds(settings) -> float:
    return settings.webhook_timeout_seconds + LOCK_MARGIN_SECONDS


def acquire_lock(redis, endpoint_id, ttl_seconds: float) -> str | None:
    """One run per endpoint: a lock that expires on its own if its holder dies."""
    token = uuid.uuid4().hex
    if redis.set(_key("lock", endpoint_id), token, nx=True, px=max(1, int(ttl_seconds * 1000))):
        return token
    return None


def extend_lock(redis, endpoint_id, token: str, ttl_seconds: float) -> bool:
    return bool(redis.eval(_EXTEND, 1, _key("lock", endpoint_id), token, max(1, int(ttl_seconds * 1000))))


def release_lock(redis, endpoint_id, token: str) -> None:
    redis.eval(_RELEASE, 1, _key("lock", endpoint_id), token)


def back_off(redis, endpoint_id, seconds: float) -> None:
    redis.set(_key("backoff", endpoint_id), "1", px=max(1, int(seconds * 1000)))


def backing_off(redis, endpoint_id) -> bool:
    return bool(redis.exists(_key("backoff", endpoint_id)))


def clear_backoff(redis, endpoint_id) -> None:
    """An admin's replay or enable: the endpoint is tried now."""
    redis.delete(_key("backoff", endpoint_id))


def promise_run(redis, endpoint_id) -> bool:
    """True if the caller should publish a run: none is scheduled and the endpoint is not backing off."""
    if backing_off(redis, endpoint_id):
        return False
    return bool(redis.set(_key("scheduled", endpoint_id), "1", nx=True, ex=SCHEDULED_TTL_SECONDS))


def clear_scheduled(redis, endpoint_id) -> None:
    """A run starts (a delivery added from now on schedules another), or its publish failed."""
    redis.delete(_key("scheduled", endpoint_id))


# --- delivery --------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Attempt:
    """One POST's outcome: the HTTP status (if an answer came) and, for a failure, its short code."""

    status_code: int | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass(frozen=True)
class Run:
    """How a run of an endpoint's loop ended: idle (nothing due; `retry_in`: the soonest retry of an event
    refused in this run), failed (no answer: the endpoint backs off `retry_in` seconds), more (its time was up),
    busy (another run holds the lock), backing_off, disabled, lost_lock."""

    outcome: str
    delivered: int = 0
    retry_in: float | None = None


def message_body(event: OutboxEvent) -> bytes:
    """The exact bytes signed and sent."""
    return json.dumps(event.as_message(), separators=(",", ":")).encode()


def send(settings, url: str, secret: str, msg_id: str, body: bytes) -> Attempt:
    """POST one event: the address checked again first (DNS may have changed) and connected to, Standard
    Webhooks headers, no redirect followed (a 3xx is a failure), at most a short answer read."""
    try:
        target = resolve(url, settings.webhook_allowed_networks)
    except UrlRefused as exc:
        return Attempt(error=exc.code)
    timestamp = int(time.time())
    headers = {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(secret, msg_id, timestamp, body),
        "content-type": "application/json",
        "user-agent": USER_AGENT,
    }
    try:
        status = post(target, headers, body, settings.webhook_timeout_seconds, MAX_ANSWER_BYTES)
    except AttemptTimedOut:
        return Attempt(error="timeout")
    except (OSError, HTTPError, HTTPException):
        return Attempt(error="connection_error")
    except Exception:  # whatever it was, the attempt failed and is recorded: the loop must move on
        log.exception("webhook attempt failed unexpectedly")
        return Attempt(error="connection_error")
    if 200 <= status < 300:
        return Attempt(status)
    return Attempt(status, f"http_{status}")


def retry_delay(base_seconds: float, attempts: int, rng=random) -> float:
    """Exponential backoff with equal jitter: base * 2^(attempts-1), at most an hour; half of it fixed, the other
    half at random (retries of many deliveries spread out, and none comes sooner than half its delay)."""
    delay = min(MAX_BACKOFF_SECONDS, base_seconds * 2 ** min(max(attempts - 1, 0), 32))
    return delay / 2 + rng.uniform(0, delay / 2)


def retry_deadline(delivery: WebhookDelivery, settings) -> datetime:
    return delivery.created_at + timedelta(hours=settings.webhook_retry_hours)


def due(session, endpoint_id, now: datetime, limit: int = BATCH) -> list[tuple[WebhookDelivery, OutboxEvent]]:
    """The endpoint's pending deliveries whose next attempt is due, in event order, with their events."""
    rows = session.execute(
        select(WebhookDelivery, OutboxEvent).join(OutboxEvent, OutboxEvent.id == WebhookDelivery.event_id)
        .where(WebhookDelivery.endpoint_id == endpoint_id, WebhookDelivery.status == "pending",
               WebhookDelivery.next_attempt_at <= now)
        .order_by(WebhookDelivery.event_seq).limit(limit)
    )
    return [tuple(row) for row in rows]


def _due_where(now: datetime):
    return and_(WebhookDelivery.status == "pending", WebhookDelivery.next_attempt_at <= now,
                WebhookEndpoint.is_active)


def has_due(session, endpoint_id, now: datetime | None = None) -> bool:
    """Whether the endpoint is active and has a delivery due now."""
    return bool(session.scalar(
        select(exists().where(WebhookDelivery.endpoint_id == endpoint_id, _due_where(now or utcnow()))
               .where(WebhookEndpoint.id == WebhookDelivery.endpoint_id))
    ))


def due_endpoints(session, now: datetime | None = None) -> list[uuid.UUID]:
    """Active endpoints with a delivery due now (beat's dispatch asks for their runs)."""
    return list(session.scalars(
        select(WebhookDelivery.endpoint_id)
        .join(WebhookEndpoint, WebhookEndpoint.id == WebhookDelivery.endpoint_id)
        .where(_due_where(now or utcnow())).distinct()
    ))


def backlog_stats(session, now: datetime | None = None) -> dict:
    """For the metrics and the bank test: pending deliveries of active endpoints, and how long the most overdue
    one has been due (seconds past its next attempt time; 0 if none is due). A growing lag means the endpoints
    get events more slowly than they come (one attempt at a time per endpoint) or no webhooks worker consumes."""
    now = now or utcnow()
    active = select(WebhookDelivery).join(WebhookEndpoint, WebhookEndpoint.id == WebhookDelivery.endpoint_id)\
        .where(WebhookDelivery.status == "pending", WebhookEndpoint.is_active).subquery()
    pending, oldest = session.execute(select(func.count(), func.min(active.c.next_attempt_at))).one()
    return {"pending": pending, "lag": max(0.0, (now - oldest).total_seconds()) if oldest is not None else 0.0}


def mark_overdue_dead(session, settings, now: datetime | None = None) -> int:
    """Pending deliveries whose retry period ended (a disabled endpoint's, or ones that waited behind a failing
    one) become dead. A run's own last attempt at the deadline is left a lock's lifetime to finish first."""
    now = now or utcnow()
    cutoff = now - timedelta(hours=settings.webhook_retry_hours, seconds=lock_seconds(settings))
    result = session.execute(
        update(WebhookDelivery).where(WebhookDelivery.status == "pending", WebhookDelivery.created_at < cutoff)
        .values(status="dead", next_attempt_at=None).execution_options(synchronize_session=False)
    )
    return result.rowcount or 0


def record(session, settings, delivery_id: int, attempt: Attempt, now: datetime) -> float | None:
    """Write an attempt's outcome on its delivery (locked). Returns None when delivered, else the seconds until
    the delivery's next attempt: its retry delay, cut at its retry deadline, where it gets its last attempt and
    after which a failure makes it dead."""
    delivery = session.get(WebhookDelivery, delivery_id, with_for_update=True)
    delivery.attempts += 1
    delivery.last_attempt_at = now
    delivery.last_status_code = attempt.status_code
    delivery.last_error = attempt.error
    if attempt.ok:
        # Delivered is the truth even if the sweep had just given up on it.
        delivery.status, delivery.delivered_at, delivery.next_attempt_at = "delivered", now, None
        return None
    wait = retry_delay(settings.webhook_backoff_seconds, delivery.attempts)
    if delivery.status != "pending":
        return wait  # dead meanwhile (beat's sweep): it stays dead
    deadline = retry_deadline(delivery, settings)
    if now >= deadline:
        delivery.status, delivery.next_attempt_at = "dead", None
        return wait
    delivery.next_attempt_at = min(now + timedelta(seconds=wait), deadline)
    return (delivery.next_attempt_at - now).total_seconds()


def deliver_due(runtime, endpoint_id) -> Run:
    """One run of the endpoint's delivery loop (module docstring)."""
    redis, settings = runtime.redis, runtime.settings
    if backing_off(redis, endpoint_id):
        return Run("backing_off")
    ttl = lock_seconds(settings)
    token = acquire_lock(redis, endpoint_id, ttl)
    if token is None:
        return Run("busy")
    try:
        return _deliver(runtime, endpoint_id, token, ttl)
    finally:
        release_lock(redis, endpoint_id, token)


def _deliver(runtime, endpoint_id, token: str, ttl: float) -> Run:
    redis, settings = runtime.redis, runtime.settings
    started = time.monotonic()
    delivered, retry_in = 0, None
    while True:
        with runtime.session_scope() as session:
            endpoint = session.get(WebhookEndpoint, endpoint_id)
            if endpoint is None or not endpoint.is_active:
                return Run("disabled", delivered)
            url, secret = endpoint.url, endpoint.secret
            batch = [(d.id, str(e.seq), message_body(e)) for d, e in due(session, endpoint_id, utcnow())]
        # The session is closed here: no transaction stays open during the HTTP calls.
        if not batch:
            return Run("idle", delivered, retry_in)
        for delivery_id, msg_id, body in batch:
            if time.monotonic() - started >= MAX_RUN_SECONDS:
                return Run("more", delivered)
            if not extend_lock(redis, endpoint_id, token, ttl):
                return Run("lost_lock", delivered)  # another run may have started: leave the rest to it
            attempt = send(settings, url, secret, msg_id, body)
            with runtime.session_scope() as session:
                wait = record(session, settings, delivery_id, attempt, utcnow())
                session.commit()
            if attempt.ok:
                delivered += 1
                continue
            log.info("webhook attempt failed", extra={"endpoint_id": str(endpoint_id), "event_id": msg_id,
                                                      "error": attempt.error, "retry_in": round(wait, 3)})
            retry_in = wait if retry_in is None else min(retry_in, wait)
            if attempt.status_code is None:  # no answer: the endpoint is unreachable, not this event refused
                wait = min(wait, MAX_ENDPOINT_BACKOFF_SECONDS)
                back_off(redis, endpoint_id, wait)
                return Run("failed", delivered, wait)


# --- an admin's replay -----------------------------------------------------------------------------------------

def _requeue(now: datetime) -> dict:
    # Attempts are kept (the history); the retry period starts again from now.
    return dict(status="pending", next_attempt_at=now, created_at=now, delivered_at=None)


def replay_one(session, endpoint_id, delivery_id: int, now: datetime | None = None) -> int:
    """Make one delivery of the endpoint pending again, due now. Returns 1, or 0 if it has no such delivery."""
    result = session.execute(
        update(WebhookDelivery)
        .where(WebhookDelivery.id == delivery_id, WebhookDelivery.endpoint_id == endpoint_id)
        .values(**_requeue(now or utcnow())).execution_options(synchronize_session=False)
    )
    return result.rowcount or 0


def replay_range(session, endpoint: WebhookEndpoint, from_seq: int, to_seq: int,
                 now: datetime | None = None) -> int:
    """Events from_seq..to_seq (inclusive) again for the endpoint: its deliveries in the range pending again,
    due now; and a new delivery for each event of the range it has none for (it was registered later, disabled,
    or did not want the type then) if it wants the event's type now. Returns how many are queued."""
    now = now or utcnow()
    requeued = session.execute(
        update(WebhookDelivery).where(WebhookDelivery.endpoint_id == endpoint.id,
                                      WebhookDelivery.event_seq.between(from_seq, to_seq))
        .values(**_requeue(now)).execution_options(synchronize_session=False)
    ).rowcount or 0
    missing = (
        select(literal(endpoint.id, WebhookDelivery.endpoint_id.type), OutboxEvent.id, OutboxEvent.seq,
               literal("pending", WebhookDelivery.status.type), literal(0), literal(now, UTCDateTime()),
               literal(now, UTCDateTime()))
        .where(OutboxEvent.seq.between(from_seq, to_seq),
               ~exists().where(WebhookDelivery.endpoint_id == endpoint.id,
                               WebhookDelivery.event_id == OutboxEvent.id))
    )
    if endpoint.event_types:
        missing = missing.where(OutboxEvent.type.in_(endpoint.event_types))
    added = session.execute(  # counted from RETURNING: an INSERT's row count is not reported everywhere
        insert(WebhookDelivery).from_select(["endpoint_id", "event_id", "event_seq", "status", "attempts",
                                             "next_attempt_at", "created_at"], missing)
        .returning(WebhookDelivery.id)
    ).all()
    return requeued + len(added)
