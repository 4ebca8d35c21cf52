"""gunicorn entry point: `gunicorn web.wsgi:app`."""
from . import create_app

app = create_app()
