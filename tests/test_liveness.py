"""Issue 35: a worker whose consumer stopped (here: its consumer of the webhooks queue cancelled, as a broker
connection that never comes back would leave it) while its queue holds messages exits with
STALLED_EXIT_CODE within WORKER_STALL_SECONDS and a few seconds, so its supervisor starts a new one, which
takes the backlog."""
from __future__ import annotations

import time
import uuid

import redis
from conftest import BROKER_URL, WebhookWorkerProcess

from worker.celery_app import celery
from worker.liveness import STALLED_EXIT_CODE
from worker.tasks import deliver_webhooks


def test_a_worker_that_consumes_nothing_while_its_queue_holds_work_exits_and_a_new_one_takes_it(database):
    broker = redis.Redis.from_url(BROKER_URL)
    broker.delete("webhooks")
    stalled = WebhookWorkerProcess(WORKER_STALL_SECONDS="2").start()
    try:
        node = next(name for reply in celery.control.ping(timeout=1) for name in reply if stalled.node in name)
        celery.control.cancel_consumer("webhooks", destination=[node], reply=True, timeout=5)
        for _ in range(3):  # runs for an endpoint that does not exist: each ends at once ("disabled")
            deliver_webhooks.apply_async(args=[str(uuid.uuid4())])
        deadline = time.monotonic() + 20
        while stalled.group.alive() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert stalled.group.proc.poll() == STALLED_EXIT_CODE
        assert broker.llen("webhooks") == 3  # nothing was taken

        fresh = WebhookWorkerProcess(WORKER_STALL_SECONDS="2").start()  # what a supervisor does
        try:
            deadline = time.monotonic() + 20
            while broker.llen("webhooks") and time.monotonic() < deadline:
                time.sleep(0.2)
            assert broker.llen("webhooks") == 0
            time.sleep(3)  # past its stall period: a worker with no backlog stays up
            assert fresh.group.alive()
        finally:
            fresh.stop()
    finally:
        stalled.stop()
