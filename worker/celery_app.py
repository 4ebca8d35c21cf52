"""The Celery app. Delivery is at-least-once (late acks, reject on worker loss, prefetch 1); every task is
idempotent, so a redelivered task changes nothing twice. Tasks receive ids, never objects.

The app gets its process's Runtime (settings, database, Redis) from `bind_runtime`: called by worker/main.py in
the worker, beat and flower processes, and by the web's create_app, which publishes tasks (and, in embedded
mode, runs them inline)."""
from __future__ import annotations

import logging

from celery import Celery
from celery.signals import setup_logging, worker_process_init, worker_ready

from models.infra.logs import configure_logging
from models.services.activations import toy_items_without_lovense

log = logging.getLogger(__name__)
celery = Celery("perfmenu", include=["worker.tasks"])
celery.runtime = None
# Webhook delivery runs on its own queue, consumed by its own worker line (Procfile `webhooks`): a
# slow endpoint never holds a settlement worker, and the `worker` line (default queue only) never takes it.
WEBHOOK_QUEUE = "webhooks"


def celery_config(settings) -> dict:
    return dict(
        broker_url=settings.broker_url or "memory://localhost/",  # embedded: eager tasks, no broker at all
        broker_transport_options={"visibility_timeout": settings.broker_visibility_timeout},
        broker_connection_retry_on_startup=True,
        task_ignore_result=True,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_serializer="json",
        accept_content=["json"],
        # Embedded mode has no broker: tasks run inline in the web process.
        task_always_eager=settings.embedded,
        task_eager_propagates=False,
        worker_send_task_events=True,
        task_send_sent_event=True,
        timezone="UTC",
        enable_utc=True,
        beat_schedule=beat_schedule(settings),
        task_routes={"perfmenu.deliver_webhooks": {"queue": WEBHOOK_QUEUE}},
    )


def beat_schedule(settings) -> dict:
    """Beat's jobs (docs/architecture.md, "Beat"). Run exactly one beat process. Tasks are scheduled by name.
    There is no daily-limit reset job: daily limits are counted in the database per calendar day
    (Purchase.purchase_day), so nothing resets."""
    jobs = {
        "sweep-pending": ("perfmenu.sweep_pending", settings.pending_sweep_interval_seconds),
        "sweep-escrow-deadlines": ("perfmenu.sweep_escrow_deadlines", settings.escrow_sweep_interval_seconds),
        "reconcile-queues": ("perfmenu.reconcile_queues", settings.queue_reconcile_interval_seconds),
        "sweep-activations": ("perfmenu.sweep_activations", settings.activation_sweep_interval_seconds),
        "sweep-timelines": ("perfmenu.sweep_timelines", settings.timeline_sweep_interval_seconds),
        "relay-outbox": ("perfmenu.relay_outbox", settings.outbox_relay_interval_seconds),
        "dispatch-webhooks": ("perfmenu.dispatch_webhooks", settings.outbox_relay_interval_seconds),
    }
    # A run not picked up before the next one is due expires: a stopped worker does not come back to a pile.
    return {
        name: {"task": task, "schedule": float(every), "options": {"expires": float(every)}}
        for name, (task, every) in jobs.items()
    }


def bind_runtime(runtime) -> None:
    """Make `runtime` the one the tasks of this process use, and configure the app from its settings."""
    celery.runtime = runtime
    celery.conf.update(celery_config(runtime.settings))


def runtime():
    if celery.runtime is None:
        raise RuntimeError("the Celery app has no runtime: start Celery with -A worker.main")
    return celery.runtime


@setup_logging.connect
def _json_logs(loglevel=None, **_kwargs):
    # Connecting this signal stops Celery from installing its own handlers: worker, beat and flower log JSON.
    configure_logging(loglevel or runtime().settings.log_level)


@worker_ready.connect
def _warn_about_silent_toys(**_kwargs):
    rt = runtime()
    try:
        with rt.session_scope() as session:
            silent = toy_items_without_lovense(session, rt.settings)
    except Exception:  # a warning must never stop a worker (e.g. migrations not run yet)
        log.exception("could not count toy items")
        return
    if silent:
        log.warning("active items have toy activations but LOVENSE_DEVELOPER_TOKEN is not set: their toys will "
                    "not buzz", extra={"items": silent})


@worker_process_init.connect
def _fresh_database_connections(**_kwargs):
    # A forked pool process must not reuse connections opened by its parent.
    runtime().engine.dispose(close=False)
