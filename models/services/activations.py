"""Toy activations: one per purchase, on its model's timeline, one command in flight per model, a per-model rate
cap, retries (docs/architecture.md, "Lovense").

The timeline: `schedule` gives an activation a slot (starts_at..ends_at, as long as the toy will play it) at the end
of its model's timeline, in the order it is called (settlement order; Queue ON: when the model starts the entry).
A slot is sent only when it is the model's first waiting slot and its start has come. Whenever a slot is sent
(its end is now known) or leaves the timeline (failed, skipped, expired, stopped), `replan` lays the waiting slots
back to back again after the playing one, and the task asks for the new first slot at its start (`Next.follow`).
The database holds all of it, so a lost task, a restart or a duplicate neither skips, doubles nor stalls a slot.

`run(runtime, purchase_id, claim)` does one step for one purchase and returns what the task should do next:
- it gives the purchase a slot if it has none (a lost hand-off) and waits for its turn;
- a Queue OFF buzz more than LOVENSE_FRESHNESS_SECONDS late for its slot expires instead of playing late;
- it claims the row atomically (an UPDATE
  that only succeeds if the row is `pending` and unclaimed, or claimed by this task's own `claim` token, or its
  lease ran out), so a task delivered twice sends at most one command;
- skips (kill switch, no developer token, unpaired model) or fails (invalid snapshot) without sending;
- takes the model's Redis lock (one command in flight per model) and a slot of the model's rate cap; if
  either is busy it keeps the claim and asks to be run again shortly, without counting an attempt;
- marks the row `sending_since` and sends the command with no database transaction open, then records the attempt:
  `sent`, a retry after an exponential backoff with jitter (nothing reached Lovense: connect timeouts, refused
  connections; or it refused: HTTP 5xx, reply code 507; up to LOVENSE_MAX_ATTEMPTS), `unconfirmed` (the request went
  out and no answer came: a read timeout or a dropped connection), or `failed` with the last error code.
At most once: a send whose outcome is unknown is never repeated on its own, since the toy may be playing it. A
task that claims a row still marked `sending_since` knows its last holder died mid-send: the row becomes
`unconfirmed` (`worker_lost`) without a send. An operator may re-send an unconfirmed one.
Nothing here touches the purchase or the ledger: a toy failure never changes a settlement.
"""
from __future__ import annotations

import logging
import random
import time
import uuid
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import and_, func, or_, select, update

from ..audit import audit
from ..infra.metrics import LOVENSE_ATTEMPTS, LOVENSE_SLOT_LAG
from ..lovense import LovenseActivation, LovenseLink, activation_enabled, toy_unavailable
from ..menus import Menu, MenuItem
from ..outbox import TOY_EVENTS, emit
from ..purchases import Purchase
from ..types import utcnow
from ..users import User
from .lovense_api import STOP, InvalidActivation, build_command, client_for, played_ms

log = logging.getLogger(__name__)

# A Queue OFF purchase activates once completed; a Queue ON one once the model starts it.
ACTIVATABLE_STATUSES = ("completed", "in_progress")
LEASE_MARGIN_SECONDS = 30
BUSY_RETRY_SECONDS = 0.25  # the model's lock is held: try again soon

_RELEASE = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) else return 0 end"


@dataclass(frozen=True)
class Next:
    """What the task does after a step: stop (with the outcome's reason, if any), or run again after `delay`
    seconds holding `claim`."""

    status: str
    delay: float | None = None
    claim: str | None = None
    reason: str | None = None
    follow: tuple | None = None  # (purchase id, starts_at) of the model's first waiting slot, to be asked for


def backoff(attempt: int, settings) -> float:
    """Delay before retry number `attempt` (1-based): exponential, capped, with "equal jitter"."""
    ceiling = min(settings.lovense_backoff_max_seconds, settings.lovense_backoff_seconds * 2 ** (attempt - 1))
    return ceiling / 2 + random.uniform(0, ceiling / 2)


def _lock_key(model_id) -> str:
    return f"perfmenu:lovense:inflight:{model_id}"


def acquire_model_lock(redis, model_id, ttl_seconds: float) -> str | None:
    """One command in flight per model: a Redis lock that expires on its own if its holder dies."""
    token = uuid.uuid4().hex
    if redis.set(_lock_key(model_id), token, nx=True, px=max(1, int(ttl_seconds * 1000))):
        return token
    return None


def release_model_lock(redis, model_id, token: str) -> None:
    redis.eval(_RELEASE, 1, _lock_key(model_id), token)


def take_rate_slot(redis, model_id, limit: int, window_seconds: int, now: float | None = None) -> float:
    """A fixed-window counter of commands per model. Returns 0 if a slot was taken, else the seconds until
    the window ends."""
    now = time.time() if now is None else now
    window = int(now // window_seconds)
    key = f"perfmenu:lovense:rate:{model_id}:{window}"
    pipe = redis.pipeline(transaction=True)
    pipe.incr(key)
    pipe.expire(key, window_seconds + 1)
    count = pipe.execute()[0]
    if count <= limit:
        return 0.0
    return (window + 1) * window_seconds - now


A = LovenseActivation
WAITING = A.status == "pending"
PLAYED = ("sent", "unconfirmed")  # on the toy during their slot (unconfirmed: maybe; its slot is kept free anyway)


def _playing(now):
    """Rows whose buzz is on the toy now."""
    return and_(A.status.in_(PLAYED), A.ends_at > now)


def _lock_timeline(session, model_id) -> None:
    """Serialises every change of one model's timeline (the model's user row; SQLite serialises writes anyway)."""
    session.scalar(select(User.id).where(User.id == model_id).with_for_update())


def _row(session, purchase_id) -> LovenseActivation | None:
    return session.scalar(select(A).where(A.purchase_id == purchase_id))


def _slot_length(spec) -> timedelta:
    try:
        return timedelta(milliseconds=played_ms(spec))
    except InvalidActivation:
        return timedelta(0)  # run() fails it without sending


def schedule(session, purchase: Purchase, now=None) -> LovenseActivation:
    """The purchase's activation with a slot: a new one starts timing_offset ms from now or when the model's last
    waiting or playing slot ends, whichever is later. A row that has a slot keeps it. The caller commits."""
    now = now or utcnow()
    _lock_timeline(session, purchase.model_id)
    row = _row(session, purchase.id)
    if row is not None and row.starts_at is not None:
        return row
    if row is None:
        row = LovenseActivation(purchase_id=purchase.id, model_id=purchase.model_id, status="pending", attempts=0)
        session.add(row)
        session.flush()
    spec = purchase.lovense_activation or {}
    due = now + timedelta(milliseconds=max(0, int(spec.get("timing_offset") or 0)))
    tail = session.scalar(select(func.max(A.ends_at)).where(A.model_id == purchase.model_id, A.id != row.id,
                                                            or_(WAITING, _playing(now))))
    start = max(due, tail) if tail is not None else due
    row.due_at, row.scheduled_at, row.starts_at = due, start, start
    row.ends_at = start + _slot_length(spec)
    session.flush()
    return row


def schedule_all(session, purchases, now=None) -> dict:
    """`schedule` each purchase in the given order (settlement order); {purchase id: slot start}. Locks the
    models' timelines in id order first, so two callers never deadlock."""
    for model_id in sorted({p.model_id for p in purchases}, key=str):
        _lock_timeline(session, model_id)
    return {p.id: schedule(session, p, now).starts_at for p in purchases}


def replan(session, model_id, now=None) -> tuple | None:
    """Lay the model's waiting slots back to back again, in their order, after the playing one (or from now;
    never before a slot's due_at). Returns (purchase id, starts_at) of the first waiting slot, or None. The caller
    holds the timeline lock and commits."""
    now = now or utcnow()
    anchor = session.scalar(select(func.max(A.ends_at)).where(A.model_id == model_id, _playing(now))) or now
    anchor = max(anchor, now)
    first = None
    for row in session.scalars(select(A).where(A.model_id == model_id, WAITING, A.starts_at.is_not(None))
                               .order_by(A.starts_at, A.id)):
        length = row.ends_at - row.starts_at
        row.starts_at = max(row.due_at or now, anchor)
        row.ends_at = anchor = row.starts_at + length
        first = first or (row.purchase_id, row.starts_at)
    session.flush()
    return first


def _first_waiting(session, model_id):
    return session.scalar(select(A.purchase_id).where(A.model_id == model_id, WAITING, A.starts_at.is_not(None))
                          .order_by(A.starts_at, A.id).limit(1))


def stalled_slots(session, overdue, now=None) -> list:
    """Purchase ids of each model's first waiting slot if its start is before `overdue` and no live task holds it
    (unclaimed, or its lease ran out): its follow-up task was lost, and the timeline waits until it is asked for again.
    Reads the pending rows once (the earliest start per model), then each first slot on
    ix_lovense_activations_model_status_starts."""
    now = now or utcnow()
    first = select(A.model_id, func.min(A.starts_at).label("starts_at")).where(WAITING).group_by(A.model_id).subquery()
    return list(session.scalars(
        select(A.purchase_id).join(first, and_(A.model_id == first.c.model_id, A.starts_at == first.c.starts_at))
        .where(WAITING, A.starts_at < overdue, or_(A.claim_token.is_(None), A.locked_until < now))))


def timeline(session, model_id, now=None) -> list[dict]:
    """The model's timeline: what plays now, then what waits, in order, each with its purchase, fan and item; an
    anonymous buyer's fan id is null (the model reads this)."""
    now = now or utcnow()
    rows = session.execute(
        select(A, Purchase).join(Purchase, Purchase.id == A.purchase_id)
        .where(A.model_id == model_id, or_(and_(WAITING, A.starts_at.is_not(None)), _playing(now)))
        .order_by(A.starts_at, A.id)).all()
    return [{"purchase_id": a.purchase_id, "fan_id": None if p.anonymous else p.fan_id, "anonymous": p.anonymous,
             "item_id": p.item_id, "item_name": p.item_name,
             "status": "waiting" if a.status == "pending" else "playing", "position": i,
             "starts_at": a.starts_at, "ends_at": a.ends_at,
             "duration_seconds": (a.ends_at - a.starts_at).total_seconds()} for i, (a, p) in enumerate(rows)]


def slot_of(session, purchase_id, now=None) -> dict | None:
    """A purchase's toy activation as its fan sees it: status, and while it waits or plays, its place on the
    model's timeline (0: playing now; n: n slots ahead of it) and its slot."""
    now = now or utcnow()
    row = _row(session, purchase_id)
    if row is None:
        return None
    view = {"status": row.status, "position": None, "starts_at": row.starts_at, "ends_at": row.ends_at,
            "reason": row.last_error}
    on_timeline = row.starts_at is not None and (row.status == "pending" or
                                                 (row.status in PLAYED and row.ends_at > now))
    if row.status in PLAYED and on_timeline:
        view["status"] = "playing"
    if on_timeline:
        view["position"] = session.scalar(select(func.count()).select_from(A).where(
            A.model_id == row.model_id, or_(and_(WAITING, A.starts_at.is_not(None)), _playing(now)),
            or_(A.starts_at < row.starts_at, and_(A.starts_at == row.starts_at, A.id < row.id))))
    return view


def timeline_stats(session, now=None) -> dict:
    """For the metrics: waiting slots of all models, the longest model timeline and how late the most overdue
    waiting slot is (seconds past its start; 0 if none)."""
    now = now or utcnow()
    waiting = and_(WAITING, A.starts_at.is_not(None))
    per_model = select(func.count().label("n")).where(waiting).group_by(A.model_id).subquery()
    oldest = session.scalar(select(func.min(A.starts_at)).where(waiting))
    return {"waiting": session.scalar(select(func.count()).select_from(A).where(waiting)),
            "longest": session.scalar(select(func.coalesce(func.max(per_model.c.n), 0))),
            "lag": max(0.0, (now - oldest).total_seconds()) if oldest is not None else 0.0}


def _toy_event(session, row: LovenseActivation) -> None:
    """The outbox event of a buzz's outcome (models/outbox.py TOY_EVENTS), in the transaction that records it."""
    fan_id, anonymous = session.execute(
        select(Purchase.fan_id, Purchase.anonymous).where(Purchase.id == row.purchase_id)).one()
    # `anonymous` lets the model's stream blank the fan, as for the purchase's own events (web/events.py).
    emit(session, TOY_EVENTS[row.status], model_id=row.model_id, fan_id=fan_id, purchase_id=row.purchase_id,
         status=row.status, reason=row.last_error, starts_at=row.starts_at, ends_at=row.ends_at,
         anonymous=bool(anonymous))


def _lease(settings) -> float:
    """How long a claim holds a row: one send's timeouts and a margin."""
    return settings.lovense_connect_timeout + settings.lovense_read_timeout + LEASE_MARGIN_SECONDS


def _lock_seconds(settings) -> float:
    """How long the model's lock (one command in flight) outlives a send that died holding it."""
    return settings.lovense_connect_timeout + settings.lovense_read_timeout + 5


def _claim(session, purchase_id, mine: str | None, lease_seconds: float) -> str | None:
    now = utcnow()
    token = uuid.uuid4().hex
    free = or_(LovenseActivation.claim_token.is_(None), LovenseActivation.locked_until < now)
    if mine:
        # Not while a send of ours may be in flight: a redelivery of a task that died mid-send leaves the row to
        # the claim after the lease, which records it unconfirmed.
        free = or_(free, and_(LovenseActivation.claim_token == mine, LovenseActivation.sending_since.is_(None)))
    result = session.execute(
        update(LovenseActivation)
        .where(LovenseActivation.purchase_id == purchase_id, LovenseActivation.status == "pending", free)
        .values(claim_token=token, locked_until=now + timedelta(seconds=lease_seconds), updated_at=now)
        .execution_options(synchronize_session=False)
    )
    return token if result.rowcount == 1 else None


def _finish(runtime, purchase_id, claim: str, status: str, error: str | None = None,
            attempted: bool = False, started=None) -> Next:
    """Record a final outcome (sent, unconfirmed, failed, skipped, expired) if this task still holds the claim; a sent
    or unconfirmed slot plays from `started` for its length. Then the model's waiting slots move up (`replan`)."""
    now = utcnow()
    follow = None
    with runtime.session_scope() as session:
        model_id = session.scalar(select(A.model_id).where(A.purchase_id == purchase_id))
        _lock_timeline(session, model_id)
        row = session.scalar(select(A).where(A.purchase_id == purchase_id, A.claim_token == claim))
        if row is not None:
            row.status, row.last_error, row.claim_token, row.locked_until, row.sending_since, row.updated_at = \
                status, error, None, None, None, now
            if attempted:
                row.attempts, row.last_attempt_at = row.attempts + 1, now
            if status == "sent":
                row.sent_at = now
            if status in PLAYED:
                if row.starts_at is not None:
                    length = row.ends_at - row.starts_at
                    row.starts_at, row.ends_at = started, started + length
            session.flush()
            audit(session, f"lovense.{status}", purchase_id, error=error, attempts=row.attempts)
            _toy_event(session, row)
            follow = replan(session, model_id, now)
        session.commit()
    log.info("lovense activation %s", status, extra={"purchase_id": str(purchase_id), "error": error})
    return Next(status, reason=error, follow=follow)


def _again(runtime, purchase_id, claim: str, delay: float, lease: float, error: str | None = None) -> Next:
    """Keep the claim over `delay` seconds and ask to be run again; with `error`, count a failed attempt."""
    now = utcnow()
    values = {"locked_until": now + timedelta(seconds=delay + lease), "sending_since": None, "updated_at": now}
    if error is not None:
        values.update(attempts=LovenseActivation.attempts + 1, last_error=error, last_attempt_at=now)
    with runtime.session_scope() as session:
        session.execute(
            update(LovenseActivation)
            .where(LovenseActivation.purchase_id == purchase_id, LovenseActivation.claim_token == claim)
            .values(**values)
            .execution_options(synchronize_session=False)
        )
        session.commit()
    return Next("pending", delay, claim, error)


def _sending(runtime, purchase_id, model_id, claim: str, lease: float) -> Next | None:
    """Just before the command goes out, under the model's timeline lock: check that it is still this slot's turn
    (no other buzz of the model plays or is being sent, no slot waits before it, its start has come), then mark
    the row (and renew the lease for the send), so that if this task dies before recording the outcome the next
    claim knows the toy may have it. None: send now. Otherwise what to do instead. The turn was checked when the
    task took its claim, but a claim is kept across retries, and the Redis lock is gone after a Redis restart:
    this check, in the database, is the one that holds."""
    now = utcnow()
    with runtime.session_scope() as session:
        _lock_timeline(session, model_id)
        mine = A.purchase_id == purchase_id
        row = session.scalar(select(A).where(mine, A.claim_token == claim, A.status == "pending"))
        if row is None:
            return Next("duplicate")  # the claim ran out meanwhile: its new holder sends it
        others = and_(A.model_id == model_id, A.id != row.id)
        busy_until = session.scalar(select(func.max(A.ends_at)).where(others, _playing(now)))
        # Another send still under way (a dead sender's mark counts only as long as a send can take).
        in_flight = session.scalar(select(A.id).where(
            others, WAITING, A.sending_since > now - _send_window(runtime.settings)).limit(1))
        if in_flight is not None or busy_until is not None:
            wait = BUSY_RETRY_SECONDS if busy_until is None else (busy_until - now).total_seconds()
            session.rollback()
            return _again(runtime, purchase_id, claim, max(BUSY_RETRY_SECONDS, wait), lease)
        if _first_waiting(session, model_id) != purchase_id:
            # A slot waits before it: give the claim back; the slot before asks for this one at its start.
            row.claim_token, row.locked_until, row.updated_at = None, None, now
            session.commit()
            return Next("waiting")
        if row.starts_at is not None and row.starts_at > now:
            session.rollback()
            return _again(runtime, purchase_id, claim, (row.starts_at - now).total_seconds(), lease)
        row.sending_since, row.locked_until, row.updated_at = now, now + timedelta(seconds=lease), now
        session.commit()
    return None


def _send_window(settings) -> timedelta:
    """The longest a send can take: past this, a command that went out has reached the toy if it ever will."""
    return timedelta(seconds=settings.lovense_connect_timeout + settings.lovense_read_timeout)


def run(runtime, purchase_id, claim: str | None = None) -> Next:
    settings = runtime.settings
    purchase_id = uuid.UUID(str(purchase_id))
    lease = _lease(settings)
    now = utcnow()
    with runtime.session_scope() as session:
        purchase = session.get(Purchase, purchase_id)
        if purchase is None or not activation_enabled(purchase.lovense_activation):
            return Next("none")
        activatable = purchase.status in ACTIVATABLE_STATUSES
        row = _row(session, purchase_id)
        if row is None and not (activatable or purchase.started_at is not None):
            return Next("none")  # never started: nothing to play and nothing to record
        if row is None or (row.starts_at is None and row.status == "pending"):
            row = schedule(session, purchase, now)  # its hand-off was lost: the end of the timeline
            session.commit()
        if row.status != "pending":
            return Next("duplicate")
        link = session.get(LovenseLink, purchase.model_id)
        uid = link.uid if link is not None else None
        unavailable = toy_unavailable(settings, uid is not None)
        if activatable and claim is None and unavailable is None:
            # Its turn: the model's first waiting slot, at its start. Otherwise the slot before it asks for it.
            if _first_waiting(session, purchase.model_id) != purchase_id:
                return Next("waiting")
            wait = (row.starts_at - now).total_seconds()
            if wait > 0:  # never before its start: a send a few ms early cuts the previous buzz short
                return Next("pending", delay=wait)
        late = activatable and purchase.transaction_type == "immediate" and row.scheduled_at is not None and \
            (now - row.scheduled_at).total_seconds() > settings.lovense_freshness_seconds
        token = _claim(session, purchase_id, claim, lease)
        sending_since = session.scalar(select(A.sending_since).where(A.purchase_id == purchase_id)) if token else None
        session.commit()
        if token is None:
            return Next("duplicate")  # another delivery owns it, or it is done
        if sending_since:
            # Its last holder died mid-send (the lease ran out): the toy may be playing it, so it is never sent again.
            # Its slot is kept as if the command had arrived at the latest moment it could have.
            LOVENSE_ATTEMPTS.labels(result="unconfirmed").inc()
            return _finish(runtime, purchase_id, token, "unconfirmed", "worker_lost", attempted=True,
                           started=min(now, sending_since + _send_window(settings)))
        if not activatable:
            # Refunded after the model started it, before the toy was reached: never buzz, never leave it pending.
            return _finish(runtime, purchase_id, token, "skipped", f"purchase_{purchase.status}")
        if unavailable is not None:
            # Nothing can buzz (kill switch, no token, unpaired): it leaves the timeline without waiting its turn.
            return _finish(runtime, purchase_id, token, "skipped", unavailable)
        if late:
            return _finish(runtime, purchase_id, token, "expired", "too_late")
        model_id, spec, attempts, scheduled_at = purchase.model_id, purchase.lovense_activation, row.attempts, \
            row.scheduled_at
    try:
        command = build_command(spec)
    except InvalidActivation:
        return _finish(runtime, purchase_id, token, "failed", "invalid_activation")

    redis = runtime.redis
    lock = acquire_model_lock(redis, model_id, _lock_seconds(settings))
    if lock is None:
        return _again(runtime, purchase_id, token, BUSY_RETRY_SECONDS * random.uniform(1, 2), lease)
    try:
        wait = take_rate_slot(redis, model_id, settings.lovense_rate_limit, settings.lovense_rate_window_seconds)
        if wait > 0:
            return _again(runtime, purchase_id, token, wait + random.uniform(0, 0.5), lease)
        instead = _sending(runtime, purchase_id, model_id, token, lease)
        if instead is not None:
            return instead
        outcome = client_for(settings).send(uid, command)
        # The toy has it by now (if at all): its slot runs from here, so the next one never cuts it short.
        started = utcnow()
    finally:
        release_model_lock(redis, model_id, lock)

    if outcome.ok:
        LOVENSE_ATTEMPTS.labels(result="sent").inc()
        if scheduled_at is not None:
            LOVENSE_SLOT_LAG.observe(max(0.0, (started - scheduled_at).total_seconds()))
        return _finish(runtime, purchase_id, token, "sent", attempted=True, started=started)
    if outcome.unknown:
        # The request went out and no answer came: the toy may be playing it. Never sent again on its own.
        LOVENSE_ATTEMPTS.labels(result="unconfirmed").inc()
        return _finish(runtime, purchase_id, token, "unconfirmed", outcome.error, attempted=True, started=started)
    attempt = attempts + 1
    if outcome.retryable and attempt < settings.lovense_max_attempts:
        LOVENSE_ATTEMPTS.labels(result="retry").inc()
        log.info("lovense attempt failed, retrying",
                 extra={"purchase_id": str(purchase_id), "error": outcome.error, "attempt": attempt})
        return _again(runtime, purchase_id, token, backoff(attempt, settings), lease, outcome.error)
    LOVENSE_ATTEMPTS.labels(result="failed").inc()
    return _finish(runtime, purchase_id, token, "failed", outcome.error, attempted=True)


def stop(runtime, model_id, purchase_id=None, reason: str = "stopped", uid: str | None = None) -> Next:
    """End a buzz before its time: the model's playing slot (only purchase_id's, if given) gets a Stop and
    becomes `stopped` at this moment; a refunded entry's waiting slot leaves the timeline (`skipped`). The waiting
    slots then move up (`follow`). `uid` is for an unpairing, whose link is already gone."""
    settings = runtime.settings
    model_id = uuid.UUID(str(model_id))
    lease = _lease(settings)
    now = utcnow()
    with runtime.session_scope() as session:
        mine = A.model_id == model_id
        if purchase_id is not None:
            mine = and_(mine, A.purchase_id == uuid.UUID(str(purchase_id)))
        playing = list(session.scalars(select(A.id).where(mine, _playing(now))))
        link = session.get(LovenseLink, model_id)
        uid = uid or (link.uid if link is not None else None)
        # A row marked mid-send may be playing: it is not skipped here (run() records it unconfirmed).
        waiting = purchase_id is not None and session.scalar(
            select(A.id).where(mine, WAITING, A.sending_since.is_(None))) is not None
        token = _claim(session, purchase_id, None, lease) if waiting else None
        session.commit()
    if token is not None:
        return _finish(runtime, purchase_id, token, "skipped", reason)
    if not playing:
        return Next("none")
    lock = acquire_model_lock(runtime.redis, model_id, _lock_seconds(settings))
    if lock is None:
        return Next("pending", delay=BUSY_RETRY_SECONDS * random.uniform(1, 2))
    try:
        # Still playing, now that no other command can go out? A slot that ended meanwhile has been followed by the
        # next one, and a Stop would cut that one short.
        with runtime.session_scope() as session:
            playing = list(session.scalars(select(A.id).where(A.id.in_(playing), _playing(utcnow()))))
        if not playing:
            return Next("none")
        # The kill switch stops toys too; only a missing developer token or uid leaves nothing to tell Lovense.
        if uid and settings.lovense_developer_token:
            outcome = client_for(settings).send(uid, STOP)
            if not outcome.ok:
                log.warning("lovense stop not delivered", extra={"model_id": str(model_id), "error": outcome.error})
        with runtime.session_scope() as session:
            _lock_timeline(session, model_id)
            ended = utcnow()
            for row in session.scalars(select(A).where(A.id.in_(playing), A.status.in_(PLAYED))):
                row.ends_at, row.updated_at = min(ended, row.ends_at), ended
                if row.status == "sent":  # an unconfirmed one stays so (it may never have played): its slot ends
                    row.status, row.last_error = "stopped", reason[:40]
                    audit(session, "lovense.stopped", row.purchase_id, error=reason)
                    _toy_event(session, row)
            follow = replan(session, model_id, ended)
            session.commit()
    finally:
        release_model_lock(runtime.redis, model_id, lock)
    log.info("lovense stopped", extra={"model_id": str(model_id), "reason": reason})
    return Next("stopped", reason=reason, follow=follow)


def playing_models(session, now=None) -> list:
    """Models whose toy plays a slot now (the kill switch stops them)."""
    now = now or utcnow()
    return list(session.scalars(select(A.model_id).where(_playing(now)).distinct()))


RESENDABLE = ("failed", "skipped", "expired", "unconfirmed")


def reset_for_resend(session, purchase_id) -> LovenseActivation | None:
    """Admin re-send: a failed, skipped, expired or unconfirmed activation goes back to pending with a fresh attempt
    count. Returns the row, or None if there is none; raises ValueError if it is not one of RESENDABLE."""
    row = session.scalar(
        select(LovenseActivation).where(LovenseActivation.purchase_id == purchase_id).with_for_update()
    )
    if row is None:
        return None
    if row.status not in RESENDABLE:
        raise ValueError(row.status)
    row.status, row.attempts, row.last_error = "pending", 0, None
    row.claim_token, row.locked_until, row.sending_since, row.updated_at = None, None, None, utcnow()
    row.starts_at = row.ends_at = None  # a new slot at the end of the model's timeline, given when its task runs
    return row


def toy_items_without_lovense(session, settings) -> int:
    """Active items of active menus whose toy cannot buzz for anyone because Lovense is not configured (no
    developer token): what the start-up warning counts. The kill switch is a choice and warns nobody."""
    if toy_unavailable(settings, paired=True) != "not_configured":
        return 0
    specs = session.scalars(select(MenuItem.lovense_activation).join(Menu, Menu.id == MenuItem.menu_id)
                            .where(MenuItem.is_active, Menu.is_active, MenuItem.lovense_activation.is_not(None)))
    return sum(1 for spec in specs if activation_enabled(spec))
