"""gunicorn settings of the stream process (Procfile `stream`: `gunicorn -c python:web.stream_conf web.wsgi:app`):
one gevent worker holding many long event streams (web/events.py), so they never take the API's threads. The
rest (logging, metrics, no control socket) is web/gunicorn_conf.py's."""
import os

from web.gunicorn_conf import (  # noqa: F401
    _settings, child_exit, control_socket_disable, logconfig_dict, logger_class)

bind = f"{_settings.web_bind}:{_settings.stream_port}"
worker_class = "gevent"
workers = int(os.environ.get("STREAM_CONCURRENCY", "1"))
worker_connections = int(os.environ.get("STREAM_CONNECTIONS", "2000"))
accesslog = None
