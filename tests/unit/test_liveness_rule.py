"""The worker watchdog's rule (worker/liveness.py): a stall is a backlog with nothing held and nothing taken."""
from worker.liveness import stalled_since


def test_a_stall_starts_with_a_backlog_and_restarts_at_each_message_taken():
    assert stalled_since(0, False, None, 0.0, 10.0) is None  # no backlog
    assert stalled_since(5, True, 3.0, 0.0, 10.0) is None  # busy with what it reserved
    assert stalled_since(5, False, None, 0.0, 10.0) == 10.0  # a backlog seen now
    assert stalled_since(5, False, 10.0, 0.0, 40.0) == 10.0  # still there: the stall goes on
    assert stalled_since(5, False, 10.0, 25.0, 40.0) == 25.0  # a message taken since: it counts from then
