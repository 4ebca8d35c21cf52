"""Issue 3: the Redis queue's ordering, positions and waits (fakeredis unit tests), and the lookup's cost on a
10,000-entry queue in a real Redis."""
from __future__ import annotations

import statistics
import time
import uuid
from datetime import datetime, timedelta, timezone
from types import SimpleNamespace

import fakeredis
import pytest

from conftest import RUNTIME

from models.services import performance_queue

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
MODEL = uuid.uuid4()


def entry(i, priority, duration, status="queued", model_id=MODEL, created=None):
    # Plain objects with a Purchase's fields: the queue reads nothing else.
    return SimpleNamespace(id=uuid.uuid4(), model_id=model_id, created_at=created or T0 + timedelta(seconds=i),
                           queue_priority=priority, estimated_duration_minutes=duration, status=status,
                           transaction_type="queued")


def expected(entries):
    """(position, wait) per entry id, computed the slow, obvious way."""
    order = sorted((e for e in entries if e.status in ("queued", "in_progress")),
                   key=lambda e: (e.status != "in_progress", -e.queue_priority, e.created_at, str(e.id)))
    out, wait = {}, 0
    for pos, e in enumerate(order, start=1):
        out[e.id] = (pos, wait)
        wait += e.estimated_duration_minutes
    return out


def positions(r, entries):
    return {e.id: performance_queue.position(e, r) for e in entries if e.status in ("queued", "in_progress")}


@pytest.fixture
def r():
    return fakeredis.FakeRedis(decode_responses=True)


def test_priority_order_with_ties_then_fifo_and_in_progress_first(r):
    es = [entry(0, 100, 10), entry(1, 300, 20), entry(2, 200, 5), entry(3, 100, 7), entry(4, 300, 1),
          entry(5, 0, 3)]
    performance_queue.sync(es, r)
    got = positions(r, es)
    # 300 (t1), 300 (t4), 200, 100 (t0), 100 (t3), 0
    assert got[es[1].id] == (1, 0)
    assert got[es[4].id] == (2, 20)
    assert got[es[2].id] == (3, 21)
    assert got[es[0].id] == (4, 26)
    assert got[es[3].id] == (5, 36)
    assert got[es[5].id] == (6, 43)
    assert got == expected(es)

    es[3].status = "in_progress"  # the model starts the cheapest-but-one: it jumps to the front
    performance_queue.sync([es[3]], r)
    assert positions(r, es) == expected(es)
    assert performance_queue.position(es[3], r) == (1, 0)
    assert performance_queue.position(es[1], r) == (2, 7)

    es[3].status = "completed"
    es[4].status = "refunded"
    performance_queue.sync([es[3], es[4]], r)
    assert performance_queue.position(es[3], r) is None
    assert positions(r, es) == expected(es)
    assert performance_queue.position(es[5], r) == (4, 35)


def test_fifo_is_arrival_order_and_same_microsecond_is_stable(r):
    same = T0 + timedelta(seconds=9)
    es = [entry(i, 0, d) for i, d in enumerate([5, 50, 1, 0, 12])] + [entry(0, 0, 4, created=same),
                                                                       entry(0, 0, 6, created=same)]
    performance_queue.sync(es, r)
    assert positions(r, es) == expected(es)
    assert [performance_queue.position(e, r)[0] for e in es[:5]] == [1, 2, 3, 4, 5]
    es[1].status = "refunded"
    performance_queue.sync([es[1]], r)
    assert positions(r, es) == expected(es)


def test_sync_twice_changes_nothing_and_remove_of_an_absent_entry_is_harmless(r):
    es = [entry(i, 10 * (i % 3), i + 1) for i in range(8)]
    performance_queue.sync(es, r)
    before = (r.zrange(performance_queue._keys(MODEL)[0], 0, -1, withscores=True), r.hgetall(performance_queue._keys(MODEL)[2]))
    performance_queue.sync(es, r)
    assert (r.zrange(performance_queue._keys(MODEL)[0], 0, -1, withscores=True), r.hgetall(performance_queue._keys(MODEL)[2])) == before
    gone = entry(99, 5, 5, status="refunded")
    performance_queue.sync([gone], r)
    assert positions(r, es) == expected(es)
    for e in es:
        e.status = "completed"
    performance_queue.sync(es, r)
    assert r.keys("perfmenu:queue:*") == []  # nothing left behind once the queue is empty


def test_models_have_separate_queues(r):
    other = uuid.uuid4()
    a = [entry(i, 50, 10) for i in range(3)]
    b = [entry(i, 50, 10, model_id=other) for i in range(2)]
    performance_queue.sync(a + b, r)
    assert performance_queue.position(b[1], r) == (2, 10)
    assert performance_queue.position(a[2], r) == (3, 20)


def test_random_mix_matches_the_obvious_computation(r):
    import random

    rnd = random.Random(7)
    es = [entry(i, rnd.choice([0, 100, 200, 200, 500]), rnd.choice([0, 3, 10, 30])) for i in range(60)]
    performance_queue.sync(es, r)
    for _ in range(40):
        e = rnd.choice(es)
        if e.status == "queued" and not any(x.status == "in_progress" for x in es) and rnd.random() < 0.3:
            e.status = "in_progress"
        elif e.status in ("queued", "in_progress"):
            e.status = rnd.choice(["completed", "refunded"])
        performance_queue.sync([e], r)
        assert positions(r, es) == expected(es)


def test_position_lookup_on_a_10000_entry_queue_takes_under_2_ms(redis_client):
    r = RUNTIME.redis
    es = [entry(i, [500, 200, 1000, 200, 150, 0][i % 6], [5, 10, 0, 30, 10, 45][i % 5]) for i in range(10_000)]
    es[123].status = "in_progress"
    for i in range(0, len(es), 1000):
        performance_queue.sync(es[i:i + 1000], r)
    want = expected(es)
    last = max(es, key=lambda e: want[e.id][0])
    assert performance_queue.position(last, r) == want[last.id] and want[last.id][0] == 10_000
    for e in es[::997]:
        assert performance_queue.position(e, r) == want[e.id]
    timings = []
    for _ in range(200):
        t = time.perf_counter()
        performance_queue.position(last, r)
        timings.append(time.perf_counter() - t)
    median_ms = statistics.median(timings) * 1000
    print(f"position lookup, 10,000 entries: median {median_ms:.3f} ms")
    assert median_ms < 2.0
