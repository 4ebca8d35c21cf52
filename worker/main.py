"""Entry point of the worker, beat and flower processes (`celery -A worker.main ...`, see the Procfile): the
process's one settings object, read from the environment here and nowhere else."""
from models.runtime import Runtime
from models.settings import Settings

from .celery_app import bind_runtime, celery

bind_runtime(Runtime(Settings.from_env()))

__all__ = ["celery"]
