"""gunicorn entry point: `gunicorn -c python:web.gunicorn_conf web.wsgi:app`. The web process's one settings
object is read from the environment here."""
from models.infra.logs import configure_logging
from models.settings import Settings

from . import create_app

settings = Settings.from_env()
configure_logging(settings.log_level)
app = create_app(settings)
