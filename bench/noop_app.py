"""The Celery ceiling: a no-op task on the product's Celery configuration (same broker settings, acks late,
prefetch 1), on its own queue. Each run counts itself in Redis so the harness can time a backlog."""
import os

import redis
from celery import Celery

from models.settings import Settings
from worker.celery_app import celery_config

COUNTER = "perfmenu:bench:noop_done"

app = Celery("perfmenu_bench_noop")
app.conf.update(celery_config(Settings.from_env()))
app.conf.task_default_queue = "bench_noop"
_redis = redis.Redis.from_url(os.environ["REDIS_URL"])


@app.task(name="bench.noop")
def noop():
    _redis.incr(COUNTER)
