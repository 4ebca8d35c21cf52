"""JSON logs, one line per record, for the web, worker, beat and flower processes.

Each line carries the request id (web: from `X-Request-ID` or generated) or the Celery task id (worker), and
the record's `extra` fields. Log ids only: never usernames, passwords, tokens or secrets. As a second line of
defence, extra fields whose name looks secret are dropped.
"""
from __future__ import annotations

import json
import logging
import sys
from contextvars import ContextVar
from datetime import datetime, timezone

request_id_var: ContextVar[str | None] = ContextVar("request_id", default=None)

# Attributes every LogRecord has; anything else on a record came from `extra=`.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime", "taskName"}
_SECRET_WORDS = ("password", "token", "secret", "authorization", "cookie", "username")


def _task_id() -> str | None:
    try:
        from celery._state import get_current_task
    except ImportError:  # pragma: no cover
        return None
    task = get_current_task()
    return getattr(task.request, "id", None) if task is not None else None


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {
            "ts": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        request_id = request_id_var.get()
        if request_id:
            out["request_id"] = request_id
        else:  # a request is never a task: no lookup on the web's hot path
            task_id = _task_id()
            if task_id:
                out["task_id"] = task_id
        for key, value in vars(record).items():
            if key in _STANDARD or key.startswith("_") or any(w in key.lower() for w in _SECRET_WORDS):
                continue
            out[key] = value
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


# Beat's periodic jobs: Celery logs each one it sends, receives and finishes at INFO, lines every few seconds
# that say nothing. They are DEBUG here; a job that changes something logs its own INFO line.
ROUTINE_TASKS = ("perfmenu.sweep_pending", "perfmenu.sweep_escrow_deadlines", "perfmenu.reconcile_queues",
                 "perfmenu.sweep_activations", "perfmenu.sweep_timelines", "perfmenu.relay_outbox",
                 "perfmenu.dispatch_webhooks")


class RoutineTaskLines(logging.Filter):
    """Demotes Celery's INFO lines about beat's routine jobs to DEBUG (and drops them below `level`)."""

    def __init__(self, level):
        super().__init__()
        self.level = logging.getLevelName(level) if isinstance(level, str) else level

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno == logging.INFO and record.name.startswith("celery") and any(
                task in record.getMessage() for task in ROUTINE_TASKS):
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
            return self.level <= logging.DEBUG
        return True


def configure_logging(level: str = "INFO") -> None:
    """Send every logger's records to stderr as JSON lines (idempotent)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(RoutineTaskLines(level))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for name in ("gunicorn.error", "gunicorn.access", "celery", "celery.task", "celery.worker", "flower"):
        logger = logging.getLogger(name)
        logger.handlers[:] = []
        logger.propagate = True
