"""Operations: /healthz, /readyz, /metrics, and the per-request hooks (request id, metrics, access log)."""
from __future__ import annotations

import hmac
import itertools
import logging
import os
import re
import time
import uuid
from functools import lru_cache

import redis
from flask import Response, g, request
from marshmallow import Schema, fields
from prometheus_client.core import GaugeMetricFamily
from sqlalchemy import func, select

from models import webhooks
from models.db import engine_for
from models.infra import metrics
from models.infra.logs import request_id_var
from models.schema import at_head
from models.services.activations import timeline_stats
from models.purchases import OPEN_QUEUE_STATUSES, Purchase
from models.types import utcnow

from .deps import runtime, settings
from .docs import error, public
from .errors import error_response
from .json_body import Blueprint

log = logging.getLogger(__name__)
access_log = logging.getLogger("perfmenu.access")
blp = Blueprint("ops", __name__, description="Health, readiness and metrics (no token needed)")

CHECK_TIMEOUT_SECONDS = 2
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")


class HealthOut(Schema):
    status = fields.String(required=True, metadata={"example": "ok"})


class ReadyOut(Schema):
    status = fields.String(required=True, metadata={"example": "ready"})
    checks = fields.Dict(keys=fields.String(), values=fields.String(),
                         metadata={"example": {"database": "ok", "schema": "ok", "redis": "ok", "broker": "ok"}})


@blp.route("/healthz", methods=["GET"])
@public
@blp.response(200, HealthOut, example={"status": "ok"})
def healthz():
    """The process is up (no dependency is checked)."""
    return {"status": "ok"}


@blp.route("/readyz", methods=["GET"])
@public
@blp.response(200, ReadyOut, example={"status": "ready", "checks": {"database": "ok", "schema": "ok", "redis": "ok",
                                                                  "broker": "ok"}})
@error(503, "not_ready", "Not ready: redis", description="not_ready: the message names what is down; `checks` "
       "has each dependency's state")
def readyz():
    """The database (with every migration applied), Redis and the Celery broker are reachable."""
    checks = readiness(settings())
    down = [name for name, state in checks.items() if state not in ("ok", "embedded")]
    if down:
        return error_response(503, "not_ready", "Not ready: " + ", ".join(down), checks=checks)
    return {"status": "ready", "checks": checks}


@blp.route("/metrics", methods=["GET"])
@public
@blp.response(200, description="Prometheus text exposition (all web and worker processes of this machine)",
              content_type="text/plain")
@error(401, "unauthorized", "A bearer token is required", description="unauthorized: METRICS_TOKEN is set and "
       "the request did not send it")
def prometheus_metrics():
    """Prometheus metrics. Open unless METRICS_TOKEN is set; then send `Authorization: Bearer <METRICS_TOKEN>`."""
    token = settings().metrics_token
    sent = request.headers.get("Authorization", "").encode()
    if token and not hmac.compare_digest(sent, f"Bearer {token}".encode()):
        return error_response(401, "unauthorized", "A bearer token is required")
    body, content_type = metrics.exposition([QueueDepthCollector(runtime())])
    return Response(body, content_type=content_type)


def readiness(settings) -> dict[str, str]:
    schema = _check(lambda: _schema_state(settings.database_url))  # one connection answers both
    checks = {"database": "down"} if schema == "down" else {"database": "ok", "schema": schema}
    checks["redis"] = "embedded" if settings.redis_url is None else _check(lambda: _ping_redis(settings.redis_url))
    broker = settings.broker_url
    if broker is None or broker.startswith("memory://"):
        checks["broker"] = "embedded"
    elif broker.startswith(("redis://", "rediss://", "unix://")):
        checks["broker"] = _check(lambda: _ping_redis(broker))
    else:
        checks["broker"] = _check(lambda: _ping_kombu(broker))
    return checks


def _check(probe) -> str:
    """The probe's state ("ok" if it says none), or "down" if it raised."""
    try:
        return probe() or "ok"
    except Exception as exc:
        # The type only: an exception's text may hold a URL with a password.
        log.warning("readiness check failed", extra={"error_type": type(exc).__name__})
        return "down"


def _schema_state(url: str) -> str:
    with engine_for(url).connect() as conn:
        return "ok" if at_head(conn) else "not_migrated"


def _ping_redis(url: str) -> None:
    client = redis.Redis.from_url(url, socket_timeout=CHECK_TIMEOUT_SECONDS,
                                  socket_connect_timeout=CHECK_TIMEOUT_SECONDS)
    try:
        client.ping()
    finally:
        client.close()


def _ping_kombu(url: str) -> None:
    from kombu import Connection

    with Connection(url, connect_timeout=CHECK_TIMEOUT_SECONDS) as conn:
        conn.ensure_connection(max_retries=1)


class QueueDepthCollector:
    """The performance queues, read from the database at scrape time (exact whichever process changed them),
    with a bounded label set (no label per model): open entries by status, the deepest model queue, and the age
    of the oldest open entry."""

    def __init__(self, runtime):
        self.runtime = runtime

    def collect(self):
        session = self.runtime.new_session()
        try:
            is_open = Purchase.status.in_(OPEN_QUEUE_STATUSES)
            by_status = dict(session.execute(
                select(Purchase.status, func.count()).where(is_open).group_by(Purchase.status)).all())
            per_model = select(func.count().label("depth")).where(is_open).group_by(Purchase.model_id).subquery()
            deepest = session.scalar(select(func.coalesce(func.max(per_model.c.depth), 0)))
            oldest = session.scalar(select(func.min(Purchase.created_at)).where(is_open))
            toys = timeline_stats(session)
            hooks = webhooks.backlog_stats(session)
        except Exception as exc:  # the database is down: the rest of the scrape still answers
            log.warning("queue depth not collected", extra={"error_type": type(exc).__name__})
            return
        finally:
            session.close()
        entries = GaugeMetricFamily("perfmenu_queue_entries", "Open queue entries of all models, by status",
                                    labels=["status"])
        for status in OPEN_QUEUE_STATUSES:
            entries.add_metric([status], by_status.get(status, 0))
        yield entries
        yield GaugeMetricFamily("perfmenu_queue_depth_max", "Open entries of the deepest model queue",
                                value=deepest)
        age = (utcnow() - oldest).total_seconds() if oldest is not None else 0
        yield GaugeMetricFamily("perfmenu_queue_oldest_entry_age_seconds",
                                "Seconds since the oldest open queue entry was bought (0: no open entry)", value=age)
        # The toy timelines (docs/architecture.md, "Lovense"), with no label per model.
        yield GaugeMetricFamily("perfmenu_lovense_timeline_slots", "Toy slots waiting on all models' timelines",
                                value=toys["waiting"])
        yield GaugeMetricFamily("perfmenu_lovense_timeline_longest", "Waiting toy slots of the longest timeline",
                                value=toys["longest"])
        yield GaugeMetricFamily("perfmenu_lovense_timeline_lag_seconds",
                                "Seconds the most overdue waiting toy slot is past its start (0: none)",
                                value=toys["lag"])
        yield GaugeMetricFamily("perfmenu_webhook_deliveries_pending", "Webhook deliveries not made yet (active "
                                "endpoints)", value=hooks["pending"])
        yield GaugeMetricFamily("perfmenu_webhook_lag_seconds",
                                "Seconds the most overdue webhook delivery is past its due time (0: none)",
                                value=hooks["lag"])


_REQUEST_ID_PREFIX = uuid.uuid4().hex[:16]  # this process's; a fork gets its own (below)
_request_numbers = itertools.count()


def _new_request_id() -> str:
    """Unique across processes and restarts (a random prefix per process, then a counter), without a syscall for
    random bytes on every request as uuid4 makes."""
    return f"{_REQUEST_ID_PREFIX}{next(_request_numbers):016x}"


def _reseed_request_ids() -> None:
    global _REQUEST_ID_PREFIX
    _REQUEST_ID_PREFIX = uuid.uuid4().hex[:16]


os.register_at_fork(after_in_child=_reseed_request_ids)  # gunicorn forks its workers after importing the app


@lru_cache(maxsize=1024)  # routes x methods x statuses: bounded
def _series(endpoint: str, method: str, status: int):
    """The request counter's and the latency histogram's series of one kind of answer, looked up once (labels()
    validates and locks on every call)."""
    return (metrics.HTTP_REQUESTS.labels(endpoint=endpoint, method=method, status=str(status)),
            metrics.HTTP_LATENCY.labels(endpoint=endpoint))


def init_request_hooks(app) -> None:
    """Request id (accepted from X-Request-ID or generated, echoed back), HTTP metrics and one access log line
    per request (endpoint and status, never the query string or body)."""

    @app.before_request
    def _start():
        incoming = request.headers.get("X-Request-ID", "")
        g.request_id = incoming if _REQUEST_ID.match(incoming) else _new_request_id()
        g.request_id_token = request_id_var.set(g.request_id)
        g.request_started = time.perf_counter()

    @app.after_request
    def _finish(response):
        request_id = g.get("request_id")
        if request_id is None:  # a failure before _start ran
            return response
        response.headers["X-Request-ID"] = request_id
        endpoint = request.url_rule.rule if request.url_rule is not None else "unmatched"
        elapsed = time.perf_counter() - g.request_started
        requests, latency = _series(endpoint, request.method, response.status_code)
        requests.inc()
        latency.observe(elapsed)
        access_log.info("request", extra={"method": request.method, "endpoint": endpoint,
                                   "status": response.status_code, "duration_ms": round(elapsed * 1000, 1)})
        return response

    @app.teardown_request
    def _forget(_exc=None):
        token = g.pop("request_id_token", None)
        if token is not None:
            request_id_var.reset(token)
