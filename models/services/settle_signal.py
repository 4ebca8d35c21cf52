"""The settlement hand-off's Redis protocol: how intake asks for a claim without publishing a Celery task per
purchase, and how the settle task promises that claim. Both halves live here, next to each other; the web
calls `promise_claim` (through worker/handoff.py), the settle task the rest (worker/tasks.py).

A settle task settles *everything* pending (in batches, claiming rows with FOR UPDATE SKIP LOCKED), so the web
publishes a task only when none is scheduled. A Redis flag (short TTL) promises "a claim will happen after
now": the web sets it with SET NX and publishes only if it set it; the task keeps it set while it loops
(after each claim it waits on the wake-up list below, which every purchase committed since has pushed to),
and before it exits it deletes the flag and claims once more. So a purchase whose SET NX failed was committed
before a claim that is still to come: no purchase is left behind. A failed publish drops the flag again; a lost message or a crashed task costs at
most the TTL (the next purchase publishes) and beat's pending sweep settles what remains.

An idle task does not end at once: it lingers (SETTLE_LINGER_SECONDS), blocked on a Redis list that every
intake pushes to in the same round trip as its SET NX, and claims again as soon as something arrives. So under
steady traffic a purchase is settled by a task already running, without a Celery round trip. A push made
before the task starts waiting stays in the list, so no wake-up is lost; the task empties the list just before
each claim, and that claim covers every purchase committed before it."""
from __future__ import annotations

import logging
import time

log = logging.getLogger(__name__)

SCHEDULED_KEY = "perfmenu:settle:scheduled"
WAKE_KEY = "perfmenu:settle:wake"
SCHEDULED_TTL_SECONDS = 5
MAX_TASK_SECONDS = 10  # a lingering task still ends now and then, so a warm shutdown never waits on it


# Intake's half in one EVALSHA (a pipeline of the three commands cost redis-py three times the CPU): 1 if it set
# the flag (the caller publishes a task), else 0.
_PROMISE_LUA = """
local set = redis.call('SET', KEYS[1], '1', 'NX', 'EX', ARGV[1])
redis.call('RPUSH', KEYS[2], '1')
redis.call('EXPIRE', KEYS[2], ARGV[1])
if set then return 1 end
return 0
"""
_promise_scripts: dict = {}  # per Redis client: its registered script


def promise_claim(redis) -> bool:
    """Intake's half, after its commit: wake a lingering task and set the flag. True if the caller must publish
    a settle task (it set the flag, or Redis could not be asked); False if a claim is already promised."""
    try:
        script = _promise_scripts.get(id(redis))
        if script is None or script.registered_client is not redis:
            script = _promise_scripts[id(redis)] = redis.register_script(_PROMISE_LUA)
        return script(keys=[SCHEDULED_KEY, WAKE_KEY], args=[SCHEDULED_TTL_SECONDS]) == 1
    except Exception:
        log.exception("settlement flag unavailable; publishing")
        return True


def wait_for_purchases(redis, timeout: float) -> bool:
    """Block up to `timeout` seconds for intake's wake-up; True if a purchase was committed since the list was
    last emptied (keep_scheduled empties it; the caller claims next)."""
    if timeout <= 0:
        return False
    try:
        return redis.blpop([WAKE_KEY], timeout=timeout) is not None
    except Exception:
        log.exception("settlement wake-up list unavailable")
        return False


def lingering(redis, linger_seconds: float, started: float) -> bool:
    """Whether a task started at `started` (time.monotonic()) that found nothing to settle should wait for
    the next purchase (True: one arrived) rather than end."""
    if time.monotonic() - started >= MAX_TASK_SECONDS:
        return False
    return wait_for_purchases(redis, linger_seconds)


def keep_scheduled(redis) -> None:
    """The settle task is about to claim: intake need not publish, and every wake-up pushed so far is answered
    by that claim (so the list is emptied)."""
    try:
        pipe = redis.pipeline(transaction=False)
        pipe.set(SCHEDULED_KEY, "1", ex=SCHEDULED_TTL_SECONDS)
        pipe.delete(WAKE_KEY)
        pipe.execute()
    except Exception:
        log.exception("could not refresh the settlement flag")


def release_scheduled(redis) -> None:
    """The settle task is about to make its last claim (or a publish failed): purchases committed from now on
    publish a new task."""
    try:
        redis.delete(SCHEDULED_KEY)
    except Exception:
        log.exception("could not clear the settlement flag; its TTL will")
