"""The web process's one way to ask for settlement, called after the purchase is committed.

A settle task settles *everything* pending (in batches, claiming rows with FOR UPDATE SKIP LOCKED), so one task
per burst is enough: the web publishes only when no settle task is scheduled. A Redis flag (SET NX, short TTL)
says "a task is scheduled"; the task clears it before it claims. So a purchase committed before the clear is
claimed by that task, and one committed after it either sets the flag and publishes, or finds the flag set by
a purchase that published after the clear: no purchase is left behind. If the publish fails the flag is
dropped again; if a message is lost anyway, the TTL lets the next purchase publish and beat's pending sweep
settles the rest."""
from __future__ import annotations

import logging

from .redis_client import get_redis

log = logging.getLogger(__name__)

SCHEDULED_KEY = "perfmenu:settle:scheduled"
SCHEDULED_TTL_SECONDS = 5


def request_settlement(purchase_id) -> None:
    from .tasks import settle_purchases

    try:
        if not get_redis().set(SCHEDULED_KEY, "1", nx=True, ex=SCHEDULED_TTL_SECONDS):
            return  # a settle task is scheduled and has not started claiming: it will take this purchase
    except Exception:
        log.exception("settlement flag unavailable; publishing", extra={"purchase_id": str(purchase_id)})
    try:
        settle_purchases.apply_async()
    except Exception:
        # The purchase is committed as pending; the next hand-off or beat's pending sweep settles it.
        log.exception("settlement hand-off failed", extra={"purchase_id": str(purchase_id)})
        try:
            get_redis().delete(SCHEDULED_KEY)
        except Exception:
            pass


def settlement_starting() -> None:
    """Called by the settle task before it claims: purchases committed from now on schedule a new task."""
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
