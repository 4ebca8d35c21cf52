"""How a settled purchase's verdict reaches the HTTP request waiting for it.

The worker pushes the settled purchase's new column values (status, reason, timestamps) onto a short-lived
per-purchase Redis list after its commit; the web process blocks on that list for a bounded time and answers
from them, with no second read of the row (one round trip and ~1 ms of the web's CPU per purchase, measured in
bench/). The values are the committed row's: the database stays the source of truth, and a lost notification
only costs the client a 202."""
from __future__ import annotations

import json
import logging
from datetime import datetime

import redis

log = logging.getLogger(__name__)

VERDICT_TTL_SECONDS = 60
# What settlement changes on a purchase (models/services/settlement.py): the verdict carries these.
SETTLED_COLUMNS = ("status", "failure_reason", "fee_bps", "platform_fee")
SETTLED_TIMES = ("settled_at", "completed_at", "failed_at", "escrow_deadline", "updated_at")


def _key(purchase_id) -> str:
    return f"perfmenu:verdict:{purchase_id}"


def publish_verdicts(client, purchases) -> None:
    if not purchases:
        return
    pipe = client.pipeline(transaction=False)
    for p in purchases:
        values = {name: getattr(p, name) for name in SETTLED_COLUMNS}
        for name in SETTLED_TIMES:
            moment = getattr(p, name)
            values[name] = moment.isoformat() if moment is not None else None
        pipe.rpush(_key(p.id), json.dumps(values))
        pipe.expire(_key(p.id), VERDICT_TTL_SECONDS)
    pipe.execute()


def wait_for_verdict(client, purchase_id, timeout: float) -> dict | None:
    """Block up to `timeout` seconds for the verdict: the settled purchase's SETTLED_COLUMNS and SETTLED_TIMES, or
    None if none arrived."""
    if timeout <= 0:
        return None
    try:
        # Moving the list's head to its own tail leaves the verdict there for any other request waiting on the
        # same purchase (an idempotent retry), in one command.
        raw = client.blmove(_key(purchase_id), _key(purchase_id), timeout, "LEFT", "RIGHT")
    except redis.RedisError:
        # Redis down or slower than the socket timeout: the purchase is committed, the caller answers 202
        # (pending; the client polls its status). Never a 500 for a committed purchase.
        log.warning("verdict wait failed", extra={"purchase_id": str(purchase_id)})
        return None
    if raw is None:
        return None
    values = json.loads(raw)
    for name in SETTLED_TIMES:
        if values[name] is not None:
            values[name] = datetime.fromisoformat(values[name])
    return values
