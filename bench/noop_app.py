"""The Celery ceiling: a no-op task on the product's Celery configuration (same broker settings, acks late,
prefetch 1), on its own queue. Each run counts itself in Redis so the harness can time a backlog.

`celery -A bench.noop_app worker` configures it from the worker's environment at import; the harness, which
publishes the tasks, configures it again with its own settings."""
import redis
from celery import Celery

from models.settings import Settings
from worker.celery_app import celery_config

COUNTER = "perfmenu:bench:noop_done"

app = Celery("perfmenu_bench_noop")


def configure(settings) -> None:
    app.conf.update(celery_config(settings), task_default_queue="bench_noop")
    app.counter = redis.Redis.from_url(settings.redis_url) if settings.redis_url else None


configure(Settings.from_env())


@app.task(name="bench.noop")
def noop():
    app.counter.incr(COUNTER)
