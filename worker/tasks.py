"""Celery tasks: thin callers of models/services. Each opens its own session and receives ids only."""
from __future__ import annotations

import logging
import time
import uuid
from collections import Counter
from datetime import timedelta

from celery import signals
from sqlalchemy import event, or_, select
from sqlalchemy.orm import Session

from models import outbox, webhooks
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
    # Queue OFF: the toy's slot is due timing_offset ms after settlement (Queue ON: when the model starts the entry);
    # before the verdict, so the answer shows the fan's place on the toy's timeline.
    _request_activations(rt, [p for p in purchases if p.status == "completed"])
    publish_verdicts(rt.redis, purchases)


def after_queue_change(rt, purchases) -> None:
    """Side effects that follow a committed queue transition (start, complete, reject, cancel, deadline
    refund); none of them can undo it."""
    count_outcomes(purchases)
    performance_queue.sync(purchases, rt.redis)
    # A Queue ON item's toy slot is due timing_offset ms after the model starts the entry.
    _request_activations(rt, [p for p in purchases if p.status == "in_progress"])
    # A started entry refunded (reject, admin, deadline): its buzz stops, or its waiting slot leaves the timeline.
    for p in purchases:
        if p.status == "refunded" and p.started_at is not None and activation_enabled(p.lovense_activation):
            request_stop(p.model_id, p.id, f"purchase_{p.status}")


def _request_activations(rt, purchases) -> None:
    """Give each purchase's activation its slot on the model's timeline, in this order (settlement order), and ask
    for it at the slot's start. If the slots cannot be written now, the task gives them when it runs."""
    purchases = [p for p in purchases if activation_enabled(p.lovense_activation)]
    if not purchases:
        return
    slots = {}
    try:
        with rt.session_scope() as session:
            slots = activations.schedule_all(session, purchases)
            session.commit()
    except Exception:
        log.exception("toy slots not scheduled", extra={"purchase_ids": [str(p.id) for p in purchases]})
    for p in purchases:
        request_activation(p.id, at=slots.get(p.id))


def request_activation(purchase_id, at=None) -> None:
    """Ask for the purchase's toy activation at `at` (its slot's start; None: now). Safe to call more than once: one
    activation per purchase. Does nothing unless the purchase's lovense_activation is enabled; never raises."""
    countdown = max(0.0, (at - utcnow()).total_seconds()) if at is not None else 0
    try:
        activate_toy.apply_async(args=[str(purchase_id)], countdown=countdown)
    except Exception:
        # A toy that does not buzz never undoes or blocks a purchase; beat's sweep or an operator asks again.
        log.exception("activation hand-off failed", extra={"purchase_id": str(purchase_id)})


def request_stop(model_id, purchase_id=None, reason: str = "stopped", uid: str | None = None) -> None:
    """Ask for a Stop of the model's playing buzz (only purchase_id's, if given); never raises."""
    try:
        stop_toy.apply_async(args=[str(model_id), str(purchase_id) if purchase_id else None, reason, uid])
    except Exception:
        # The buzz ends on its own at its slot's end.
        log.exception("stop hand-off failed", extra={"model_id": str(model_id)})


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
        relay_due(rt)
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
            total.update(settle())
            # Every purchase committed after that claim began pushed a wake-up: wait for one rather than claim
            # again at once (at steady low rates that claim found nothing, a transaction per purchase).
            if settle_signal.lingering(rt.redis, rt.settings.settle_linger_seconds, started):
                continue
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
                    escrow.refund(session, p, "deadline_passed", rt.settings.tz, "deadline", now=now)
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
TIMELINE_SWEEP_GRACE = timedelta(seconds=3)  # a model's first waiting slot this late with no live task lost it


def sweep_activations(now=None, rt=None, missing=True) -> int:
    """Beat's safety net for toy activations whose task was lost (a Redis restart empties the broker, a worker
    died). Every run asks again for each model's first waiting slot once it is TIMELINE_SWEEP_GRACE past its start
    and unclaimed (or its lease ran out): a cheap query (pending rows; "first" on the model/status/start index), run
    every TIMELINE_SWEEP_INTERVAL_SECONDS (`perfmenu.sweep_timelines`), so a lost follow-up stalls a timeline for
    seconds, not minutes. With `missing` (`perfmenu.sweep_activations`, every ACTIVATION_SWEEP_INTERVAL_SECONDS) it
    also asks for every recent purchase that should have an activation and has no row, and for any pending row
    overdue by ACTIVATION_SWEEP_GRACE; that reads the last day's purchases, so it runs less often. Asking twice is
    safe: one activation per purchase, a claimed row is left to its task, and a slot that is not first on its
    timeline waits. With the kill switch on, the full run stops playing toys."""
    rt = rt or runtime()
    now = now or utcnow()
    overdue = now - ACTIVATION_SWEEP_GRACE
    playing = []
    with rt.session_scope() as session:
        due = activations.stalled_slots(session, now - TIMELINE_SWEEP_GRACE, now)
        if missing:
            without_row = session.scalars(
                select(Purchase)
                .outerjoin(LovenseActivation, LovenseActivation.purchase_id == Purchase.id)
                .where(LovenseActivation.id.is_(None),
                       or_(Purchase.status == "completed", Purchase.started_at.is_not(None)),
                       Purchase.created_at > now - ACTIVATION_SWEEP_WINDOW,
                       Purchase.created_at < overdue)
            ).all()
            due += [p.id for p in without_row if activation_enabled(p.lovense_activation)]
            due += list(session.scalars(
                select(LovenseActivation.purchase_id).where(
                    LovenseActivation.status == "pending",
                    or_(LovenseActivation.starts_at.is_(None), LovenseActivation.starts_at < overdue),
                    or_(LovenseActivation.locked_until.is_(None), LovenseActivation.locked_until < overdue))
            ))
            playing = [] if rt.settings.lovense_enabled else activations.playing_models(session, now)
    due = list(dict.fromkeys(due))
    for purchase_id in due:
        request_activation(purchase_id)
    for model_id in playing:
        request_stop(model_id, reason="disabled")
    if due:
        log.info("toy activations asked for again", extra={"purchase_ids": [str(i) for i in due]})
    return len(due)


@celery.task(name="perfmenu.sweep_activations")
def sweep_activations_task() -> int:
    return sweep_activations()


@celery.task(name="perfmenu.sweep_timelines")
def sweep_timelines_task() -> int:
    return sweep_activations(missing=False)


@celery.task(name="perfmenu.activate_toy")
def activate_toy(purchase_id, claim=None) -> dict:
    """One step of a purchase's toy activation (models/services/activations.py); re-enqueues itself to retry.
    Returns the step's outcome and reason (`{"outcome": "skipped", "reason": "unpaired"}`) for Flower."""
    step = activations.run(runtime(), purchase_id, claim)
    return _after_step(step, activate_toy, [str(purchase_id), step.claim])


def _after_step(step, task, args) -> dict:
    """What a toy task does after one step: run again after `step.delay` (with these args), and when a slot was
    sent or left the timeline, ask for the model's next waiting slot at its (new) start. Returns the step's
    outcome and reason for Flower."""
    if step.delay is not None:
        if celery.conf.task_always_eager:
            time.sleep(step.delay)  # embedded mode runs tasks inline, where a countdown would be ignored
        task.apply_async(args=args, countdown=step.delay)
    if step.follow is not None:
        request_activation(step.follow[0], at=step.follow[1])
    return {"outcome": step.status, "reason": step.reason}


@celery.task(name="perfmenu.stop_toy")
def stop_toy(model_id, purchase_id=None, reason="stopped", uid=None) -> dict:
    """Stop a model's playing buzz (models/services/activations.stop); re-enqueues itself while a command is in
    flight."""
    step = activations.stop(runtime(), model_id, purchase_id, reason, uid)
    return _after_step(step, stop_toy, [model_id, purchase_id, reason, uid])


# Events out (models/outbox.py): the relay numbers committed events, adds their webhook deliveries and publishes
# them to the live streams.
RELAY_SCHEDULED_KEY = "perfmenu:outbox:relay-scheduled"
RELAY_SCHEDULED_TTL_SECONDS = 5


def request_relay(rt) -> None:
    """After a commit that wrote events: publish a relay task unless one is scheduled and has not started (it
    will see these events). Never raises: beat's relay run is the safety net."""
    try:
        if rt.settings.embedded or rt.redis.set(RELAY_SCHEDULED_KEY, "1", nx=True, ex=RELAY_SCHEDULED_TTL_SECONDS):
            relay_outbox.apply_async()
    except Exception:
        log.exception("relay hand-off failed")


_relay_due = False  # a commit in this worker process wrote events that no relay has taken yet


@event.listens_for(Session, "after_commit")
def _relay_after_commit(session) -> None:
    global _relay_due
    if not session.info.pop("outbox_written", False) or celery.runtime is None:
        return
    if celery.current_task is not None and not celery.conf.task_always_eager:
        # Inside a task (settlement, the toy, a sweep): this process relays once the task's own side effects are
        # done (relay_due). A relay task would wait in the queue behind the very settle tasks that wrote the events.
        _relay_due = True
        return
    request_relay(celery.runtime)


@signals.task_postrun.connect
def _relay_at_task_end(**_) -> None:
    relay_due(celery.runtime)


def relay_due(rt) -> None:
    """Relay what this process's task committed, after its verdicts and hand-offs (a purchase's answer does not
    wait for it); if that fails, a relay task does it. Never raises."""
    global _relay_due
    if not _relay_due or rt is None:
        return
    _relay_due = False
    try:
        relay(rt)
    except Exception:
        log.exception("inline relay failed; asking for a relay task")
        request_relay(rt)


@event.listens_for(Session, "after_rollback")
def _nothing_to_relay(session) -> None:
    session.info.pop("outbox_written", None)


def relay(rt) -> int:
    """Number, fan out and publish every unnumbered event, in batches; returns how many."""
    total = 0
    while True:
        with rt.session_scope() as session:
            events = outbox.sequence(session)
            endpoints = webhooks.add_deliveries(session, events) if events else set()
            session.commit()
        if not events:
            return total
        total += len(events)
        try:
            outbox.publish(rt.redis, rt.events_channel, events)
        except Exception:
            # The streams read what they missed from the database (web/events.py).
            log.exception("events not published", extra={"first": events[0].seq, "last": events[-1].seq})
        for endpoint_id in endpoints:
            request_webhook_delivery(endpoint_id)
        if len(events) < outbox.RELAY_BATCH:
            return total


@celery.task(name="perfmenu.relay_outbox")
def relay_outbox() -> int:
    rt = runtime()
    try:
        rt.redis.delete(RELAY_SCHEDULED_KEY)  # a commit from now on schedules another run
    except Exception:
        log.exception("relay flag not cleared")  # it expires on its own
    return relay(rt)


# Webhook delivery (models/webhooks.py): one loop per endpoint, on the `webhooks` queue and its own worker line
# (Procfile), so settlement never waits on an endpoint and an endpoint's run holds one of that pool's processes.
FOLLOW_UP_MAX_SECONDS = 60  # a retry due sooner gets a run with a countdown; a later one is beat's dispatch's
FOLLOW_UP_SLACK_SECONDS = 0.1  # the countdown run comes just after the endpoint's backoff ends, never before


def request_webhook_delivery(endpoint_id) -> None:
    """Ask for a run of the endpoint's delivery loop, unless one is scheduled and has not started (it will see
    what is due) or the endpoint is backing off. Never raises: beat's dispatch finds every due delivery."""
    try:
        rt = runtime()
        if webhooks.promise_run(rt.redis, endpoint_id):
            try:
                deliver_webhooks.apply_async(args=[str(endpoint_id)])
            except Exception:
                webhooks.clear_scheduled(rt.redis, endpoint_id)  # the next request publishes
                raise
    except Exception:
        log.exception("webhook hand-off failed", extra={"endpoint_id": str(endpoint_id)})


@celery.task(name="perfmenu.deliver_webhooks")
def deliver_webhooks(endpoint_id) -> dict:
    """One run of the endpoint's delivery loop (models/webhooks.deliver_due), then what follows it: a retry
    due soon (an unreachable endpoint's, or an event's it refused) gets a run with a countdown; a run whose time was up, or that went idle while a delivery came
    due (its request found the lock taken), asks for the next. Returns the run's outcome for Flower."""
    rt = runtime()
    endpoint_id = uuid.UUID(str(endpoint_id))
    try:
        webhooks.clear_scheduled(rt.redis, endpoint_id)
    except Exception:
        log.exception("webhook run flag not cleared")  # it expires on its own
    run = webhooks.deliver_due(rt, endpoint_id)
    if run.outcome == "more" or run.outcome == "idle" and _webhook_due(rt, endpoint_id):
        request_webhook_delivery(endpoint_id)
    elif run.retry_in is not None and run.retry_in <= FOLLOW_UP_MAX_SECONDS:
        # Embedded mode runs tasks inline and ignores a countdown: its retries wait for the next event.
        if not celery.conf.task_always_eager:
            try:
                deliver_webhooks.apply_async(args=[str(endpoint_id)],
                                             countdown=run.retry_in + FOLLOW_UP_SLACK_SECONDS)
            except Exception:
                log.exception("webhook retry not scheduled", extra={"endpoint_id": str(endpoint_id)})
    return {"outcome": run.outcome, "delivered": run.delivered}


def _webhook_due(rt, endpoint_id) -> bool:
    with rt.session_scope() as session:
        return webhooks.has_due(session, endpoint_id)


def dispatch_webhooks(rt=None) -> dict:
    """Beat's safety net for webhooks: deliveries past their retry period become dead, and every endpoint with a
    delivery due gets a run (a run lost with its worker, a retry later than a countdown's reach)."""
    rt = rt or runtime()
    with rt.session_scope() as session:
        dead = webhooks.mark_overdue_dead(session, rt.settings)
        session.commit()
        endpoint_ids = webhooks.due_endpoints(session)
    for endpoint_id in endpoint_ids:
        request_webhook_delivery(endpoint_id)
    return {"dead": dead, "endpoints": len(endpoint_ids)}


@celery.task(name="perfmenu.dispatch_webhooks")
def dispatch_webhooks_task() -> dict:
    return dispatch_webhooks()
