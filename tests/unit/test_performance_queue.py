"""The performance queue's ordering keys (models/services/performance_queue.py), and the Lua scripts on fakeredis."""
import uuid
from datetime import datetime, timedelta, timezone

import fakeredis
import pytest

from models.purchases import Purchase
from models.services import performance_queue as pq

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=timezone.utc)
MODEL = uuid.uuid4()
QUEUE_KEY = f"{pq.KEY_PREFIX}{MODEL}"


def entry(status="queued", priority=0, seconds=0, minutes=0, pid=None):
    return Purchase(id=pid or uuid.uuid4(), model_id=MODEL, status=status, transaction_type="queued",
                    queue_priority=priority, created_at=T0 + timedelta(seconds=seconds),
                    estimated_duration_minutes=minutes)


def test_member_is_zero_padded_microseconds_then_id():
    """The member is created_at in microseconds since the epoch, 17 digits, then ':' and the purchase id."""
    p = entry()
    p.created_at = datetime(1970, 1, 1, 0, 0, 1, 5, tzinfo=timezone.utc)
    assert pq.member(p) == f"00000000001000005:{p.id}"
    assert pq.purchase_id_of(pq.member(p)) == str(p.id)


def test_member_is_stable():
    """The same purchase always maps to the same member (so adding it twice is a no-op)."""
    p = entry(seconds=3)
    assert pq.member(p) == pq.member(p)


def test_score():
    """Queued entries score -priority; the entry in progress scores below any priority."""
    assert pq.score(entry(priority=0)) == 0
    assert pq.score(entry(priority=250)) == -250
    assert pq.score(entry(status="in_progress", priority=99_999)) == pq.IN_PROGRESS_SCORE
    assert pq.IN_PROGRESS_SCORE < -99_999


def test_sorting_by_score_then_member_is_the_queue_order():
    """(score, member), Redis's own order, puts the entry in progress first, then higher priority, then
    earlier arrival, then purchase id among entries created at the same microsecond."""
    low_id, high_id = uuid.UUID(int=1), uuid.UUID(int=2)
    expected = [
        entry(status="in_progress", priority=1, seconds=50),
        entry(priority=30, seconds=40),
        entry(priority=10, seconds=1),
        entry(priority=10, seconds=2, pid=low_id),
        entry(priority=10, seconds=2, pid=high_id),
        entry(priority=0, seconds=0),
    ]
    shuffled = [expected[i] for i in (5, 3, 0, 4, 1, 2)]
    assert sorted(shuffled, key=lambda p: (pq.score(p), pq.member(p))) == expected


def test_member_order_follows_arrival_across_digit_counts():
    """Zero padding keeps byte order equal to time order, even far from the epoch."""
    early = entry()
    early.created_at = datetime(1970, 1, 1, tzinfo=timezone.utc) + timedelta(microseconds=9)
    late = entry()
    late.created_at = datetime(1970, 1, 1, tzinfo=timezone.utc) + timedelta(microseconds=10)
    assert pq.member(early) < pq.member(late) < pq.member(entry())


# --- the Lua scripts, on fakeredis (needs lupa) -------------------------------------------------------------

@pytest.fixture
def r():
    pytest.importorskip("lupa")
    return fakeredis.FakeRedis(decode_responses=True)


def test_sync_orders_the_set_and_position_sums_the_wait(r):
    """After sync, the Redis set is in queue order and position() returns (rank, minutes of the entries ahead)."""
    started = entry(status="in_progress", priority=5, seconds=9, minutes=7)
    rich = entry(priority=50, seconds=5, minutes=3)
    first = entry(priority=5, seconds=1, minutes=2)
    second = entry(priority=5, seconds=2, minutes=4)
    pq.sync([second, first, rich, started], r)
    order = [started, rich, first, second]
    assert r.zrange(QUEUE_KEY, 0, -1) == [pq.member(p) for p in order]
    assert [pq.position(p, r) for p in order] == [(1, 0), (2, 7), (3, 10), (4, 12)]


def test_sync_twice_is_a_no_op_and_closed_entries_leave(r):
    """Syncing the same entries again changes nothing; a completed entry is removed, the others move up."""
    a, b = entry(seconds=1, minutes=5), entry(seconds=2, minutes=5)
    pq.sync([a, b], r)
    pq.sync([a, b], r)
    assert r.zcard(QUEUE_KEY) == 2
    a.status = "completed"
    pq.sync([a], r)
    assert pq.position(a, r) is None
    assert pq.position(b, r) == (1, 0)


def test_sync_ignores_pending_and_queue_off_purchases(r):
    """Only settled Queue ON purchases enter the queue."""
    pending = entry(status="pending")
    immediate = entry(status="completed")
    immediate.transaction_type = "immediate"
    pq.sync([pending, immediate], r)
    assert r.keys("*") == []


def test_starting_an_entry_moves_it_to_the_front(r):
    """A low-priority entry that goes in_progress is re-scored ahead of a higher-priority one."""
    low, high = entry(priority=1, seconds=1, minutes=2), entry(priority=9, seconds=2, minutes=3)
    pq.sync([low, high], r)
    assert pq.position(low, r) == (2, 3)
    low.status = "in_progress"
    pq.sync([low], r)
    assert pq.position(low, r) == (1, 0)
    assert pq.position(high, r) == (2, 2)
