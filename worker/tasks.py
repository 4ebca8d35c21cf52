"""Celery tasks: thin callers of models/services. Each opens its own session and receives ids only."""
from __future__ import annotations

import logging
import time
import uuid
from collections import Counter
from datetime import timedelta

from sqlalchemy import or_, select

from models.infra.metrics import count_outcomes, count_settled
from models.ledger import lock_accounts
from models.lovense import LovenseActivation, activation_enabled
from models.purchases import OPEN_QUEUE_STATUSES, Purchase
from models.services import activations, escrow, performance_queue, settle_signal
from models.services.settlement import settle_pending
from models.services.verdicts import publish_verdicts
from models.types import utcnow

from .celery_app import celery, runtime

log = logging.getLogger(__name__)


def after_settlement(rt, purchases) -> None:
    """Side effects that follow a committed settlement; none of them can undo it."""
    count_settled(purchases)
    performance_queue.sync(purchases, rt.redis)  # before the verdict, so the waiting request finds its position
    publish_verdicts(rt.redis, purchases)
    # Queue OFF: the toy runs timing_offset ms after settlement (Queue ON: when the model starts the entry).
    _request_activations(p for p in purchases if p.status == "completed")


def after_queue_change(rt, purchases) -> None:
    """Side effects that follow a committed queue transition (start, complete, reject, cancel, deadline
    refund); none of them can undo it."""
    count_outcomes(purchases)
    performance_queue.sync(purchases, rt.redis)
    # A Queue ON item's toy runs timing_offset ms after the model starts the entry.
    _request_activations(p for p in purchases if p.status == "in_progress")


def _request_activations(purchases) -> None:
    for p in purchases:
        if activation_enabled(p.lovense_activation):
            request_activation(p.id, delay_ms=p.lovense_activation.get("timing_offset") or 0)


def request_activation(purchase_id, delay_ms: int = 0) -> None:
    """Ask for the purchase's toy activation in `delay_ms` ms. Safe to call more than once: one activation per
    purchase. Does nothing unless the purchase's lovense_activation is enabled; never raises."""
    try:
        activate_toy.apply_async(args=[str(purchase_id)], countdown=max(0, int(delay_ms or 0)) / 1000)
    except Exception:
        # A toy that does not buzz never undoes or blocks a purchase; an operator can re-send it.
        log.exception("activation hand-off failed", extra={"purchase_id": str(purchase_id)})


def outcome_of(p) -> str:
    return f"{p.status}:{p.failure_reason}" if p.failure_reason else p.status


def settle(purchase_ids=None, older_than=None) -> dict:
    """Settle the given pending purchases, or every pending one (older than `older_than`) in batches. Returns
    how many reached each outcome, e.g. {"completed": 3, "failed:insufficient_balance": 1} (what an operator
    reads as the task's result in Flower)."""
    rt = runtime()
    batch_size = rt.settings.settle_batch_size
    ids = [uuid.UUID(str(i)) for i in purchase_ids] if purchase_ids else None
    outcomes = Counter()
    while True:
        with rt.session_scope() as session:
            settled = settle_pending(session, rt.settings, ids, batch_size, older_than)
        after_settlement(rt, settled)
        outcomes.update(outcome_of(p) for p in settled)
        for p in settled:
            log.info("purchase settled", extra={"purchase_id": str(p.id), "status": p.status})
        if ids is not None or len(settled) < batch_size:
            return dict(outcomes)


@celery.task(name="perfmenu.settle_purchases")
def settle_purchases(purchase_ids=None) -> dict:
    """With ids: settle those. Without (the web's hand-off, models/services/settle_signal.py): settle whatever
    is pending, oldest first, lingering briefly for the next purchase when idle, until a claim made after the
    scheduled flag was dropped finds nothing."""
    if purchase_ids is not None:
        return settle(purchase_ids)
    rt = runtime()
    total = Counter()
    started = time.monotonic()
    try:
        while True:
            settle_signal.keep_scheduled(rt.redis)
            settled = settle()
            if not settled and not settle_signal.lingering(rt.redis, rt.settings.settle_linger_seconds, started):
                settle_signal.release_scheduled(rt.redis)
                settled = settle()
                if not settled:
                    return dict(total)
            total.update(settled)
    except BaseException:
        settle_signal.release_scheduled(rt.redis)
        raise


@celery.task(name="perfmenu.sweep_pending")
def sweep_pending() -> dict:
    """Beat's safety net: settle purchases left pending (crash between commit and enqueue, lost message)."""
    threshold = utcnow() - timedelta(seconds=runtime().settings.pending_sweep_after_seconds)
    return settle(older_than=threshold)


def sweep_deadlines(now=None) -> int:
    """Refund every open queue entry whose escrow deadline has passed, in batches. Rows another transaction
    holds (a model acting on them right now) are skipped and looked at again on the next run."""
    rt = runtime()
    batch_size = rt.settings.settle_batch_size
    now = now or utcnow()
    total = 0
    while True:
        with rt.session_scope() as session:
            due = list(session.scalars(
                select(Purchase)
                .where(Purchase.status.in_(OPEN_QUEUE_STATUSES), Purchase.escrow_deadline <= now)
                .order_by(Purchase.escrow_deadline)
                .limit(batch_size)
                .with_for_update(skip_locked=True)
            ))
            if due:
                # Every account of the batch locked at once, in id order (as settlement does): no deadlock.
                lock_accounts(session, {p.fan_id for p in due} | {p.model_id for p in due})
                for p in due:
                    escrow.refund(session, p, "deadline_passed", rt.settings.tz, now=now)
            session.commit()
        after_queue_change(rt, due)
        total += len(due)
        for p in due:
            log.info("escrow deadline passed: refunded", extra={"purchase_id": str(p.id)})
        if len(due) < batch_size:
            return total


@celery.task(name="perfmenu.sweep_escrow_deadlines")
def sweep_escrow_deadlines() -> int:
    return sweep_deadlines()


def reconcile() -> dict:
    """Repair every model's Redis queue from the database."""
    rt = runtime()
    with rt.session_scope() as session:
        totals = performance_queue.rebuild_all(session, rt.redis)
    repaired = totals["added"] or totals["fixed"] or totals["removed"]
    log.log(logging.INFO if repaired else logging.DEBUG, "queues reconciled", extra=totals)
    return totals


@celery.task(name="perfmenu.reconcile_queues")
def reconcile_queues() -> dict:
    return reconcile()


ACTIVATION_SWEEP_GRACE = timedelta(seconds=30)
ACTIVATION_SWEEP_WINDOW = timedelta(days=1)


def sweep_activations(now=None) -> int:
    """Beat's safety net for toy activations whose task was lost (a Redis restart empties the broker): ask
    again for every recent purchase that should have one and has no row, or whose pending row's lease ran out.
    Asking twice is safe: one activation per purchase, and a claimed row is left to its task."""
    now = now or utcnow()
    with runtime().session_scope() as session:
        missing = session.scalars(
            select(Purchase)
            .outerjoin(LovenseActivation, LovenseActivation.purchase_id == Purchase.id)
            .where(LovenseActivation.id.is_(None),
                   or_(Purchase.status == "completed", Purchase.started_at.is_not(None)),
                   Purchase.created_at > now - ACTIVATION_SWEEP_WINDOW,
                   Purchase.created_at < now - ACTIVATION_SWEEP_GRACE)
        ).all()
        due = [p.id for p in missing if activation_enabled(p.lovense_activation)]
        due += list(session.scalars(
            select(LovenseActivation.purchase_id).where(
                LovenseActivation.status == "pending",
                or_(LovenseActivation.locked_until.is_(None),
                    LovenseActivation.locked_until < now - ACTIVATION_SWEEP_GRACE))
        ))
    for purchase_id in due:
        request_activation(purchase_id)
    if due:
        log.info("toy activations asked for again", extra={"purchase_ids": [str(i) for i in due]})
    return len(due)


@celery.task(name="perfmenu.sweep_activations")
def sweep_activations_task() -> int:
    return sweep_activations()


@celery.task(name="perfmenu.activate_toy")
def activate_toy(purchase_id, claim=None) -> dict:
    """One step of a purchase's toy activation (models/services/activations.py); re-enqueues itself to retry.
    Returns the step's outcome and reason (`{"outcome": "skipped", "reason": "unpaired"}`) for Flower."""
    step = activations.run(runtime(), purchase_id, claim)
    if step.delay is not None:
        if celery.conf.task_always_eager:
            time.sleep(step.delay)  # embedded mode runs tasks inline, where a countdown would be ignored
        activate_toy.apply_async(args=[str(purchase_id), step.claim], countdown=step.delay)
    return {"outcome": step.status, "reason": step.reason}
