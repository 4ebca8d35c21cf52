"""The ledger's posting rules (models/ledger.py `post`), on an in-memory SQLite session."""
import uuid

import pytest
from sqlalchemy import create_engine, select
from sqlalchemy.orm import Session

import models  # noqa: F401  (registers every table, so the foreign keys resolve)
from models.db import Base
from models.ledger import Account, InsufficientFunds, LedgerEntry, post


@pytest.fixture
def session():
    engine = create_engine("sqlite://")
    Base.metadata.create_all(engine)
    with Session(engine) as s:
        yield s
    engine.dispose()


@pytest.fixture
def accounts(session):
    """A fan's wallet (100 tokens), loyalty (0 points), a model's earnings (0), the two issuers."""
    fan, model = uuid.uuid4(), uuid.uuid4()
    rows = {
        "wallet": Account(owner_id=fan, kind="wallet", balance=100),
        "loyalty": Account(owner_id=fan, kind="loyalty", balance=0),
        "earnings": Account(owner_id=model, kind="earnings", balance=0),
        "token_issuer": Account(owner_id=None, kind="token_issuer", balance=0),
        "points_issuer": Account(owner_id=model, kind="points_issuer", balance=0),
    }
    session.add_all(rows.values())
    session.flush()
    return rows


def balances(accounts):
    return {k: a.balance for k, a in accounts.items()}


def entries(session):
    return session.scalars(select(LedgerEntry)).all()


def test_post_moves_the_amount_and_records_one_row(session, accounts):
    """The amount leaves the debit account, arrives in the credit account, and one row says so."""
    entry = post(session, "purchase", accounts["wallet"], accounts["earnings"], 30)
    session.commit()
    assert (accounts["wallet"].balance, accounts["earnings"].balance) == (70, 30)
    [row] = entries(session)
    assert row is entry
    assert (row.kind, row.debit_account_id, row.credit_account_id, row.amount) == (
        "purchase", accounts["wallet"].id, accounts["earnings"].id, 30)


def test_the_whole_balance_may_be_spent(session, accounts):
    """A balance equal to the amount is enough, and ends at zero."""
    post(session, "purchase", accounts["wallet"], accounts["earnings"], 100)
    assert accounts["wallet"].balance == 0


@pytest.mark.parametrize("amount", [0, -5, 1.0, 2.5, "10", None, True, False])
def test_amount_must_be_a_positive_int(session, accounts, amount):
    """Zero, negatives, floats, strings and bools are refused, and nothing changes."""
    before = balances(accounts)
    with pytest.raises(ValueError):
        post(session, "purchase", accounts["wallet"], accounts["earnings"], amount)
    session.flush()
    assert balances(accounts) == before and entries(session) == []


@pytest.mark.parametrize("debit,credit", [("wallet", "loyalty"), ("points_issuer", "earnings"),
                                          ("token_issuer", "loyalty"), ("loyalty", "wallet")])
def test_tokens_and_points_never_mix(session, accounts, debit, credit):
    """A row between a token account and a points account is refused, whatever the balances."""
    accounts["loyalty"].balance = 50
    before = balances(accounts)
    with pytest.raises(ValueError, match="mix"):
        post(session, "adjustment", accounts[debit], accounts[credit], 1)
    session.flush()
    assert balances(accounts) == before and entries(session) == []


def test_insufficient_funds(session, accounts):
    """A holder account cannot go below zero: InsufficientFunds, and nothing changes."""
    with pytest.raises(InsufficientFunds):
        post(session, "purchase", accounts["wallet"], accounts["earnings"], 101)
    with pytest.raises(InsufficientFunds):
        post(session, "escrow_release", accounts["earnings"], accounts["wallet"], 1)
    session.flush()
    assert accounts["wallet"].balance == 100 and accounts["earnings"].balance == 0
    assert entries(session) == []


def test_issuers_may_go_negative(session, accounts):
    """The two issuers issue from nothing: their balance goes negative, the holder's up."""
    post(session, "top_up", accounts["token_issuer"], accounts["wallet"], 40)
    post(session, "loyalty_award", accounts["points_issuer"], accounts["loyalty"], 5)
    session.commit()
    assert balances(accounts) == {"wallet": 140, "loyalty": 5, "earnings": 0, "token_issuer": -40,
                                  "points_issuer": -5}
    assert len(entries(session)) == 2
