"""How a settled purchase's verdict reaches the HTTP request waiting for it.

The worker pushes the new status onto a short-lived per-purchase Redis list after its commit; the web process
blocks on that list for a bounded time. The database stays the source of truth: the waiter re-reads the
purchase afterwards, and a lost notification only costs the client a 202."""
from __future__ import annotations

import logging

import redis

log = logging.getLogger(__name__)

VERDICT_TTL_SECONDS = 60


def _key(purchase_id) -> str:
    return f"perfmenu:verdict:{purchase_id}"


def publish_verdicts(client, purchases) -> None:
    if not purchases:
        return
    pipe = client.pipeline(transaction=False)
    for p in purchases:
        pipe.rpush(_key(p.id), p.status)
        pipe.expire(_key(p.id), VERDICT_TTL_SECONDS)
    pipe.execute()


def wait_for_verdict(client, purchase_id, timeout: float) -> bool:
    """Block up to `timeout` seconds for the verdict; True if one arrived."""
    if timeout <= 0:
        return False
    try:
        # Moving the list's head to its own tail leaves the verdict there for any other request waiting on the
        # same purchase (an idempotent retry), in one command.
        if client.blmove(_key(purchase_id), _key(purchase_id), timeout, "LEFT", "RIGHT") is None:
            return False
    except redis.RedisError:
        # Redis down or slower than the socket timeout: the purchase is committed, the caller re-reads it
        # from the database and answers 202 if it is still pending. Never a 500 for a committed purchase.
        log.warning("verdict wait failed", extra={"purchase_id": str(purchase_id)})
        return False
    return True
