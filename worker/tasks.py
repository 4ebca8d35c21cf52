"""Celery tasks. Each opens its own session and receives ids only."""
from __future__ import annotations

import logging
import uuid
from datetime import timedelta

from .celery_app import celery

from models.db import session_scope
from models.settings import get_settings
from models.types import utcnow

from .settlement import settle_pending
from .verdicts import publish_verdicts

log = logging.getLogger(__name__)


def after_settlement(purchases) -> None:
    """Side effects that follow a committed settlement; none of them can undo it."""
    publish_verdicts(purchases)


def settle(purchase_ids=None, older_than=None) -> int:
    """Settle the given pending purchases, or every pending one (older than `older_than`) in batches."""
    settings = get_settings()
    ids = [uuid.UUID(str(i)) for i in purchase_ids] if purchase_ids else None
    total = 0
    while True:
        with session_scope() as session:
            settled = settle_pending(session, settings, ids, settings.settle_batch_size, older_than)
        after_settlement(settled)
        total += len(settled)
        for p in settled:
            log.info("purchase settled", extra={"purchase_id": str(p.id), "status": p.status})
        if ids is not None or len(settled) < settings.settle_batch_size:
            return total


@celery.task(name="perfmenu.settle_purchases")
def settle_purchases(purchase_ids=None) -> int:
    return settle(purchase_ids)


@celery.task(name="perfmenu.sweep_pending")
def sweep_pending() -> int:
    """Beat's safety net: settle purchases left pending (crash between commit and enqueue, lost message)."""
    threshold = utcnow() - timedelta(seconds=get_settings().pending_sweep_after_seconds)
    return settle(older_than=threshold)
