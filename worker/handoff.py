"""The web process's one door into the worker: everything the web asks of Celery goes through here, after
its own commit. Ask for settlement (the Redis protocol is models/services/settle_signal.py), ask for a toy
activation or a Stop, run the side effects of a committed queue change, and bind the Celery app to the web's runtime."""
from __future__ import annotations

import logging

from models.services import settle_signal

from .celery_app import bind_runtime
from .tasks import (
    after_queue_change,
    request_activation,
    request_stop,
    request_webhook_delivery,
    settle_purchases,
)

__all__ = ["after_queue_change", "connect", "request_activation", "request_settlement", "request_stop",
           "request_webhook_delivery"]

log = logging.getLogger(__name__)


def connect(runtime) -> None:
    """Publish tasks (and, in embedded mode, run them inline) with the web's runtime; called by create_app."""
    bind_runtime(runtime)


def request_settlement(runtime, purchase_id) -> None:
    """Make sure a committed pending purchase gets settled: publish a settle task unless one is promised."""
    if runtime.settings.embedded:
        # Tasks run inline in the request's thread, and SQLite has no SKIP LOCKED: each request settles its own
        # purchase there.
        args = [[str(purchase_id)]]
    elif settle_signal.promise_claim(runtime.redis):
        args = []
    else:
        return  # a claim is still to come (a scheduled task, or the running one's next or last claim)
    try:
        settle_purchases.apply_async(args=args)
    except Exception:
        # The purchase is committed as pending; the next hand-off or beat's pending sweep settles it.
        log.exception("settlement hand-off failed", extra={"purchase_id": str(purchase_id)})
        settle_signal.release_scheduled(runtime.redis)
