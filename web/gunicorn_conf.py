"""gunicorn settings (`gunicorn -c python:web.gunicorn_conf web.wsgi:app`); command-line flags still win.

WEB_CONCURRENCY (worker processes) and WEB_THREADS come from the environment; where it listens (WEB_BIND,
WEB_PORT) and the log level from the settings."""
import os

from gunicorn.glogging import Logger

from models.settings import settings_or_exit

_settings = settings_or_exit()  # a bad setting: one clear line, before any worker starts
bind = f"{_settings.web_bind}:{_settings.web_port}"
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
threads = int(os.environ.get("WEB_THREADS", "4"))
worker_class = "gthread"
accesslog = None  # the app logs one JSON line per request, with its request id


class NoAccessLogger(Logger):
    """gunicorn writes its own access line whenever logconfig_dict is set; the app's line (web/ops.py) already
    says it all, so the second one is only CPU."""

    def access(self, resp, req, environ, request_time):
        pass


logger_class = NoAccessLogger
logconfig_dict = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"json": {"()": "models.infra.logs.JsonFormatter"}},
    "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "json", "stream": "ext://sys.stderr"}},
    "root": {"level": _settings.log_level, "handlers": ["stderr"]},
    "loggers": {
        "gunicorn.error": {"level": "INFO", "handlers": [], "propagate": True},
        "gunicorn.access": {"level": "INFO", "handlers": [], "propagate": True},
    },
}


def child_exit(_server, worker):
    # prometheus_client multiprocess mode: forget a dead worker's live gauges.
    from models.infra.metrics import mark_process_dead

    mark_process_dead(worker.pid)

# gunicorn >= 24 opens a control socket in $HOME by default; several gunicorns on one host would share it.
control_socket_disable = True
