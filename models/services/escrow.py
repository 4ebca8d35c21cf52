"""Queue ON money rules after settlement: start, release to the model, refund to the fan.

Each function runs inside the caller's transaction: it locks the purchase (FOR UPDATE, so two concurrent
actions on one entry serialize and the second sees the new status), locks the accounts in id order, checks the
state machine and posts the ledger rows. The caller commits, then updates Redis. An action on a purchase
that already moved raises InvalidTransition, which the API turns into 409.
"""
from __future__ import annotations

from sqlalchemy import select

from ..audit import audit
from ..ledger import lock_accounts, post
from ..outbox import QUEUE_ENTRY_COMPLETED, REFUND_EVENTS, purchase_event, queue_changed
from ..purchases import InvalidTransition, Purchase
from ..revenue import pay_model, record_refund
from ..types import utcnow

from .settlement import award_points


class AlreadyInProgress(Exception):
    """The model already has an entry in progress (one at a time)."""


def lock_purchase(session, purchase_id) -> Purchase | None:
    return session.scalar(select(Purchase).where(Purchase.id == purchase_id).with_for_update())


def start(session, purchase: Purchase, actor_id=None, now=None) -> None:
    """queued -> in_progress; at most one entry per model in progress."""
    if purchase.status != "queued":
        raise InvalidTransition(purchase.status, "in_progress")
    # Lock the model's accounts: serializes starts of one model, so "one in progress" holds under races.
    lock_accounts(session, [purchase.model_id])
    busy = session.scalar(
        select(Purchase.id).where(Purchase.model_id == purchase.model_id, Purchase.status == "in_progress")
    )
    if busy is not None:
        raise AlreadyInProgress(str(busy))
    now = now or utcnow()
    purchase.transition("in_progress", now)
    audit(session, "purchase.in_progress", purchase.id, actor_id)
    purchase_event(session, purchase, at=now)
    queue_changed(session, purchase.model_id, at=now)


def release(session, purchase: Purchase, tz, actor_id=None, now=None) -> None:
    """in_progress -> completed: escrow to the model's earnings (less the platform's fee), loyalty points to the
    fan. `tz`: the settings' time zone, for the earnings rollup's day."""
    if purchase.status != "in_progress":
        raise InvalidTransition(purchase.status, "completed")
    now = now or utcnow()
    accounts = lock_accounts(session, [purchase.fan_id, purchase.model_id])
    pay_model(session, "escrow_release", accounts[(purchase.model_id, "escrow")], purchase, accounts, now, tz)
    award_points(session, purchase, accounts)
    purchase.transition("completed", now)
    audit(session, "purchase.completed", purchase.id, actor_id)
    purchase_event(session, purchase, QUEUE_ENTRY_COMPLETED, at=now)
    queue_changed(session, purchase.model_id, at=now)


def refund(session, purchase: Purchase, reason: str, tz, by: str, actor_id=None, now=None) -> None:
    """queued | in_progress -> refunded: the whole escrow goes back to the fan's wallet (no fee is taken). `by`:
    who ended the entry (model, fan, admin, deadline), which names its event."""
    if purchase.status not in ("queued", "in_progress"):
        raise InvalidTransition(purchase.status, "refunded")
    now = now or utcnow()
    accounts = lock_accounts(session, [purchase.fan_id, purchase.model_id])
    post(session, "escrow_refund", accounts[(purchase.model_id, "escrow")],
         accounts[(purchase.fan_id, "wallet")], purchase.token_value, purchase_id=purchase.id, actor_id=actor_id)
    record_refund(session, purchase, now, tz)
    purchase.transition("refunded", now, reason=reason)
    audit(session, "purchase.refunded", purchase.id, actor_id, reason=reason)
    purchase_event(session, purchase, REFUND_EVENTS[by], at=now, by=by)
    queue_changed(session, purchase.model_id, at=now)
