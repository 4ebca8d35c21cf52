"""Accounts and the double-entry ledger: the only place balances change.

Every movement is one append-only row {kind, debit account, credit account, amount > 0, purchase}; the
amount leaves the debit account and arrives in the credit account, and both balance columns change in the
same transaction. The database refuses a negative balance (CHECK) except on the two issuing accounts, and
refuses a second row of the same kind for one purchase (UNIQUE), so no step of a purchase can happen twice.

Two currencies: tokens (token_issuer, wallet, earnings, escrow, platform_revenue, payouts) and loyalty points
(points_issuer, loyalty). Tokens are issued by one platform account, touched only by top-ups and admin
adjustments; points are issued per model, so no single row is updated by every purchase. For the same reason the
platform's commission (platform_revenue) and the payouts made to a model (payouts) are held in one account per
model: the platform's revenue is the sum of every model's platform_revenue account (models/revenue.py).
"""
from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    ForeignKey,
    Index,
    Integer,
    String,
    UniqueConstraint,
    func,
    select,
    text,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Mapped, mapped_column

from .db import Base
from .types import UTCDateTime, str_enum, utcnow

ISSUERS = ("token_issuer", "points_issuer")
ACCOUNT_KINDS = ("token_issuer", "wallet", "earnings", "escrow", "points_issuer", "loyalty", "platform_revenue",
                 "payouts")
TOKEN_KINDS = ("token_issuer", "wallet", "earnings", "escrow", "platform_revenue", "payouts")
ACCOUNTS_BY_ROLE = {"fan": ("wallet", "loyalty"),
                    "model": ("earnings", "escrow", "points_issuer", "platform_revenue", "payouts"), "admin": ()}
ENTRY_KINDS = (
    "top_up",
    "purchase",
    "escrow_hold",
    "escrow_release",
    "escrow_refund",
    "loyalty_award",
    "adjustment",
    "platform_fee",
    "payout",
)
_BigId = BigInteger().with_variant(Integer, "sqlite")  # SQLite autoincrements only INTEGER PRIMARY KEY


class InsufficientFunds(Exception):
    pass


class Account(Base):
    __tablename__ = "accounts"
    __table_args__ = (
        CheckConstraint(
            "balance >= 0 OR kind IN ('token_issuer', 'points_issuer')", name="balance_non_negative"
        ),
        UniqueConstraint("owner_id", "kind"),
        # Exactly one platform token issuer (owner_id is NULL only there).
        Index(
            "uq_accounts_platform_kind",
            "kind",
            unique=True,
            postgresql_where=text("owner_id IS NULL"),
            sqlite_where=text("owner_id IS NULL"),
        ),
    )

    id: Mapped[int] = mapped_column(_BigId, primary_key=True, autoincrement=True)
    owner_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("users.id"))
    kind: Mapped[str] = mapped_column(str_enum(*ACCOUNT_KINDS, name="account_kind"))
    balance: Mapped[int] = mapped_column(BigInteger, default=0)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class LedgerEntry(Base):
    __tablename__ = "ledger_entries"
    __table_args__ = (
        CheckConstraint("amount > 0", name="amount_positive"),
        CheckConstraint("debit_account_id <> credit_account_id", name="distinct_accounts"),
        UniqueConstraint("purchase_id", "kind"),
    )

    id: Mapped[int] = mapped_column(_BigId, primary_key=True, autoincrement=True)
    kind: Mapped[str] = mapped_column(str_enum(*ENTRY_KINDS, name="entry_kind"))
    debit_account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"), index=True)
    credit_account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"), index=True)
    amount: Mapped[int] = mapped_column(BigInteger)
    purchase_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("purchases.id"))
    # Idempotency key of a movement without a purchase (top-up, adjustment).
    external_ref: Mapped[str | None] = mapped_column(String(120), unique=True)
    actor_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("users.id"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


def create_accounts(session, user) -> None:
    for kind in ACCOUNTS_BY_ROLE[user.role]:
        session.add(Account(owner_id=user.id, kind=kind, balance=0))


def token_issuer(session, lock: bool = False) -> Account:
    """The platform's token issuer, created on first use (race-safe through the unique index)."""
    query = select(Account).where(Account.owner_id.is_(None), Account.kind == "token_issuer")
    if lock:
        query = query.with_for_update()
    account = session.scalar(query)
    if account is None:
        try:
            with session.begin_nested():
                session.add(Account(owner_id=None, kind="token_issuer", balance=0))
        except IntegrityError:
            pass
        account = session.scalar(query)
    return account


def lock_accounts(session, owner_ids) -> dict[tuple[uuid.UUID, str], Account]:
    """Lock every account of these owners, always in account-id order so concurrent lockers never deadlock."""
    rows = session.scalars(
        select(Account)
        .where(Account.owner_id.in_(set(owner_ids)))
        .order_by(Account.id)
        .with_for_update()
    ).all()
    return {(a.owner_id, a.kind): a for a in rows}


def post(
    session,
    kind: str,
    debit: Account,
    credit: Account,
    amount: int,
    *,
    purchase_id: uuid.UUID | None = None,
    external_ref: str | None = None,
    actor_id: uuid.UUID | None = None,
) -> LedgerEntry:
    """Move `amount` from `debit` to `credit`. Both accounts must be locked by the caller."""
    if not isinstance(amount, int) or isinstance(amount, bool) or amount <= 0:
        raise ValueError("ledger amounts are positive integers")
    if (debit.kind in TOKEN_KINDS) != (credit.kind in TOKEN_KINDS):
        raise ValueError("a ledger row cannot mix tokens and points")
    if debit.kind not in ISSUERS and debit.balance < amount:
        raise InsufficientFunds(f"account {debit.id} holds less than {amount}")
    debit.balance -= amount
    credit.balance += amount
    entry = LedgerEntry(
        kind=kind,
        debit_account_id=debit.id,
        credit_account_id=credit.id,
        amount=amount,
        purchase_id=purchase_id,
        external_ref=external_ref,
        actor_id=actor_id,
    )
    session.add(entry)
    return entry


def top_up(session, fan_id: uuid.UUID, amount: int, *, external_ref: str | None = None, actor_id=None):
    """Issue tokens to a fan's wallet. With `external_ref`, a repeat is a no-op returning the first entry."""
    if external_ref is not None:
        existing = session.scalar(select(LedgerEntry).where(LedgerEntry.external_ref == external_ref))
        if existing is not None:
            return existing
    issuer = token_issuer(session)
    accounts = lock_accounts(session, [fan_id])
    wallet = accounts.get((fan_id, "wallet"))
    if wallet is None:
        raise ValueError("only fans have wallets")
    session.refresh(issuer, with_for_update=True)
    return post(session, "top_up", issuer, wallet, amount, external_ref=external_ref, actor_id=actor_id)


def books_differences(session) -> list[dict]:
    """Every account whose balance differs from the sum of its ledger rows, and any currency whose
    balances do not add up to zero (what holders have equals what issuers issued)."""
    credits = (
        select(LedgerEntry.credit_account_id.label("aid"), func.sum(LedgerEntry.amount).label("s"))
        .group_by(LedgerEntry.credit_account_id)
        .subquery()
    )
    debits = (
        select(LedgerEntry.debit_account_id.label("aid"), func.sum(LedgerEntry.amount).label("s"))
        .group_by(LedgerEntry.debit_account_id)
        .subquery()
    )
    rows = session.execute(
        select(
            Account.id,
            Account.kind,
            Account.balance,
            func.coalesce(credits.c.s, 0) - func.coalesce(debits.c.s, 0),
        )
        .outerjoin(credits, credits.c.aid == Account.id)
        .outerjoin(debits, debits.c.aid == Account.id)
    ).all()
    diffs = [
        {"account_id": aid, "kind": kind, "balance": int(bal), "ledger_sum": int(total)}
        for aid, kind, bal, total in rows
        if int(bal) != int(total)
    ]
    for currency, kinds in (("tokens", TOKEN_KINDS), ("points", ("points_issuer", "loyalty"))):
        total = sum(int(bal) for _aid, kind, bal, _t in rows if kind in kinds)
        if total != 0:
            diffs.append({"currency": currency, "sum_of_balances": total})
    return diffs
