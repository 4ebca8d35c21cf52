"""Events out (docs/architecture.md, "Events out"): the transactional outbox and its relay.

Every state change that matters calls `emit` inside the transaction that makes the change, so an event exists
exactly when its change committed. The rows get their public number later: the relay (`sequence`) takes the
unnumbered rows in insert order under one lock, gives each the next `seq` (1, 2, 3 ... with no gaps, in the order
they are delivered) and, in the same transaction, one delivery row per webhook endpoint that wants the event.
After its commit the relay publishes the events on Redis for the live streams; a publish lost to a crash or a
Redis restart is found by the streams themselves, which read any gap in `seq` from this table. So every event
reaches every stream and every endpoint at least once, in `seq` order, and `seq` is what a stream's
Last-Event-ID and a webhook's `webhook-id` carry.
"""
from __future__ import annotations

import functools
import hashlib
import json
import uuid
from datetime import datetime

from sqlalchemy import JSON, BigInteger, Index, Integer, String, func, select, text, update
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Mapped, mapped_column

from .db import Base
from .types import UTCDateTime, utcnow

CHANNEL_PREFIX = "perfmenu:events:"  # Redis pub/sub channels of relayed events, one per deployment (`channel`)
RELAY_BATCH = 500
_RELAY_LOCK = 7_150_001  # pg_advisory_xact_lock key: one relay numbers events at a time

# The event types (README "Events out" has an example of each).
PURCHASE_EVENTS = {  # a purchase's new status -> its event
    "pending": "purchase.accepted",
    "completed": "purchase.completed",
    "queued": "purchase.queued",
    "failed": "purchase.failed",
    "in_progress": "queue.entry.started",
}
QUEUE_ENTRY_COMPLETED = "queue.entry.completed"
# A refunded entry's event says who ended it (escrow.refund's `by`).
REFUND_EVENTS = {"model": "queue.entry.rejected", "fan": "queue.entry.cancelled", "admin": "queue.entry.refunded",
                 "deadline": "queue.entry.refunded", "show": "queue.entry.refunded"}
QUEUE_CHANGED = "queue.changed"
TOY_EVENTS = {"sent": "toy.started", "unconfirmed": "toy.started", "stopped": "toy.ended", "failed": "toy.failed",
              "skipped": "toy.failed", "expired": "toy.expired"}
MENU_CHANGED = "menu.changed"
SHOW_CHANGED = "show.changed"
EVENT_TYPES = sorted({*PURCHASE_EVENTS.values(), QUEUE_ENTRY_COMPLETED, *REFUND_EVENTS.values(), QUEUE_CHANGED,
                      *TOY_EVENTS.values(), MENU_CHANGED, SHOW_CHANGED})


class OutboxEvent(Base):
    __tablename__ = "outbox_events"
    __table_args__ = (
        # The relay's work list: unnumbered rows, in insert order.
        Index("ix_outbox_events_unsequenced", "id", postgresql_where=text("seq IS NULL"),
              sqlite_where=text("seq IS NULL")),
    )

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    seq: Mapped[int | None] = mapped_column(BigInteger, unique=True)
    type: Mapped[str] = mapped_column(String(40))
    occurred_at: Mapped[datetime] = mapped_column(UTCDateTime)
    model_id: Mapped[uuid.UUID | None] = mapped_column(index=True)
    fan_id: Mapped[uuid.UUID | None] = mapped_column(index=True)
    purchase_id: Mapped[uuid.UUID | None] = mapped_column(index=True)
    payload: Mapped[dict] = mapped_column(JSON, default=dict)

    def as_message(self) -> dict:
        """The event as streams and webhooks carry it."""
        return {"id": self.seq, "type": self.type, "occurred_at": self.occurred_at.isoformat(),
                "model_id": _str(self.model_id), "fan_id": _str(self.fan_id),
                "purchase_id": _str(self.purchase_id), "data": self.payload or {}}


def _str(value):
    return str(value) if value is not None else None


def emit(session, type_: str, *, model_id=None, fan_id=None, purchase_id=None, at=None, **payload) -> OutboxEvent:
    """Write one event in the caller's transaction (it commits or rolls back with the change it describes)."""
    event = OutboxEvent(type=type_, occurred_at=at or utcnow(), model_id=model_id, fan_id=fan_id,
                        purchase_id=purchase_id, payload=_jsonable(payload))
    session.add(event)
    session.info["outbox_written"] = True  # the relay is woken after the commit (worker/handoff.py)
    return event


def _jsonable(payload: dict) -> dict:
    return json.loads(json.dumps({k: v for k, v in payload.items() if v is not None}, default=str))


def purchase_event(session, purchase, type_: str | None = None, at=None, **extra) -> OutboxEvent:
    """The event of a purchase's move to its current status (or `type_`): ids, the item, the price, the reason."""
    return emit(session, type_ or PURCHASE_EVENTS[purchase.status], model_id=purchase.model_id,
                fan_id=purchase.fan_id, purchase_id=purchase.id, at=at,
                status=purchase.status, item_id=purchase.item_id, item_name=purchase.item_name,
                token_value=purchase.token_value, transaction_type=purchase.transaction_type,
                anonymous=bool(purchase.anonymous), reason=purchase.failure_reason or purchase.refund_reason, **extra)


def queue_changed(session, model_id, at=None) -> OutboxEvent:
    """The model's open queue changed (an entry came, started or left): fans' positions may have moved."""
    return emit(session, QUEUE_CHANGED, model_id=model_id, at=at)


def sequence(session, limit: int = RELAY_BATCH) -> list[OutboxEvent]:
    """Number up to `limit` unnumbered events in insert order; the caller adds their webhook deliveries
    (models/webhooks.py) and commits, holding the relay's lock until then."""
    if session.bind.dialect.name == "postgresql":
        session.execute(select(func.pg_advisory_xact_lock(_RELAY_LOCK)))
    return sorted(session.scalars(_numbering(limit)), key=lambda event: event.seq)


@functools.lru_cache
def _numbering(limit: int):
    """One statement, built once (the relay runs after every settlement batch): the next `limit` unnumbered rows
    get last seq + 1, + 2 ... in insert order."""
    last = select(func.coalesce(func.max(OutboxEvent.seq), 0)).scalar_subquery()
    todo = (select(OutboxEvent.id, (last + func.row_number().over(order_by=OutboxEvent.id)).label("seq"))
            .where(OutboxEvent.seq.is_(None)).order_by(OutboxEvent.id).limit(limit).subquery())
    return (update(OutboxEvent).where(OutboxEvent.id == todo.c.id).values(seq=todo.c.seq)
            .returning(OutboxEvent).execution_options(synchronize_session=False))


def after(session, seq: int, limit: int = RELAY_BATCH, where=None) -> list[OutboxEvent]:
    """Numbered events after `seq`, in order (a stream's replay and gap fill)."""
    query = select(OutboxEvent).where(OutboxEvent.seq > seq).order_by(OutboxEvent.seq).limit(limit)
    if where is not None:
        query = query.where(where)
    return list(session.scalars(query))


def last_seq(session) -> int:
    return session.scalar(select(func.coalesce(func.max(OutboxEvent.seq), 0)))


def channel(database_url: str) -> str:
    """The pub/sub channel of the deployment whose outbox is at `database_url`. Pub/sub ignores Redis database
    numbers, so deployments sharing a Redis server (tests, bench, examples, staging) would read each other's
    numbers; the outbox's own address (host, port, database; no password) tells them apart."""
    url = make_url(database_url)
    home = f"{url.drivername.split('+')[0]}://{url.host or ''}:{url.port or ''}/{url.database or ''}"
    return CHANNEL_PREFIX + hashlib.sha256(home.encode()).hexdigest()[:16]


def publish(redis, channel_name: str, events) -> None:
    """Hand numbered events to the live streams (Redis pub/sub: no subscriber, no cost)."""
    pipe = redis.pipeline(transaction=False)
    for event in events:
        pipe.publish(channel_name, json.dumps(event.as_message()))
    pipe.execute()
