"""A worker's consumer watchdog: a worker that takes no message while its queues hold some, and holds none,
has a consumer that stopped (a broker connection that never came back, a cancelled consumer, a stuck event
loop). It then exits with STALLED_EXIT_CODE, so what supervises it (systemd's Restart=, the bank test) starts a
new one; its unacknowledged messages come back to the queue after the broker's visibility timeout.

It runs in a thread of the worker's main process (not on its event loop, which may be what is stuck), reads the
queues' lengths from a Redis broker (other brokers: off), and concludes only after WORKER_STALL_SECONDS of
backlog with nothing taken and nothing reserved: a worker busy with long tasks holds what it reserved."""
from __future__ import annotations

import logging
import os
import threading
import time

import redis
from celery.signals import task_received, worker_ready
from celery.worker import state

log = logging.getLogger(__name__)
STALLED_EXIT_CODE = 75  # EX_TEMPFAIL: start me again
_last_taken = [time.monotonic()]


@task_received.connect
def _taken(**_kwargs):
    _last_taken[0] = time.monotonic()


def stalled_since(backlog: int, holding: bool, since: float | None, last_taken: float, now: float) -> float | None:
    """When the current stall began (None: no stall): a backlog, nothing held, nothing taken since then."""
    if backlog == 0 or holding:
        return None
    return max(since if since is not None else now, last_taken)


def watch(broker_url: str, queues: list[str], stall_seconds: float, on_stall=os._exit) -> None:
    broker = redis.Redis.from_url(broker_url, socket_timeout=5, socket_connect_timeout=2)
    since = None
    while True:
        time.sleep(max(1.0, stall_seconds / 4))
        try:
            backlog = sum(broker.llen(q) for q in queues)
        except redis.RedisError:
            continue  # the broker is down: its reconnection is the consumer's business, and no conclusion ours
        now = time.monotonic()
        since = stalled_since(backlog, bool(state.reserved_requests), since, _last_taken[0], now)
        if since is not None and now - since >= stall_seconds:
            log.critical("worker stalled: its queues hold messages and it took none; exiting to be restarted",
                         extra={"queues": queues, "backlog": backlog, "stalled_seconds": round(now - since)})
            logging.shutdown()
            on_stall(STALLED_EXIT_CODE)


@worker_ready.connect
def _start(sender=None, **_kwargs):
    from .celery_app import runtime

    settings = runtime().settings
    url = settings.broker_url or ""
    if settings.worker_stall_seconds <= 0 or not url.startswith(("redis://", "rediss://", "unix://")):
        return
    queues = sorted(sender.app.amqp.queues.consume_from or sender.app.amqp.queues)
    threading.Thread(target=watch, args=(url, queues, settings.worker_stall_seconds), name="liveness",
                     daemon=True).start()
