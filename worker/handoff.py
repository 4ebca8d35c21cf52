"""The web process's one way to ask for settlement, called after the purchase is committed.

A settle task settles *everything* pending (in batches, claiming rows with FOR UPDATE SKIP LOCKED), so the web
publishes a task only when none is scheduled. A Redis flag (short TTL) promises "a claim will happen after
now": the web sets it with SET NX and publishes only if it set it; the task keeps it set while it loops
(every claim that found something is followed by another claim), and before it exits it deletes the flag and
claims once more. So a purchase whose SET NX failed was committed before a claim that is still to come: no
purchase is left behind. A failed publish drops the flag again; a lost message or a crashed task costs at
most the TTL (the next purchase publishes) and beat's pending sweep settles what remains."""
from __future__ import annotations

import logging

from models.settings import get_settings

from .redis_client import get_redis

log = logging.getLogger(__name__)

SCHEDULED_KEY = "perfmenu:settle:scheduled"
SCHEDULED_TTL_SECONDS = 5


def request_settlement(purchase_id) -> None:
    from .tasks import settle_purchases

    # Embedded mode runs tasks inline in the request's thread, and SQLite has no SKIP LOCKED: each request
    # settles its own purchase there.
    args = [[str(purchase_id)]] if get_settings().embedded else []
    if not args:
        try:
            if not get_redis().set(SCHEDULED_KEY, "1", nx=True, ex=SCHEDULED_TTL_SECONDS):
                return  # a claim is still to come (a scheduled task, or the running one's next or last claim)
        except Exception:
            log.exception("settlement flag unavailable; publishing", extra={"purchase_id": str(purchase_id)})
    try:
        settle_purchases.apply_async(args=args)
    except Exception:
        # The purchase is committed as pending; the next hand-off or beat's pending sweep settles it.
        log.exception("settlement hand-off failed", extra={"purchase_id": str(purchase_id)})
        release_scheduled()


def keep_scheduled() -> None:
    """The settle task is looping and will claim again: intake need not publish."""
    try:
        get_redis().set(SCHEDULED_KEY, "1", ex=SCHEDULED_TTL_SECONDS)
    except Exception:
        log.exception("could not refresh the settlement flag")


def release_scheduled() -> None:
    """The settle task is about to make its last claim: purchases committed from now on publish a new task."""
    try:
        get_redis().delete(SCHEDULED_KEY)
    except Exception:
        log.exception("could not clear the settlement flag; its TTL will")


def request_activation(purchase_id, delay_ms: int = 0) -> None:
    """Ask for the purchase's toy activation in `delay_ms` ms. Safe to call more than once: one activation per
    purchase. Does nothing unless the purchase's lovense_activation is enabled; never raises."""
    from .tasks import activate_toy

    try:
        activate_toy.apply_async(args=[str(purchase_id)], countdown=max(0, int(delay_ms or 0)) / 1000)
    except Exception:
        # A toy that does not buzz never undoes or blocks a purchase; an operator can re-send it.
        log.exception("activation hand-off failed", extra={"purchase_id": str(purchase_id)})
