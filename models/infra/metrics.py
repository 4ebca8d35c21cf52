"""Every Prometheus metric of the service, in one module importable by the web and the worker processes.

Under gunicorn (several web processes) and Celery's prefork pool the metrics live in files in
PROMETHEUS_MULTIPROC_DIR (prometheus_client's multiprocess mode; `make run` creates and empties it), and a
scrape of GET /metrics adds up every process of the machine, web and worker alike. Without that variable
(embedded mode, one process) the default in-process registry is used.

Labels carry codes and ids only, never personal data.
"""
from __future__ import annotations

import os

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, Counter, Histogram, generate_latest

from models.settings import ensure_metrics_dir, or_exit

# Before the metrics below open their files there: no process can run without it.
or_exit(ensure_metrics_dir, os.environ.get("PROMETHEUS_MULTIPROC_DIR"))

HTTP_REQUESTS = Counter(
    "perfmenu_http_requests_total", "HTTP requests by endpoint, method and status", ["endpoint", "method", "status"]
)
HTTP_LATENCY = Histogram(
    "perfmenu_http_request_duration_seconds", "HTTP request duration by endpoint", ["endpoint"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10),
)
# outcome: completed | queued | failed | refunded, counted where it happens (settlement, the model's complete,
# every kind of refund), or refused (turned away at intake); reason: the failure, refund or refusal code.
PURCHASES = Counter("perfmenu_purchases_total", "Purchases by outcome", ["outcome", "reason"])
OUTCOMES = ("completed", "queued", "failed", "refunded")
SETTLEMENT_LATENCY = Histogram(
    "perfmenu_settlement_latency_seconds", "Time from a purchase's creation to its settlement by the worker",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
)
# result: sent | retry (a retryable failure, sent again later) | failed (given up) | unconfirmed (no answer: maybe
# played, never sent again); skips are not attempts.
LOVENSE_ATTEMPTS = Counter("perfmenu_lovense_attempts_total", "Lovense activation attempts by result", ["result"])
for _result in ("sent", "retry", "failed", "unconfirmed"):
    LOVENSE_ATTEMPTS.labels(result=_result)  # every series scraped from the start, at 0
# How late each toy buzz started against its slot as first planned (0: on time; a retry or a busy toy adds up).
LOVENSE_SLOT_LAG = Histogram(
    "perfmenu_lovense_slot_lag_seconds", "Seconds a sent toy command started after its timeline slot",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300),
)
# The timeline's length and lag (waiting slots, the longest model timeline, the most overdue slot) and queue
# depth per model are computed at scrape time from the database (web/ops.py), so it is always right.


def multiprocess_dir() -> str | None:
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


def count_outcomes(purchases) -> None:
    """Count the committed purchases that reached an outcome (a start is not one)."""
    for p in purchases:
        if p.status in OUTCOMES:
            PURCHASES.labels(outcome=p.status, reason=p.failure_reason or p.refund_reason or "").inc()


def count_settled(purchases) -> None:
    """Record the worker's verdicts: outcome counts and creation-to-settlement latency."""
    count_outcomes(purchases)
    for p in purchases:
        if p.settled_at is not None and p.created_at is not None:
            SETTLEMENT_LATENCY.observe(max(0.0, (p.settled_at - p.created_at).total_seconds()))


def exposition(extra_collectors=()) -> tuple[bytes, str]:
    """The text exposition of every process's metrics (plus `extra_collectors`), and its content type."""
    if multiprocess_dir():
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    else:
        registry = CollectorRegistry()
        registry.register(_Delegate(REGISTRY))
    for collector in extra_collectors:
        registry.register(collector)
    return generate_latest(registry), CONTENT_TYPE_LATEST


class _Delegate:
    """Exposes another registry's metrics inside a per-scrape registry."""

    def __init__(self, registry):
        self.registry = registry

    def collect(self):
        return self.registry.collect()


def mark_process_dead(pid: int) -> None:
    """gunicorn's child_exit hook: drop a dead process's live-gauge files."""
    if multiprocess_dir():
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)
