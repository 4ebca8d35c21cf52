"""Retry backoff, the per-model rate window and the per-model lock (models/services/activations.py)."""
import time
import uuid

import fakeredis
import pytest

from models.services.activations import acquire_model_lock, backoff, release_model_lock, take_rate_slot
from models.settings import Settings

SETTINGS = Settings.from_env({"LOVENSE_BACKOFF_SECONDS": "1", "LOVENSE_BACKOFF_MAX_SECONDS": "8"})


@pytest.fixture
def r():
    return fakeredis.FakeRedis(decode_responses=True)


@pytest.mark.parametrize("attempt,ceiling", [(1, 1), (2, 2), (3, 4), (4, 8), (5, 8), (30, 8)])
def test_backoff_is_exponential_capped_with_equal_jitter(attempt, ceiling):
    """Retry n waits between half and all of min(max, base * 2**(n-1)), and the jitter really varies."""
    delays = [backoff(attempt, SETTINGS) for _ in range(300)]
    assert all(ceiling / 2 <= d <= ceiling for d in delays)
    assert max(delays) - min(delays) > ceiling / 4


def test_rate_slot_fixed_window(r):
    """`limit` slots per window; the next call is told the seconds left in the window; a new window resets."""
    model = uuid.uuid4()
    assert take_rate_slot(r, model, 2, 60, now=120.0) == 0
    assert take_rate_slot(r, model, 2, 60, now=125.0) == 0
    assert take_rate_slot(r, model, 2, 60, now=130.0) == pytest.approx(50.0)
    assert take_rate_slot(r, model, 2, 60, now=179.5) == pytest.approx(0.5)
    assert take_rate_slot(r, model, 2, 60, now=180.0) == 0


def test_rate_slots_are_per_model_and_expire(r):
    """One model's full window does not block another; the counter key expires just after its window."""
    busy, other = uuid.uuid4(), uuid.uuid4()
    take_rate_slot(r, busy, 1, 60, now=0.0)
    assert take_rate_slot(r, busy, 1, 60, now=1.0) > 0
    assert take_rate_slot(r, other, 1, 60, now=1.0) == 0
    key = f"perfmenu:lovense:rate:{busy}:0"
    assert r.get(key) == "2"
    assert 0 < r.ttl(key) <= 61


def test_model_lock_is_exclusive_and_released_only_by_its_holder(r):
    """A second acquire fails while held; a wrong token does not release it; the right one does."""
    pytest.importorskip("lupa")  # release runs a Lua script
    model = uuid.uuid4()
    token = acquire_model_lock(r, model, 10)
    assert token
    assert acquire_model_lock(r, model, 10) is None
    release_model_lock(r, model, "not-the-token")
    assert acquire_model_lock(r, model, 10) is None
    release_model_lock(r, model, token)
    again = acquire_model_lock(r, model, 10)
    assert again and again != token
    assert acquire_model_lock(r, uuid.uuid4(), 10)  # other models are not blocked


def test_model_lock_expires_on_its_own(r):
    """The lock carries a TTL in milliseconds, so a dead holder frees it."""
    model = uuid.uuid4()
    assert acquire_model_lock(r, model, 10)
    assert 9_000 < r.pttl(f"perfmenu:lovense:inflight:{model}") <= 10_000
    short = uuid.uuid4()
    assert acquire_model_lock(r, short, 0.02)
    time.sleep(0.05)
    assert acquire_model_lock(r, short, 0.02)
