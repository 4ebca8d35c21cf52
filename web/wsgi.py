"""gunicorn entry point: `gunicorn -c python:web.gunicorn_conf web.wsgi:app`. The web process's one settings
object is read from the environment here."""
from models.settings import settings_or_exit

settings = settings_or_exit()  # first: a bad setting ends the process with a clear line

from models.infra.logs import configure_logging  # noqa: E402

from . import create_app  # noqa: E402

configure_logging(settings.log_level)
app = create_app(settings)
