"""The settlement hand-off's Redis protocol (models/services/settle_signal.py), on fakeredis and a dead Redis."""
import time

import fakeredis
import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from models.services.settle_signal import (
    MAX_TASK_SECONDS,
    SCHEDULED_KEY,
    SCHEDULED_TTL_SECONDS,
    WAKE_KEY,
    keep_scheduled,
    lingering,
    promise_claim,
    release_scheduled,
    wait_for_purchases,
)


@pytest.fixture
def r():
    return fakeredis.FakeRedis(decode_responses=True)


@pytest.fixture
def dead():
    """A real client to a closed port (no retries, so it fails at once)."""
    return redis.Redis(port=1, socket_connect_timeout=0.1, retry=Retry(NoBackoff(), 0))


def test_only_the_first_promise_publishes(r):
    """The first intake sets the flag and must publish; the next ones see it set and must not."""
    assert promise_claim(r) is True
    assert promise_claim(r) is False
    assert promise_claim(r) is False
    assert 0 < r.ttl(SCHEDULED_KEY) <= SCHEDULED_TTL_SECONDS


def test_every_promise_pushes_a_wake_up(r):
    """Each intake pushes to the wake list (with a TTL), published or not."""
    promise_claim(r)
    promise_claim(r)
    assert r.llen(WAKE_KEY) == 2
    assert 0 < r.ttl(WAKE_KEY) <= SCHEDULED_TTL_SECONDS


def test_keep_scheduled_empties_the_wake_list_and_keeps_the_flag(r):
    """Before a claim the task keeps the flag set (so intake does not publish) and drops the answered wake-ups."""
    promise_claim(r)
    promise_claim(r)
    keep_scheduled(r)
    assert r.llen(WAKE_KEY) == 0
    assert 0 < r.ttl(SCHEDULED_KEY) <= SCHEDULED_TTL_SECONDS
    assert promise_claim(r) is False


def test_keep_scheduled_sets_the_flag_even_if_it_had_expired(r):
    """A task still running re-promises: intake after keep_scheduled does not publish."""
    keep_scheduled(r)
    assert promise_claim(r) is False


def test_after_release_the_next_promise_publishes_again(r):
    """Once the task releases the flag, the next intake must publish a new task."""
    promise_claim(r)
    release_scheduled(r)
    assert r.exists(SCHEDULED_KEY) == 0
    assert promise_claim(r) is True


def test_wait_for_purchases_returns_on_a_wake_up(r):
    """A wake-up pushed before the wait is not lost: the wait returns True at once and consumes it."""
    promise_claim(r)
    assert wait_for_purchases(r, 1) is True
    assert r.llen(WAKE_KEY) == 0


def test_wait_for_purchases_times_out_when_idle(r):
    """With nothing pushed, the wait blocks for its timeout and returns False; a timeout <= 0 does not wait."""
    start = time.monotonic()
    assert wait_for_purchases(r, 0.05) is False
    assert time.monotonic() - start >= 0.04
    promise_claim(r)
    assert wait_for_purchases(r, 0) is False
    assert r.llen(WAKE_KEY) == 1  # not consumed


def test_an_old_task_stops_lingering(r):
    """A task older than MAX_TASK_SECONDS ends instead of waiting, even with a wake-up pending."""
    promise_claim(r)
    assert lingering(r, 1, time.monotonic() - MAX_TASK_SECONDS) is False
    assert r.llen(WAKE_KEY) == 1
    assert lingering(r, 1, time.monotonic()) is True


def test_redis_down_means_publish(dead):
    """If Redis cannot be asked, intake publishes (True); the task's calls log and return, never raise."""
    with pytest.raises(redis.ConnectionError):
        dead.ping()  # the client really fails
    assert promise_claim(dead) is True
    keep_scheduled(dead)
    release_scheduled(dead)
    assert wait_for_purchases(dead, 0.1) is False
