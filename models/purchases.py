"""Purchases, their state machine and the rules of a purchase (docs/architecture.md, "The purchase")."""
from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import date, datetime, timedelta

from sqlalchemy import (
    JSON,
    CheckConstraint,
    Date,
    ForeignKey,
    Index,
    Integer,
    String,
    UniqueConstraint,
    func,
    select,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column

from .db import Base, one_of
from .types import UTCDateTime, str_enum, utcnow

STATUSES = ("pending", "queued", "in_progress", "completed", "failed", "refunded")
TRANSACTION_TYPES = ("immediate", "queued")
# Purchases that use up a fan's daily allowance for an item (failed and refunded ones give it back).
COUNTS_TOWARD_DAILY_LIMIT = ("pending", "queued", "in_progress", "completed")
SETTLED_COUNTS_TOWARD_DAILY_LIMIT = ("queued", "in_progress", "completed")
OPEN_QUEUE_STATUSES = ("queued", "in_progress")
# Hours a Queue ON entry may wait to be performed before its escrow goes back to the fan, when neither the item
# nor its menu says (a menu's delivery_hours_default starts at this value).
DEFAULT_DELIVERY_HOURS = 24
# Why a purchase is refused (at intake or at settlement), in the order the rules are checked.
REFUSAL_REASONS = ("account_inactive", "item_unavailable", "show_ended", "model_not_live", "queue_paused",
                   "insufficient_balance", "daily_limit_reached", "queue_full")
NOTE_MAX = 280  # a purchase's note to the model, in characters

TRANSITIONS = {
    "pending": {"completed", "queued", "failed"},
    "queued": {"in_progress", "refunded"},
    "in_progress": {"completed", "refunded"},
}
_TIMESTAMP_FOR = {
    "queued": "settled_at",
    "in_progress": "started_at",
    "completed": "completed_at",
    "failed": "failed_at",
    "refunded": "refunded_at",
}


class InvalidTransition(Exception):
    def __init__(self, current: str, wanted: str):
        super().__init__(f"cannot go from {current} to {wanted}")
        self.current = current
        self.wanted = wanted


class Purchase(Base):
    __tablename__ = "purchases"
    __table_args__ = (
        UniqueConstraint("fan_id", "idempotency_key"),
        CheckConstraint("token_value > 0", name="token_value_positive"),
        CheckConstraint("loyalty_points >= 0", name="points_non_negative"),
        Index("ix_purchases_status_created", "status", "created_at"),
        Index("ix_purchases_daily", "fan_id", "item_id", "purchase_day"),
        Index("ix_purchases_fan_created", "fan_id", "created_at"),
        Index("ix_purchases_model_status", "model_id", "status"),
        Index("ix_purchases_model_completed", "model_id", "completed_at"),  # a model's sales in a period
        Index("ix_purchases_show", "show_id", postgresql_where=text("show_id IS NOT NULL"),
              sqlite_where=text("show_id IS NOT NULL")),  # a show's sales
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    fan_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id"))
    model_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id"))
    menu_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("menus.id"))
    item_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("menu_items.id"))
    # Snapshot of the item when bought: later edits never change a bought item.
    item_name: Mapped[str] = mapped_column(String(65))
    token_value: Mapped[int] = mapped_column(Integer)
    loyalty_points: Mapped[int] = mapped_column(Integer)
    estimated_duration_minutes: Mapped[int] = mapped_column(Integer, default=0)
    delivery_hours: Mapped[int | None] = mapped_column(Integer)
    lovense_activation: Mapped[dict | None] = mapped_column(JSON)
    transaction_type: Mapped[str] = mapped_column(str_enum(*TRANSACTION_TYPES, name="transaction_type"))
    # Queue ON ordering key: the price under `priority` menus, 0 under `fifo` (then arrival order decides).
    queue_priority: Mapped[int] = mapped_column(Integer, default=0)
    status: Mapped[str] = mapped_column(str_enum(*STATUSES, name="purchase_status"), default="pending")
    failure_reason: Mapped[str | None] = mapped_column(String(40))
    refund_reason: Mapped[str | None] = mapped_column(String(40))
    idempotency_key: Mapped[str | None] = mapped_column(String(128))
    # The client's own small JSON object (the seed API's `metadata`), stored and returned as sent.
    client_metadata: Mapped[dict | None] = mapped_column("metadata", JSON)
    # The fan's note to the model (plain text, shown escaped) and whether the fan stays anonymous: the overlay,
    # other fans and the model see "anonymous"; the ledger and admins still know who bought.
    note: Mapped[str | None] = mapped_column(String(NOTE_MAX))
    anonymous: Mapped[bool] = mapped_column(default=False)
    # The model's show that was open (live or paused) when the purchase was made: sales by show.
    show_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("shows.id"))
    purchase_day: Mapped[date] = mapped_column(Date)  # calendar day in the configured time zone
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    settled_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    completed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    failed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    refunded_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    escrow_deadline: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # The platform's commission: the rate when settlement accepted the sale, the fee when it completed.
    fee_bps: Mapped[int | None] = mapped_column(Integer)
    platform_fee: Mapped[int | None] = mapped_column(Integer)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)

    def transition(self, wanted: str, now: datetime | None = None, reason: str | None = None) -> None:
        """Move to `wanted` if the state machine allows it, stamping the time of the transition."""
        if wanted not in TRANSITIONS.get(self.status, ()):
            raise InvalidTransition(self.status, wanted)
        now = now or utcnow()
        if self.status == "pending":
            self.settled_at = now
        setattr(self, _TIMESTAMP_FOR[wanted], now)
        if wanted == "failed":
            self.failure_reason = reason
        elif wanted == "refunded":
            self.refund_reason = reason
        self.status = wanted

    def same_request(self, menu_id: uuid.UUID, item_id: uuid.UUID) -> bool:
        return self.menu_id == menu_id and self.item_id == item_id


def purchase_day_of(moment: datetime, tz) -> date:
    return moment.astimezone(tz).date()


def daily_count_query(fan_id, item_id, day, statuses=COUNTS_TOWARD_DAILY_LIMIT):
    """How many of an item a fan bought on a day, counting toward the daily limit."""
    return select(func.count()).select_from(Purchase).where(
        Purchase.fan_id == fan_id,
        Purchase.item_id == item_id,
        Purchase.purchase_day == day,
        one_of(Purchase.status, statuses),
    )


def daily_count(session, fan_id, item_id, day: date, statuses=COUNTS_TOWARD_DAILY_LIMIT) -> int:
    return session.scalar(daily_count_query(fan_id, item_id, day, statuses))


def refusal(
    *,
    buyer_active: bool,
    available: bool,
    show_ended: bool = False,
    live_required: bool,
    live: bool,
    queue_paused: bool,
    price: int,
    balance: int | None,
    daily_max: int | None,
    bought_today: Callable[[], int],
    queued: bool,
    queue_size: Callable[[], int],
    queue_capacity: int,
) -> str | None:
    """Why a purchase may not be accepted (one of REFUSAL_REASONS), or None if it may.

    The one home of the purchase rules: intake calls it as a precheck, settlement again under the fan's and the
    model's locks, where its answer is final. `bought_today` (the fan's purchases of the item that count toward
    the daily limit) and `queue_size` (the model's open queue entries) are asked only when the rule needs them,
    since each may cost a query. A missing balance (no wallet) refuses like an empty one. `available` covers the
    item, its menu, its model's account and whether the fan may see the menu.

    `live_required` (models.shows.live_required) and `live`: whether the item needs the model live, and whether
    they are. `queue_paused`: the model takes no new Queue ON entries for now. `show_ended` (settlement only): a
    Queue ON purchase made before its model ended a show with refund_all, which refunded the queue."""
    if not buyer_active:
        return "account_inactive"
    if not available:
        return "item_unavailable"
    if show_ended:
        return "show_ended"
    if live_required and not live:
        return "model_not_live"
    if queued and queue_paused:
        return "queue_paused"
    if balance is None or balance < price:
        return "insufficient_balance"
    if daily_max is not None and bought_today() >= daily_max:
        return "daily_limit_reached"
    if queued and queue_size() >= queue_capacity:
        return "queue_full"
    return None


def delivery_hours_for(item_hours: int | None, menu_hours: int | None) -> int:
    """The hours a Queue ON purchase may wait: the item's own, else its menu's default, else the platform's."""
    return item_hours or menu_hours or DEFAULT_DELIVERY_HOURS


def escrow_deadline(created_at: datetime, delivery_hours: int | None) -> datetime:
    """When a queued purchase's escrow goes back to the fan if the model has not completed it."""
    return created_at + timedelta(hours=delivery_hours or DEFAULT_DELIVERY_HOURS)
