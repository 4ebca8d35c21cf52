"""gunicorn entry point: `gunicorn -c python:web.gunicorn_conf web.wsgi:app`."""
from models.settings import get_settings
from worker.logs import configure_logging

from . import create_app

configure_logging(get_settings().log_level)
app = create_app()
