"""Flower's configuration file (`celery flower --conf=worker/flowerconfig.py --logging=none`): JSON logs like
every other process. Flower reads it with tornado's parse_config_file; names that match Flower options set them."""
from models.infra.logs import configure_logging as _configure_logging

_configure_logging()
