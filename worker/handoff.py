"""The web process's one way to ask for settlement, called after the purchase is committed."""
from __future__ import annotations

import logging

log = logging.getLogger(__name__)


def request_settlement(purchase_id) -> None:
    from .tasks import settle_purchases

    try:
        settle_purchases.apply_async(args=[[str(purchase_id)]])
    except Exception:
        # The purchase is committed as pending; beat's pending sweep settles it.
        log.exception("settlement hand-off failed", extra={"purchase_id": str(purchase_id)})


def request_activation(purchase_id, delay_ms: int = 0) -> None:
    """Ask for the purchase's toy activation in `delay_ms` ms. Safe to call more than once: one activation per
    purchase. Does nothing unless the purchase's lovense_activation is enabled; never raises."""
    from .tasks import activate_toy

    try:
        activate_toy.apply_async(args=[str(purchase_id)], countdown=max(0, int(delay_ms or 0)) / 1000)
    except Exception:
        # A toy that does not buzz never undoes or blocks a purchase; an operator can re-send it.
        log.exception("activation hand-off failed", extra={"purchase_id": str(purchase_id)})
