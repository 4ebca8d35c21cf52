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
