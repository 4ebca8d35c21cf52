"""A model's show: start (or resume), pause, end; ending can refund every queued entry at once
(docs/architecture.md, "Shows"). `start`, `pause` and `end` run in the caller's transaction, which the caller
commits; `refund_queued` commits one transaction per entry, and the caller then syncs the Redis queue with the
purchases it returns."""
from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from ..audit import audit
from ..ledger import lock_accounts
from ..outbox import SHOW_CHANGED, emit
from ..purchases import Purchase
from ..shows import Show, open_show
from ..types import utcnow
from . import escrow

SHOW_ENDED = "show_ended"  # the refund reason of the entries a show's end refunds


class NoOpenShow(Exception):
    """The model has no open show (or none in the state the action needs)."""


def _changed(session, show: Show, actor_id, now, **extra) -> None:
    audit(session, f"show.{show.status}", show.id, actor_id, **extra)
    emit(session, SHOW_CHANGED, model_id=show.model_id, at=now, show_id=show.id, status=show.status, **extra)


def start(session, model_id, actor_id=None) -> Show:
    """Go live: resume the paused show, or open a new one. Live already: nothing changes."""
    now = utcnow()
    show = open_show(session, model_id, lock=True)
    if show is not None and show.status == "live":
        return show
    if show is None:
        show = Show(model_id=model_id, status="live", started_at=now)
        session.add(show)
        try:
            session.flush()  # the partial unique index: a concurrent start won
        except IntegrityError:
            session.rollback()
            return open_show(session, model_id)
    else:
        show.status, show.paused_at = "live", None
    _changed(session, show, actor_id, now)
    return show


def pause(session, model_id, actor_id=None) -> Show:
    """A break: not live (Queue OFF and live-only items are refused) until the model starts again."""
    show = open_show(session, model_id, lock=True)
    if show is None:
        raise NoOpenShow()
    if show.status == "live":
        now = utcnow()
        show.status, show.paused_at = "paused", now
        _changed(session, show, actor_id, now)
    return show


def end(session, model_id, mode: str, actor_id=None) -> Show:
    """End the open show (committed by the caller before any refund: from then on the model is not live). With
    `mode` "refund_all", the caller then runs `refund_queued`, and settlement fails any Queue ON purchase made
    before the end that is still pending (reason show_ended): every entry bought before the end is refunded or
    never taken."""
    show = open_show(session, model_id, lock=True)
    if show is None:
        raise NoOpenShow()
    # Wait for any settlement batch holding the model's accounts: every batch after this commit sees the end
    # (a Queue ON purchase made before it fails with show_ended instead of joining the queue).
    lock_accounts(session, [model_id])
    now = utcnow()
    show.status, show.ended_at, show.end_mode, show.paused_at = "ended", now, mode, None
    _changed(session, show, actor_id, now, end_mode=mode)
    return show


def last_show(session, model_id) -> Show | None:
    return session.scalar(select(Show).where(Show.model_id == model_id).order_by(Show.started_at.desc()).limit(1))


def refund_queued(session, show: Show, tz, actor_id=None) -> list[Purchase]:
    """Refund, with reason `show_ended`, every entry of the model that was bought before the show ended and is
    still queued; an entry in progress stays for the model to complete or reject. One transaction per entry
    (committed here), locked in the order every queue action uses (the purchase, then its accounts), so a
    concurrent start, complete or cancel either finishes first (and its entry is no longer queued here) or waits.
    Running it again refunds only what is still queued: a crash half-way is finished by the next run."""
    ids = list(session.scalars(
        select(Purchase.id).where(Purchase.model_id == show.model_id, Purchase.status == "queued",
                                  Purchase.created_at <= show.ended_at).order_by(Purchase.id)))
    session.rollback()
    refunded = []
    for purchase_id in ids:
        purchase = escrow.lock_purchase(session, purchase_id)
        if purchase.status == "queued":
            escrow.refund(session, purchase, SHOW_ENDED, tz, "show", actor_id=actor_id)
            refunded.append(purchase)
        session.commit()
    return refunded
