"""Settlement: the worker's authoritative step from `pending` to `completed`, `queued` or `failed`.

One transaction settles a batch: claim pending purchases with FOR UPDATE SKIP LOCKED (two workers never
settle the same purchase, and neither waits for the other), lock every account involved in account-id order,
re-check what intake only prechecked (models.purchases.refusal), post the ledger rows and set the status. A purchase that is no longer
`pending` is never claimed, and the ledger's UNIQUE (purchase, kind) backs that up, so a redelivered task,
a retry or a crash half-way changes the books at most once.
"""
from __future__ import annotations

import functools

from sqlalchemy import bindparam, func, select

from ..audit import audit
from ..db import one_of
from ..ledger import lock_accounts, post
from ..menus import Menu, MenuItem
from ..outbox import purchase_event, queue_changed
from ..revenue import own_rate, pay_model, sale_rate
from ..shows import is_live, last_refund_all_end, live_required
from ..purchases import (
    OPEN_QUEUE_STATUSES,
    SETTLED_COUNTS_TOWARD_DAILY_LIMIT,
    Purchase,
    daily_count,
    escrow_deadline,
    refusal,
)
from ..types import utcnow
from ..users import User


def claim_pending(session, purchase_ids=None, limit: int = 100, older_than=None):
    """Lock up to `limit` pending purchases, oldest first, skipping rows another settler holds; each with its
    item and menu (not locked: settlement only reads them)."""
    params = {"limit": limit, "ids": purchase_ids, "older_than": older_than}
    return list(session.execute(_claim_query(purchase_ids is not None, older_than is not None), params))


@functools.lru_cache
def _claim_query(by_id: bool, by_age: bool):
    """The claim, built once per shape (settlement claims after every purchase at low rates)."""
    query = (
        select(Purchase, MenuItem, Menu)
        .join(MenuItem, MenuItem.id == Purchase.item_id)
        .join(Menu, Menu.id == MenuItem.menu_id)
        .where(Purchase.status == "pending")
    )
    if by_id:
        query = query.where(Purchase.id.in_(bindparam("ids", expanding=True)))
    if by_age:
        query = query.where(Purchase.created_at < bindparam("older_than"))
    return (query.order_by(Purchase.created_at).limit(bindparam("limit"))
            .with_for_update(skip_locked=True, of=Purchase))


# Built once, as intake's read is (building it cost as much as running it): per user of a batch, whether the
# account is active, the queue paused, the model live, when their last refund_all end was, their commission rate.
_FLAGS = select(User.id, User.is_active, User.queue_paused, is_live(User.id), last_refund_all_end(User.id),
                own_rate(User.id)).where(User.id.in_(bindparam("users", expanding=True)))


def settle_pending(session, settings, purchase_ids=None, limit: int = 100, older_than=None) -> list[Purchase]:
    """Settle up to `limit` pending purchases (all of `purchase_ids` that are still pending, if given) and
    commit. Returns the purchases this call settled."""
    claimed = claim_pending(session, purchase_ids, limit, older_than)
    if not claimed:
        session.rollback()
        return []
    purchases = [purchase for purchase, _item, _menu in claimed]
    users = {p.fan_id for p in purchases} | {p.model_id for p in purchases}
    accounts = lock_accounts(session, users)
    # Intake saw these accounts active; an admin may have deactivated one since (models/auth_sessions.py). A
    # model may have paused their queue or ended their show since, too.
    # One round trip for all of it, and the models' commission rates: settlement runs per small batch at low rates.
    flags = session.execute(_FLAGS, {"users": list(users)}).all()
    inactive = {row[0] for row in flags if not row[1]}
    paused = {row[0] for row in flags if row[2]}
    live = {row[0] for row in flags if row[3]}
    refund_all_ended = {row[0]: row[4] for row in flags if row[4] is not None}
    rates = {row[0]: sale_rate(row[5], settings.platform_fee_bps) for row in flags}
    now = utcnow()
    # Open queue entries per model, counted once per batch: the model's accounts are locked, so only this
    # batch adds entries until the commit, and it counts its own.
    queue_sizes: dict = {}
    for purchase, item, menu in claimed:
        reason = _refusal(session, settings, purchase, item, menu, accounts, queue_sizes, inactive, now,
                          live=purchase.model_id in live, queue_paused=purchase.model_id in paused,
                          refund_all_end=refund_all_ended.get(purchase.model_id))
        if reason is not None:
            purchase.transition("failed", now, reason=reason)
        elif purchase.transaction_type == "immediate":
            purchase.fee_bps = rates[purchase.model_id]
            _transfer(session, purchase, accounts, now, settings.tz)
        else:
            purchase.fee_bps = rates[purchase.model_id]
            _hold_in_escrow(session, purchase, accounts, now)
            queue_sizes[purchase.model_id] += 1
        audit(session, f"purchase.{purchase.status}", purchase.id, reason=reason)
        purchase_event(session, purchase, at=now)
        # No flush per purchase: the session autoflushes before a daily-limit count, so later purchases of the
        # batch see this one there, and otherwise the rows go out in a few batched statements.
    for model_id in sorted({p.model_id for p in purchases if p.status == "queued"}, key=str):
        queue_changed(session, model_id, at=now)
    session.commit()
    return purchases


def _refusal(session, settings, purchase, item, menu, accounts, queue_sizes, inactive, now, live: bool,
             queue_paused: bool, refund_all_end) -> str | None:
    """The purchase rules under lock. The purchase itself is still pending, so the daily count takes settled
    purchases only; a model's queue size is counted once per batch (`queue_sizes`). The menu's visibility is
    asked again: a subscription may have lapsed or a whitelist entry gone since intake."""

    def queue_size() -> int:
        if purchase.model_id not in queue_sizes:
            queue_sizes[purchase.model_id] = open_queue_size(session, purchase.model_id)
        return queue_sizes[purchase.model_id]

    return refusal(
        buyer_active=purchase.fan_id not in inactive,
        available=(item.is_active and menu.is_active and purchase.model_id not in inactive
                   and menu.visible_to(session, purchase.fan_id, "fan", now)),
        # A Queue ON purchase made before its model's last refund_all end: that end refunded the queue.
        show_ended=(purchase.transaction_type == "queued" and refund_all_end is not None
                    and purchase.created_at <= refund_all_end),
        live_required=live_required(purchase.transaction_type == "queued", menu.live_only,
                                    settings.queue_off_needs_show),
        live=live,
        queue_paused=queue_paused,
        price=purchase.token_value,
        balance=accounts[(purchase.fan_id, "wallet")].balance,
        daily_max=item.max_daily_purchases,
        bought_today=lambda: daily_count(session, purchase.fan_id, purchase.item_id, purchase.purchase_day,
                                         SETTLED_COUNTS_TOWARD_DAILY_LIMIT),
        queued=purchase.transaction_type == "queued",
        queue_size=queue_size,
        queue_capacity=settings.queue_capacity,
    )


def open_queue_size_query(model_id):
    return select(func.count()).select_from(Purchase).where(Purchase.model_id == model_id,
                                                            one_of(Purchase.status, OPEN_QUEUE_STATUSES))


def open_queue_size(session, model_id) -> int:
    return session.scalar(open_queue_size_query(model_id))


def award_points(session, purchase, accounts) -> None:
    if purchase.loyalty_points > 0:
        post(
            session,
            "loyalty_award",
            accounts[(purchase.model_id, "points_issuer")],
            accounts[(purchase.fan_id, "loyalty")],
            purchase.loyalty_points,
            purchase_id=purchase.id,
        )


def _transfer(session, purchase, accounts, now, tz) -> None:
    """Queue OFF: the fan pays the model (and the platform its fee) at once and earns the item's points."""
    pay_model(session, "purchase", accounts[(purchase.fan_id, "wallet")], purchase, accounts, now, tz)
    award_points(session, purchase, accounts)
    purchase.transition("completed", now)


def _hold_in_escrow(session, purchase, accounts, now) -> None:
    """Queue ON: the tokens wait in the model's escrow until the entry is performed or refunded."""
    post(
        session,
        "escrow_hold",
        accounts[(purchase.fan_id, "wallet")],
        accounts[(purchase.model_id, "escrow")],
        purchase.token_value,
        purchase_id=purchase.id,
    )
    purchase.escrow_deadline = escrow_deadline(purchase.created_at, purchase.delivery_hours)
    purchase.transition("queued", now)
