"""Entry point of the worker, beat and flower processes (`celery -A worker.main ...`, see the Procfile): the
process's one settings object, read from the environment here and nowhere else."""
from models.settings import settings_or_exit

settings = settings_or_exit()  # first: a bad setting ends the process with a clear line

from models.runtime import Runtime  # noqa: E402

from . import liveness  # noqa: E402,F401  (the consumer watchdog of worker processes)
from .celery_app import bind_runtime, celery  # noqa: E402

bind_runtime(Runtime(settings))

__all__ = ["celery"]
