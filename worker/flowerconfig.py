"""Flower's configuration file (`celery flower --conf=worker/flowerconfig.py --logging=none`): JSON logs like
every other process. Flower reads it with tornado's parse_config_file; names that match Flower options set them."""
import logging as _logging

from models.infra.logs import configure_logging as _configure_logging

_configure_logging()
# Flower asks the workers for their state as it starts, before they answer: a WARNING per method that says
# nothing an operator can act on (the dashboard shows a worker that stays away).
_logging.getLogger("flower.inspector").setLevel(_logging.ERROR)
