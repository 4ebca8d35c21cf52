"""The platform's commission, the daily earnings rollup behind statements, and payouts (docs/architecture.md,
"Revenue").

A sale is split when it completes (Queue OFF at settlement, Queue ON at release), in the same transaction, at the
rate snapshot on the purchase when settlement accepted it: the model's earnings get `price - fee`, the model's
platform_revenue account gets `fee = floor(price * bps / 10000)`. The rate is below 100 %, so the model's part is
at least one token and the two always add up to the price. A refund takes no fee. `earnings_days` adds up, per
model, local day and item, what statements report, in the transaction that moves the money, so a statement over a
year reads a few thousand rows however many purchases there were.
"""
from __future__ import annotations

import uuid
from datetime import date, datetime, time, timedelta, timezone

from sqlalchemy import BigInteger, CheckConstraint, Date, ForeignKey, Integer, func, select
from sqlalchemy.orm import Mapped, mapped_column

from .db import Base
from .ledger import Account, LedgerEntry, lock_accounts, post
from .menus import Menu, MenuItem
from .purchases import Purchase
from .settings import MAX_FEE_BPS
from .types import UTCDateTime, utcnow


class CommissionRate(Base):
    """A model's own commission rate, set by an admin; without one the settings' PLATFORM_FEE_BPS applies."""

    __tablename__ = "commission_rates"
    __table_args__ = (CheckConstraint(f"bps BETWEEN 0 AND {MAX_FEE_BPS}", name="bps_range"),)

    model_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id"), primary_key=True)
    bps: Mapped[int] = mapped_column(Integer)
    set_by: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("users.id"))
    set_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class EarningsDay(Base):
    """What one item of a model sold and refunded on one local day (PERFMENU_TIME_ZONE)."""

    __tablename__ = "earnings_days"

    model_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id"), primary_key=True)
    day: Mapped[date] = mapped_column(Date, primary_key=True)
    item_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("menu_items.id"), primary_key=True)
    menu_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("menus.id"))
    sales: Mapped[int] = mapped_column(Integer, default=0)
    gross: Mapped[int] = mapped_column(BigInteger, default=0)
    fee: Mapped[int] = mapped_column(BigInteger, default=0)
    refunds: Mapped[int] = mapped_column(Integer, default=0)
    refunded: Mapped[int] = mapped_column(BigInteger, default=0)


def platform_fee(price: int, bps: int) -> int:
    return price * bps // 10000


def own_rate(model_id_column):
    """A column: the model's own commission rate in bps, NULL if none (for a query's select list)."""
    return select(CommissionRate.bps).where(CommissionRate.model_id == model_id_column).scalar_subquery()


def sale_rate(own_bps: int | None, default_bps: int) -> int:
    """The rate a model's sales are made at: their own, else the platform's (PLATFORM_FEE_BPS)."""
    return default_bps if own_bps is None else own_bps


def _day_row(session, purchase, day: date) -> EarningsDay:
    with session.no_autoflush:  # the rows the batch added so far cannot change it: they go out in one flush later
        row = session.get(EarningsDay, (purchase.model_id, day, purchase.item_id))
    if row is None:
        row = EarningsDay(model_id=purchase.model_id, day=day, item_id=purchase.item_id, menu_id=purchase.menu_id,
                          sales=0, gross=0, fee=0, refunds=0, refunded=0)
        session.add(row)
        session.flush()  # into the identity map: the next sale of the batch finds it (once per item and day)
    return row


def pay_model(session, kind: str, source, purchase, accounts, now: datetime, tz) -> None:
    """Complete a sale: `price - fee` from `source` (the fan's wallet, or the model's escrow) to the model's
    earnings as a `kind` row, the fee to the model's platform_revenue as a `platform_fee` row, and the day's
    rollup. The caller holds the accounts' locks (they also serialize the rollup row of the model)."""
    fee = platform_fee(purchase.token_value, purchase.fee_bps or 0)
    post(session, kind, source, accounts[(purchase.model_id, "earnings")], purchase.token_value - fee,
         purchase_id=purchase.id)
    if fee:
        post(session, "platform_fee", source, accounts[(purchase.model_id, "platform_revenue")], fee,
             purchase_id=purchase.id)
    purchase.platform_fee = fee
    row = _day_row(session, purchase, now.astimezone(tz).date())
    row.sales += 1
    row.gross += purchase.token_value
    row.fee += fee


def record_refund(session, purchase, now: datetime, tz) -> None:
    row = _day_row(session, purchase, now.astimezone(tz).date())
    row.refunds += 1
    row.refunded += purchase.token_value


# --- statements ---------------------------------------------------------------------------------------------

FIGURES = ("sales", "gross", "fee", "net", "refunds", "refunded")


def _figures(sales, gross, fee, refunds, refunded) -> dict:
    sales, gross, fee, refunds, refunded = (int(v or 0) for v in (sales, gross, fee, refunds, refunded))
    return {"sales": sales, "gross": gross, "fee": fee, "net": gross - fee, "refunds": refunds, "refunded": refunded}


def _sums():
    return (func.sum(EarningsDay.sales), func.sum(EarningsDay.gross), func.sum(EarningsDay.fee),
            func.sum(EarningsDay.refunds), func.sum(EarningsDay.refunded))


def period_bounds(start: date, end: date, tz) -> tuple[datetime, datetime]:
    """The UTC instants that bound the local days start..end (inclusive)."""
    first = datetime.combine(start, time.min, tz)
    after = datetime.combine(end + timedelta(days=1), time.min, tz)
    return first.astimezone(timezone.utc), after.astimezone(timezone.utc)


def statement(session, model_id, start: date, end: date, tz, limit: int, offset: int) -> dict:
    """A model's earnings over the local days start..end: totals, per day, per menu, per item (from the rollup),
    payouts, and one page of the sales behind them."""
    in_period = (EarningsDay.model_id == model_id, EarningsDay.day >= start, EarningsDay.day <= end)
    totals = session.execute(select(*_sums()).where(*in_period)).one()
    by_day = session.execute(select(EarningsDay.day, *_sums()).where(*in_period)
                             .group_by(EarningsDay.day).order_by(EarningsDay.day)).all()
    by_menu = session.execute(select(EarningsDay.menu_id, Menu.name, *_sums()).join(Menu, Menu.id == EarningsDay.menu_id)
                              .where(*in_period).group_by(EarningsDay.menu_id, Menu.name)
                              .order_by(func.sum(EarningsDay.gross).desc(), EarningsDay.menu_id)).all()
    by_item = session.execute(select(EarningsDay.item_id, MenuItem.name, EarningsDay.menu_id, *_sums())
                              .join(MenuItem, MenuItem.id == EarningsDay.item_id).where(*in_period)
                              .group_by(EarningsDay.item_id, MenuItem.name, EarningsDay.menu_id)
                              .order_by(func.sum(EarningsDay.gross).desc(), EarningsDay.item_id)).all()
    first, after = period_bounds(start, end, tz)
    sold = (Purchase.model_id == model_id, Purchase.status == "completed", Purchase.completed_at >= first,
            Purchase.completed_at < after)
    sales = session.scalars(select(Purchase).where(*sold).order_by(Purchase.completed_at, Purchase.id)
                            .limit(limit).offset(offset)).all()
    return {
        "model_id": model_id, "from": start, "to": end, "time_zone": str(tz),
        "totals": _figures(*totals),
        "by_day": [{"day": d, **_figures(*f)} for d, *f in by_day],
        "by_menu": [{"menu_id": m, "name": n, **_figures(*f)} for m, n, *f in by_menu],
        "by_item": [{"item_id": i, "name": n, "menu_id": m, **_figures(*f)} for i, n, m, *f in by_item],
        "payouts": payouts_of(session, model_id, first, after),
        "sales": [{"purchase_id": p.id, "completed_at": p.completed_at, "fan_id": p.fan_id, "menu_id": p.menu_id,
                   "item_id": p.item_id, "item_name": p.item_name, "gross": p.token_value,
                   "fee": p.platform_fee or 0, "net": p.token_value - (p.platform_fee or 0)} for p in sales],
        "sales_total": int(totals[0] or 0),  # the rollup's count of the same sales: no count over the rows
        "limit": limit, "offset": offset,
    }


def _earnings_account(model_id):
    return select(Account.id).where(Account.owner_id == model_id, Account.kind == "earnings").scalar_subquery()


def unpaid_earnings(session, model_id) -> int:
    """What is payable to a model now: its earnings account's balance."""
    return int(session.scalar(select(Account.balance).where(Account.id == _earnings_account(model_id))) or 0)


def payouts_of(session, model_id, first: datetime, after: datetime) -> dict:
    """Paid out in the period, paid out ever, and what is still payable."""
    paid = select(func.coalesce(func.sum(LedgerEntry.amount), 0)).where(
        LedgerEntry.kind == "payout", LedgerEntry.debit_account_id == _earnings_account(model_id))
    return {
        "paid_in_period": int(session.scalar(paid.where(LedgerEntry.created_at >= first,
                                                        LedgerEntry.created_at < after))),
        "paid_total": int(session.scalar(paid)),
        "unpaid": unpaid_earnings(session, model_id),
    }


def platform_summary(session, start: date, end: date, top: int = 10) -> dict:
    """The platform's revenue over the local days start..end: totals, per day, the top models and items by fee."""
    in_period = (EarningsDay.day >= start, EarningsDay.day <= end)
    by_fee = func.sum(EarningsDay.fee).desc()
    return {
        "from": start, "to": end,
        "totals": _figures(*session.execute(select(*_sums()).where(*in_period)).one()),
        "by_day": [{"day": d, **_figures(*f)} for d, *f in session.execute(
            select(EarningsDay.day, *_sums()).where(*in_period).group_by(EarningsDay.day).order_by(EarningsDay.day))],
        "top_models": [{"model_id": m, **_figures(*f)} for m, *f in session.execute(
            select(EarningsDay.model_id, *_sums()).where(*in_period).group_by(EarningsDay.model_id)
            .order_by(by_fee, EarningsDay.model_id).limit(top))],
        "top_items": [{"item_id": i, "name": n, "model_id": m, **_figures(*f)} for i, n, m, *f in session.execute(
            select(EarningsDay.item_id, MenuItem.name, EarningsDay.model_id, *_sums())
            .join(MenuItem, MenuItem.id == EarningsDay.item_id).where(*in_period)
            .group_by(EarningsDay.item_id, MenuItem.name, EarningsDay.model_id)
            .order_by(by_fee, EarningsDay.item_id).limit(top))],
    }


def payables(session) -> list[dict]:
    """Every model with earnings not paid out yet, largest first."""
    rows = session.execute(select(Account.owner_id, Account.balance).where(Account.kind == "earnings",
                                                                          Account.balance > 0)
                           .order_by(Account.balance.desc(), Account.owner_id)).all()
    return [{"model_id": m, "payable": int(b)} for m, b in rows]


# --- payouts ------------------------------------------------------------------------------------------------

class PayoutTooLarge(Exception):
    pass


def record_payout(session, model_id, amount: int, key: str, actor_id) -> tuple[LedgerEntry, bool]:
    """Pay out `amount` of a model's earnings (to the model's payouts account); (entry, replayed). The same key
    again is the first payout, if it was for the same model and amount (else ValueError)."""
    existing = session.scalar(select(LedgerEntry).where(LedgerEntry.external_ref == key))
    accounts = lock_accounts(session, [model_id])
    earnings, paid_to = accounts[(model_id, "earnings")], accounts[(model_id, "payouts")]
    if existing is not None:
        if existing.kind != "payout" or existing.debit_account_id != earnings.id or existing.amount != amount:
            raise ValueError("idempotency key used for another movement")
        return existing, True
    if amount > earnings.balance:
        raise PayoutTooLarge()
    return post(session, "payout", earnings, paid_to, amount, external_ref=key, actor_id=actor_id), False
