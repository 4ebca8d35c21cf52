"""The JSON logs' filter for beat's routine jobs: Celery's INFO lines about them become DEBUG."""
import logging

from models.infra.logs import RoutineTaskLines


def record(name, level, message):
    return logging.LogRecord(name, level, __file__, 1, message, (), None)


def test_celerys_lines_about_routine_jobs_are_debug_and_others_stay():
    at_info, at_debug = RoutineTaskLines("INFO"), RoutineTaskLines("DEBUG")
    routine = record("celery.app.trace", logging.INFO, "Task perfmenu.sweep_pending[1] succeeded in 0.01s: {}")
    assert at_info.filter(routine) is False and routine.levelname == "DEBUG"
    assert at_debug.filter(record("celery.beat", logging.INFO,
                                  "Scheduler: Sending due task sweep-pending (perfmenu.sweep_pending)")) is True
    settle = record("celery.app.trace", logging.INFO, "Task perfmenu.settle_purchases[2] succeeded")
    assert at_info.filter(settle) is True and settle.levelname == "INFO"
    failed = record("celery.app.trace", logging.ERROR, "Task perfmenu.sweep_pending[3] raised")
    assert at_info.filter(failed) is True and failed.levelname == "ERROR"
    ours = record("worker.tasks", logging.INFO, "perfmenu.sweep_pending settled something")
    assert at_info.filter(ours) is True
