"""Toy activations: one per purchase, one command in flight per model, a per-model rate cap, retries.

`run(runtime, purchase_id, claim)` does one step for one purchase and returns what the task should do next:
- it creates the purchase's activation row if missing (UNIQUE purchase_id) and claims it atomically (an UPDATE
  that only succeeds if the row is `pending` and unclaimed, or claimed by this task's own `claim` token, or its
  lease ran out), so a task delivered twice sends at most one command;
- skips (kill switch, no developer token, unpaired model) or fails (invalid snapshot) without sending;
- takes the model's Redis lock (one command in flight per model) and a slot of the model's rate cap; if
  either is busy it keeps the claim and asks to be run again shortly, without counting an attempt;
- sends the command with no database transaction open, then records the attempt: `sent`, a retry after an
  exponential backoff with jitter (timeouts, connection errors, HTTP 5xx, reply code 507, up to
  LOVENSE_MAX_ATTEMPTS), or `failed` with the last error code.
Nothing here touches the purchase or the ledger: a toy failure never changes a settlement.
"""
from __future__ import annotations

import logging
import random
import time
import uuid
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import or_, select, update
from sqlalchemy.exc import IntegrityError

from ..audit import audit
from ..infra.metrics import LOVENSE_ATTEMPTS
from ..lovense import LovenseActivation, LovenseLink, activation_enabled, toy_unavailable
from ..menus import Menu, MenuItem
from ..purchases import Purchase
from ..types import utcnow
from .lovense_api import InvalidActivation, build_command, client_for

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


def _ensure_row(session, purchase: Purchase) -> None:
    if session.scalar(select(LovenseActivation.id).where(LovenseActivation.purchase_id == purchase.id)) is None:
        try:
            with session.begin_nested():
                session.add(LovenseActivation(purchase_id=purchase.id, model_id=purchase.model_id))
        except IntegrityError:
            pass  # a concurrent delivery created it


def _claim(session, purchase_id, mine: str | None, lease_seconds: float) -> str | None:
    now = utcnow()
    token = uuid.uuid4().hex
    free = or_(LovenseActivation.claim_token.is_(None), LovenseActivation.locked_until < now)
    if mine:
        free = or_(free, LovenseActivation.claim_token == mine)
    result = session.execute(
        update(LovenseActivation)
        .where(LovenseActivation.purchase_id == purchase_id, LovenseActivation.status == "pending", free)
        .values(claim_token=token, locked_until=now + timedelta(seconds=lease_seconds), updated_at=now)
        .execution_options(synchronize_session=False)
    )
    return token if result.rowcount == 1 else None


def _finish(runtime, purchase_id, claim: str, status: str, error: str | None = None,
            attempted: bool = False) -> Next:
    """Record a final outcome (sent, failed, skipped) if this task still holds the claim."""
    now = utcnow()
    values = {"status": status, "last_error": error, "claim_token": None, "locked_until": None, "updated_at": now}
    if attempted:
        values.update(attempts=LovenseActivation.attempts + 1, last_attempt_at=now)
    if status == "sent":
        values["sent_at"] = now
    with runtime.session_scope() as session:
        row = session.execute(
            update(LovenseActivation)
            .where(LovenseActivation.purchase_id == purchase_id, LovenseActivation.claim_token == claim)
            .values(**values)
            .returning(LovenseActivation.attempts)
            .execution_options(synchronize_session=False)
        ).first()
        if row is not None:
            audit(session, f"lovense.{status}", purchase_id, error=error, attempts=row[0])
        session.commit()
    log.info("lovense activation %s", status, extra={"purchase_id": str(purchase_id), "error": error})
    return Next(status, reason=error)


def _again(runtime, purchase_id, claim: str, delay: float, lease: float, error: str | None = None) -> Next:
    """Keep the claim over `delay` seconds and ask to be run again; with `error`, count a failed attempt."""
    now = utcnow()
    values = {"locked_until": now + timedelta(seconds=delay + lease), "updated_at": now}
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


def run(runtime, purchase_id, claim: str | None = None) -> Next:
    settings = runtime.settings
    purchase_id = uuid.UUID(str(purchase_id))
    lease = settings.lovense_connect_timeout + settings.lovense_read_timeout + LEASE_MARGIN_SECONDS
    with runtime.session_scope() as session:
        purchase = session.get(Purchase, purchase_id)
        if purchase is None or not activation_enabled(purchase.lovense_activation):
            return Next("none")
        activatable = purchase.status in ACTIVATABLE_STATUSES
        if activatable or purchase.started_at is not None:
            _ensure_row(session, purchase)  # a started entry refunded since gets a row too, finished as skipped
        token = _claim(session, purchase_id, claim, lease)
        session.commit()
        if token is None:
            # Another delivery owns it, it is already done, or (not activatable) there is no row to finish.
            return Next("duplicate" if activatable else "none")
        if not activatable:
            # Refunded after the model started it, before the toy was reached: never buzz, never leave it pending.
            return _finish(runtime, purchase_id, token, "skipped", f"purchase_{purchase.status}")
        row = session.scalar(select(LovenseActivation).where(LovenseActivation.purchase_id == purchase_id))
        link = session.get(LovenseLink, purchase.model_id)
        model_id, spec, attempts = purchase.model_id, purchase.lovense_activation, row.attempts
        uid = link.uid if link is not None else None
    unavailable = toy_unavailable(settings, uid is not None)
    if unavailable is not None:
        return _finish(runtime, purchase_id, token, "skipped", unavailable)
    try:
        command = build_command(spec)
    except InvalidActivation:
        return _finish(runtime, purchase_id, token, "failed", "invalid_activation")

    redis = runtime.redis
    lock = acquire_model_lock(redis, model_id, settings.lovense_connect_timeout + settings.lovense_read_timeout + 5)
    if lock is None:
        return _again(runtime, purchase_id, token, BUSY_RETRY_SECONDS * random.uniform(1, 2), lease)
    try:
        wait = take_rate_slot(redis, model_id, settings.lovense_rate_limit, settings.lovense_rate_window_seconds)
        if wait > 0:
            return _again(runtime, purchase_id, token, wait + random.uniform(0, 0.5), lease)
        outcome = client_for(settings).send(uid, command)
    finally:
        release_model_lock(redis, model_id, lock)

    if outcome.ok:
        LOVENSE_ATTEMPTS.labels(result="sent").inc()
        return _finish(runtime, purchase_id, token, "sent", attempted=True)
    attempt = attempts + 1
    if outcome.retryable and attempt < settings.lovense_max_attempts:
        LOVENSE_ATTEMPTS.labels(result="retry").inc()
        log.info("lovense attempt failed, retrying",
                 extra={"purchase_id": str(purchase_id), "error": outcome.error, "attempt": attempt})
        return _again(runtime, purchase_id, token, backoff(attempt, settings), lease, outcome.error)
    LOVENSE_ATTEMPTS.labels(result="failed").inc()
    return _finish(runtime, purchase_id, token, "failed", outcome.error, attempted=True)


def reset_for_resend(session, purchase_id) -> LovenseActivation | None:
    """Admin re-send: a failed or skipped activation goes back to pending with a fresh attempt count.
    Returns the row, or None if there is none; raises ValueError if it is not failed or skipped."""
    row = session.scalar(
        select(LovenseActivation).where(LovenseActivation.purchase_id == purchase_id).with_for_update()
    )
    if row is None:
        return None
    if row.status not in ("failed", "skipped"):
        raise ValueError(row.status)
    row.status, row.attempts, row.last_error = "pending", 0, None
    row.claim_token, row.locked_until, row.updated_at = None, None, utcnow()
    return row


def toy_items_without_lovense(session, settings) -> int:
    """Active items of active menus whose toy cannot buzz for anyone because Lovense is not configured (no
    developer token): what the start-up warning counts. The kill switch is a choice and warns nobody."""
    if toy_unavailable(settings, paired=True) != "not_configured":
        return 0
    specs = session.scalars(select(MenuItem.lovense_activation).join(Menu, Menu.id == MenuItem.menu_id)
                            .where(MenuItem.is_active, Menu.is_active, MenuItem.lovense_activation.is_not(None)))
    return sum(1 for spec in specs if activation_enabled(spec))
