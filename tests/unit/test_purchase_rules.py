"""The purchase's pure rules (models/purchases.py): the state machine, `refusal`, delivery hours and deadlines."""
from datetime import date, datetime, timedelta, timezone
from itertools import product
from zoneinfo import ZoneInfo

import pytest

from models.purchases import (
    DEFAULT_DELIVERY_HOURS,
    REFUSAL_REASONS,
    STATUSES,
    TRANSITIONS,
    InvalidTransition,
    Purchase,
    delivery_hours_for,
    escrow_deadline,
    purchase_day_of,
    refusal,
)
from models.shows import live_required

NOW = datetime(2024, 5, 1, 12, 0, tzinfo=timezone.utc)
TIMESTAMPS = ("settled_at", "started_at", "completed_at", "failed_at", "refunded_at")
STAMPED = {"queued": "settled_at", "in_progress": "started_at", "completed": "completed_at",
           "failed": "failed_at", "refunded": "refunded_at"}


def stamps(p):
    return {name: getattr(p, name) for name in TIMESTAMPS}


# --- the state machine -------------------------------------------------------------------------------------

def test_transition_table_is_what_the_docs_say():
    """Only pending, queued and in_progress have exits; completed, failed and refunded are final."""
    assert TRANSITIONS == {
        "pending": {"completed", "queued", "failed"},
        "queued": {"in_progress", "refunded"},
        "in_progress": {"completed", "refunded"},
    }


@pytest.mark.parametrize("current,wanted", [pair for pair in product(STATUSES, STATUSES)])
def test_every_pair_of_statuses(current, wanted):
    """Each allowed move sets the status and stamps its time; every other move raises and changes nothing."""
    p = Purchase(status=current)
    if wanted in TRANSITIONS.get(current, ()):
        p.transition(wanted, now=NOW)
        assert p.status == wanted
        assert getattr(p, STAMPED[wanted]) == NOW
    else:
        before = stamps(p)
        with pytest.raises(InvalidTransition) as err:
            p.transition(wanted, now=NOW)
        assert (err.value.current, err.value.wanted) == (current, wanted)
        assert p.status == current and stamps(p) == before


def test_leaving_pending_stamps_settled_at():
    """Completing straight from pending settles it too (settled_at == completed_at), and nothing else is set."""
    p = Purchase(status="pending")
    p.transition("completed", now=NOW)
    assert p.settled_at == p.completed_at == NOW
    assert p.started_at is None and p.failed_at is None and p.refunded_at is None


def test_later_transitions_keep_settled_at():
    """A queued entry started later keeps its original settled_at."""
    p = Purchase(status="pending")
    p.transition("queued", now=NOW)
    later = NOW + timedelta(hours=1)
    p.transition("in_progress", now=later)
    assert p.settled_at == NOW and p.started_at == later


def test_reasons_go_to_their_own_column():
    """`failed` records failure_reason, `refunded` records refund_reason; other moves ignore the reason."""
    failed = Purchase(status="pending")
    failed.transition("failed", now=NOW, reason="insufficient_balance")
    assert failed.failure_reason == "insufficient_balance" and failed.refund_reason is None

    refunded = Purchase(status="queued")
    refunded.transition("refunded", now=NOW, reason="escrow_expired")
    assert refunded.refund_reason == "escrow_expired" and refunded.failure_reason is None

    completed = Purchase(status="pending")
    completed.transition("completed", now=NOW, reason="ignored")
    assert completed.failure_reason is None and completed.refund_reason is None


def test_transition_without_now_uses_the_current_utc_time():
    """With no `now`, the stamp is an aware UTC time taken during the call."""
    p = Purchase(status="pending")
    before = datetime.now(timezone.utc)
    p.transition("queued")
    after = datetime.now(timezone.utc)
    assert before <= p.settled_at <= after and p.settled_at.tzinfo is not None


# --- refusal -----------------------------------------------------------------------------------------------

def never():
    raise AssertionError("this lazy count must not be asked")


def ask(**changes):
    """A purchase that passes every rule, with some inputs changed."""
    args = dict(buyer_active=True, available=True, live_required=True, live=True, queue_paused=False, price=10,
                balance=10, daily_max=None, bought_today=never, queued=False, queue_size=never, queue_capacity=50)
    args.update(changes)
    return refusal(**args)


def test_accepted_when_every_rule_passes():
    """An exact balance, a count under the daily max and a queue with room are accepted."""
    assert ask() is None
    assert ask(daily_max=3, bought_today=lambda: 2, queued=True, queue_size=lambda: 49) is None


@pytest.mark.parametrize("balance", [None, 0, 9])
def test_insufficient_balance(balance):
    """No wallet (None) refuses like a balance below the price."""
    assert ask(balance=balance) == "insufficient_balance"


@pytest.mark.parametrize("daily_max,bought,expected", [(1, 0, None), (2, 1, None), (2, 2, "daily_limit_reached"),
                                                       (2, 5, "daily_limit_reached"), (0, 0, "daily_limit_reached")])
def test_daily_limit(daily_max, bought, expected):
    """The daily limit refuses once the fan has bought daily_max (a max of 0 refuses everything)."""
    assert ask(daily_max=daily_max, bought_today=lambda: bought) == expected


@pytest.mark.parametrize("size,capacity,expected", [(0, 1, None), (49, 50, None), (50, 50, "queue_full"),
                                                    (60, 50, "queue_full"), (0, 0, "queue_full")])
def test_queue_capacity(size, capacity, expected):
    """A queued purchase is refused when the model's open entries reach the capacity."""
    assert ask(queued=True, queue_size=lambda: size, queue_capacity=capacity) == expected


def test_counts_are_not_asked_when_no_rule_needs_them():
    """No daily max: bought_today is never called; not queued: queue_size is never called (even at capacity 0)."""
    assert ask(daily_max=None, queued=False, queue_capacity=0) is None


def test_later_counts_are_not_asked_once_an_earlier_rule_refuses():
    """An earlier refusal stops the checks: no count query is made for rules after it."""
    assert ask(available=False, daily_max=1, queued=True) == "item_unavailable"
    assert ask(balance=0, daily_max=1, queued=True) == "insufficient_balance"
    assert ask(daily_max=1, bought_today=lambda: 1, queued=True) == "daily_limit_reached"


def test_rules_are_checked_in_the_order_of_REFUSAL_REASONS():
    """With several rules failing, the first failing one in REFUSAL_REASONS order is the answer."""
    failing = {
        "account_inactive": dict(buyer_active=False),
        "item_unavailable": dict(available=False),
        "show_ended": dict(show_ended=True),
        "model_not_live": dict(live=False),
        "queue_paused": dict(queued=True, queue_paused=True),
        "insufficient_balance": dict(balance=0),
        "daily_limit_reached": dict(daily_max=1, bought_today=lambda: 1),
        "queue_full": dict(queued=True, queue_size=lambda: 1, queue_capacity=1),
    }
    assert tuple(failing) == REFUSAL_REASONS
    for i, reason in enumerate(REFUSAL_REASONS):
        changes = {}
        for later in REFUSAL_REASONS[i:]:
            changes.update(failing[later])
        assert ask(**changes) == reason


@pytest.mark.parametrize("queued,live_only,needs_show,live,expected", [
    (False, False, True, False, "model_not_live"),   # Queue OFF is for the live stream
    (False, False, True, True, None),
    (False, False, False, False, None),              # the operator turned the show rule off
    (True, False, True, False, None),                # Queue ON: offline requests are what it is for
    (True, True, True, False, "model_not_live"),     # ... unless the menu is live-only
    (False, True, False, False, "model_not_live"),
    (True, True, False, True, None),
])
def test_live_rule(queued, live_only, needs_show, live, expected):
    """Queue OFF items and live-only menus need the model live; Queue ON items do not."""
    required = live_required(queued, live_only, needs_show)
    assert ask(queued=queued, queue_size=lambda: 0, live_required=required, live=live) == expected


def test_a_paused_queue_refuses_queue_on_only():
    """A paused queue refuses new Queue ON purchases, and only them."""
    assert ask(queued=True, queue_size=lambda: 0, queue_paused=True) == "queue_paused"
    assert ask(queued=False, queue_paused=True) is None


# --- delivery hours, deadlines, purchase days --------------------------------------------------------------

@pytest.mark.parametrize("item,menu,expected", [(5, 10, 5), (None, 10, 10), (0, 7, 7),
                                                (None, None, DEFAULT_DELIVERY_HOURS), (0, 0, DEFAULT_DELIVERY_HOURS)])
def test_delivery_hours_for(item, menu, expected):
    """The item's hours win, then the menu's default, then the platform's (24); 0 counts as unset."""
    assert DEFAULT_DELIVERY_HOURS == 24
    assert delivery_hours_for(item, menu) == expected


@pytest.mark.parametrize("hours,expected", [(1, timedelta(hours=1)), (72, timedelta(hours=72)),
                                            (None, timedelta(hours=24)), (0, timedelta(hours=24))])
def test_escrow_deadline(hours, expected):
    """The deadline is creation time plus the delivery hours (unset: 24 hours)."""
    assert escrow_deadline(NOW, hours) - NOW == expected


@pytest.mark.parametrize("moment,zone,day", [
    (datetime(2024, 1, 1, 23, 30, tzinfo=timezone.utc), "UTC", date(2024, 1, 1)),
    (datetime(2024, 1, 2, 3, 0, tzinfo=timezone.utc), "America/New_York", date(2024, 1, 1)),
    (datetime(2024, 1, 1, 16, 0, tzinfo=timezone.utc), "Asia/Tokyo", date(2024, 1, 2)),
])
def test_purchase_day_of_uses_the_configured_zone(moment, zone, day):
    """The purchase day is the calendar day in the configured time zone, not in UTC."""
    assert purchase_day_of(moment, ZoneInfo(zone)) == day
