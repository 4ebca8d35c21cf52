"""The platform's commission, earnings statements and payouts (rules in models/revenue.py).

A statement is JSON, or CSV with a header row (`?format=csv` or `Accept: text/csv`): one row per figure line,
`section` telling which (total, day, menu, item, sale), so the CSV holds exactly what the JSON holds (payouts
aside: they are not sales)."""
from __future__ import annotations

import csv
import io
from datetime import date

from flask import Response, request
from marshmallow import Schema, ValidationError, fields, validate, validates_schema
from sqlalchemy.exc import IntegrityError

from models.audit import audit
from models.menu_schemas import Int
from models.revenue import (
    FIGURES,
    CommissionRate,
    PayoutTooLarge,
    payables,
    platform_summary,
    record_payout,
    statement,
    unpaid_earnings,
)
from models.settings import MAX_FEE_BPS
from models.types import utcnow
from models.users import User

from .admin import required_idempotency_key, user_by_ref
from .auth import current_user_id, role_required
from .deps import db, settings
from .docs import error
from .errors import ApiError
from .json_body import Blueprint

blp = Blueprint("earnings", __name__, description="Commission, earnings statements and payouts")

MAX_PERIOD_DAYS = 3 * 366
MODEL_ID = "7e6d5c4b-3a29-4181-9f0e-1d2c3b4a5f6e"
FIGURES_EXAMPLE = {"sales": 12, "gross": 600, "fee": 120, "net": 480, "refunds": 1, "refunded": 50}


class PeriodQuery(Schema):
    from_ = fields.Date(data_key="from", metadata={"description": "first local day (default: the 1st of this month)"})
    to = fields.Date(metadata={"description": "last local day, inclusive (default: today)"})
    format = fields.String(validate=validate.OneOf(("json", "csv")))
    limit = fields.Integer(load_default=100, validate=validate.Range(min=1, max=1000))
    offset = fields.Integer(load_default=0, validate=validate.Range(min=0, max=10_000_000))

    @validates_schema
    def _order(self, data, **_kwargs):
        if "from_" in data and "to" in data:
            if data["from_"] > data["to"]:
                raise ValidationError("Must not be after `to`.", "from")
            if (data["to"] - data["from_"]).days >= MAX_PERIOD_DAYS:
                raise ValidationError(f"A period is at most {MAX_PERIOD_DAYS} days.", "from")


class Figures(Schema):
    sales = fields.Integer()
    gross = fields.Integer()
    fee = fields.Integer()
    net = fields.Integer()
    refunds = fields.Integer()
    refunded = fields.Integer()


class DayFigures(Figures):
    day = fields.Date()


class MenuFigures(Figures):
    menu_id = fields.UUID()
    name = fields.String()


class ItemFigures(MenuFigures):
    item_id = fields.UUID()


class ModelFigures(Figures):
    model_id = fields.UUID()


class TopItemFigures(ModelFigures):
    item_id = fields.UUID()
    name = fields.String()


class Sale(Schema):
    purchase_id = fields.UUID()
    completed_at = fields.DateTime()
    fan_id = fields.UUID()
    menu_id = fields.UUID()
    item_id = fields.UUID()
    item_name = fields.String()
    gross = fields.Integer()
    fee = fields.Integer()
    net = fields.Integer()


class Payouts(Schema):
    paid_in_period = fields.Integer()
    paid_total = fields.Integer()
    unpaid = fields.Integer(metadata={"description": "earnings not paid out yet (payable now)"})


class StatementOut(Schema):
    model_id = fields.UUID()
    from_ = fields.Date(data_key="from")
    to = fields.Date()
    time_zone = fields.String()
    totals = fields.Nested(Figures)
    by_day = fields.List(fields.Nested(DayFigures))
    by_menu = fields.List(fields.Nested(MenuFigures))
    by_item = fields.List(fields.Nested(ItemFigures))
    payouts = fields.Nested(Payouts)
    sales = fields.List(fields.Nested(Sale))
    sales_total = fields.Integer()
    limit = fields.Integer()
    offset = fields.Integer()


class SummaryOut(Schema):
    from_ = fields.Date(data_key="from")
    to = fields.Date()
    totals = fields.Nested(Figures)
    by_day = fields.List(fields.Nested(DayFigures))
    top_models = fields.List(fields.Nested(ModelFigures))
    top_items = fields.List(fields.Nested(TopItemFigures))


class CommissionIn(Schema):
    bps = Int(required=True, validate=validate.Range(min=0, max=MAX_FEE_BPS),
              metadata={"description": "basis points of each sale (100 = 1 %)"})


class CommissionOut(Schema):
    model_id = fields.UUID()
    bps = fields.Integer()
    own_rate = fields.Boolean(metadata={"description": "false: the platform's default applies"})
    set_at = fields.DateTime(allow_none=True)


class PayoutIn(Schema):
    amount = Int(required=True, validate=validate.Range(min=1, max=10**12))
    idempotency_key = fields.String(validate=validate.Length(min=1, max=120))


class PayoutOut(Schema):
    entry_id = fields.Integer()
    model_id = fields.UUID()
    amount = fields.Integer()
    unpaid = fields.Integer()
    replayed = fields.Boolean()


class PayableOut(Schema):
    model_id = fields.UUID()
    payable = fields.Integer()


class PayablesOut(Schema):
    payables = fields.List(fields.Nested(PayableOut))


STATEMENT_EXAMPLE = {
    "model_id": MODEL_ID, "from": "2026-11-01", "to": "2026-11-30", "time_zone": "UTC", "totals": FIGURES_EXAMPLE,
    "by_day": [{"day": "2026-11-02", **FIGURES_EXAMPLE}],
    "by_menu": [{"menu_id": "5d2f8a47-1c3b-4e6a-8f90-7b1c2d3e4f5a", "name": "Tip menu", **FIGURES_EXAMPLE}],
    "by_item": [{"item_id": "9a8b7c6d-5e4f-4a3b-2c1d-0e9f8a7b6c5d", "name": "Dance",
                 "menu_id": "5d2f8a47-1c3b-4e6a-8f90-7b1c2d3e4f5a", **FIGURES_EXAMPLE}],
    "payouts": {"paid_in_period": 0, "paid_total": 0, "unpaid": 480},
    "sales": [], "sales_total": 12, "limit": 100, "offset": 0,
}


PAYOUT_EXAMPLE = {"entry_id": 77, "model_id": MODEL_ID, "amount": 480, "unpaid": 0, "replayed": False}


def _period(query) -> tuple[date, date]:
    today = utcnow().astimezone(settings().tz).date()
    end = query.get("to") or today
    start = query.get("from_") or min(today.replace(day=1), end)
    if start > end or (end - start).days >= MAX_PERIOD_DAYS:
        raise ApiError(422, "invalid_request", f"`from` must be before `to`, at most {MAX_PERIOD_DAYS} days apart",
                       fields={"from": ["Out of range."]})
    return start, end


def _wants_csv(query) -> bool:
    if "format" in query:
        return query["format"] == "csv"
    return request.accept_mimetypes.best_match(["application/json", "text/csv"]) == "text/csv"


FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


class SpreadsheetSafeWriter:
    """csv.writer whose text cells cannot become formulas in a spreadsheet (OWASP's CSV injection advice): a
    text starting with = + - @ tab or CR gets a leading apostrophe. Menu and item names are the models' text."""

    def __init__(self, out):
        self._writer = csv.writer(out)

    @staticmethod
    def cell(value):
        return "'" + value if isinstance(value, str) and value.startswith(FORMULA_STARTS) else value

    def writerow(self, row):
        self._writer.writerow([self.cell(v) for v in row])

    def writerows(self, rows):
        for row in rows:
            self.writerow(row)


def statement_csv(body: dict) -> str:
    """The statement's figure lines as CSV (docstring above)."""
    out = io.StringIO()
    writer = SpreadsheetSafeWriter(out)
    writer.writerow(["section", "key", "name", "menu_id", *FIGURES])
    writer.writerow(["total", "", "", "", *(body["totals"][f] for f in FIGURES)])
    for row in body["by_day"]:
        writer.writerow(["day", row["day"].isoformat(), "", "", *(row[f] for f in FIGURES)])
    for row in body["by_menu"]:
        writer.writerow(["menu", row["menu_id"], row["name"], row["menu_id"], *(row[f] for f in FIGURES)])
    for row in body["by_item"]:
        writer.writerow(["item", row["item_id"], row["name"], row["menu_id"], *(row[f] for f in FIGURES)])
    for sale in body["sales"]:
        writer.writerow(["sale", sale["purchase_id"], sale["item_name"], sale["menu_id"], 1, sale["gross"],
                         sale["fee"], sale["net"], 0, 0])
    return out.getvalue()


def _statement_answer(model_id, query):
    start, end = _period(query)
    body = statement(db(), model_id, start, end, settings().tz, query["limit"], query["offset"])
    if _wants_csv(query):
        name = f"earnings-{model_id}-{start}-{end}.csv"
        return Response(statement_csv(body), content_type="text/csv; charset=utf-8",
                        headers={"Content-Disposition": f'attachment; filename="{name}"'})
    return body


def _model(ref: str) -> User:
    return user_by_ref(db(), ref, "model")


STATEMENT_DOC = dict(example=STATEMENT_EXAMPLE, description="The statement (JSON, or CSV with `format=csv` or "
                     "`Accept: text/csv`)")
# The 200 answer's other form, beside the JSON schema flask-smorest documents.
CSV_TOO = blp.doc(responses={200: {"content": {"text/csv": {"schema": {"type": "string"}}}}})


@blp.route("/earnings", methods=["GET"])
@role_required("model")
@blp.arguments(PeriodQuery, location="query")
@blp.response(200, StatementOut, **STATEMENT_DOC)
@CSV_TOO
def my_earnings(query):
    """The caller's earnings over a period of local days (PERFMENU_TIME_ZONE): totals (gross, the platform's
    fee, net, refunds), per day, per menu, per item, payouts (paid, unpaid), and a page of the sales behind it."""
    return _statement_answer(current_user_id(), query)


@blp.route("/admin/models/<model_ref>/earnings", methods=["GET"])
@role_required("admin")
@blp.arguments(PeriodQuery, location="query")
@blp.response(200, StatementOut, **STATEMENT_DOC)
@CSV_TOO
@error(404, description="not_found: no such model")
def model_earnings(query, model_ref):
    """A model's statement (as GET /earnings); `model_ref` is our id or the platform's."""
    return _statement_answer(_model(model_ref).id, query)


@blp.route("/admin/revenue", methods=["GET"])
@role_required("admin")
@blp.arguments(PeriodQuery, location="query")
@blp.response(200, SummaryOut, example={"from": "2026-11-01", "to": "2026-11-30", "totals": FIGURES_EXAMPLE,
                                        "by_day": [], "top_models": [], "top_items": []})
def revenue(query):
    """The platform's revenue over a period: totals, per day, and the top 10 models and items by fee."""
    start, end = _period(query)
    return platform_summary(db(), start, end)


@blp.route("/admin/models/<model_ref>/commission", methods=["GET"])
@role_required("admin")
@blp.response(200, CommissionOut, example={"model_id": MODEL_ID, "bps": 2000, "own_rate": True,
                                           "set_at": "2026-11-26T04:00:00+00:00"})
@error(404, description="not_found: no such model")
def get_commission(model_ref):
    """The rate the model's sales are made at now."""
    model = _model(model_ref)
    own = db().get(CommissionRate, model.id)
    if own is None:
        return {"model_id": model.id, "bps": settings().platform_fee_bps, "own_rate": False, "set_at": None}
    return {"model_id": model.id, "bps": own.bps, "own_rate": True, "set_at": own.set_at}


@blp.route("/admin/models/<model_ref>/commission", methods=["PUT"])
@role_required("admin")
@blp.arguments(CommissionIn, example={"bps": 2000})
@blp.response(200, CommissionOut, example={"model_id": MODEL_ID, "bps": 2000, "own_rate": True,
                                           "set_at": "2026-11-26T04:00:00+00:00"})
@error(404, description="not_found: no such model")
def set_commission(body, model_ref):
    """Set the model's own rate, for sales settled from now on (each purchase keeps the rate it was sold at).
    Audited."""
    session = db()
    model = _model(model_ref)
    row = session.get(CommissionRate, model.id, with_for_update=True) or CommissionRate(model_id=model.id)
    before = row.bps
    row.bps, row.set_by, row.set_at = body["bps"], current_user_id(), utcnow()
    session.add(row)
    audit(session, "commission.set", model.id, current_user_id(), bps=body["bps"], before=before)
    session.commit()
    return {"model_id": model.id, "bps": row.bps, "own_rate": True, "set_at": row.set_at}


@blp.route("/admin/models/<model_ref>/payouts", methods=["POST"])
@role_required("admin")
@blp.arguments(PayoutIn, example={"amount": 480, "idempotency_key": "payout-2026-11-model1"})
@blp.response(201, PayoutOut, example=PAYOUT_EXAMPLE)
@blp.alt_response(200, schema=PayoutOut, description="The same key again: the first payout, nothing moved",
                  example={**PAYOUT_EXAMPLE, "replayed": True})
@error(404, description="not_found: no such model")
@error(422, description="insufficient_earnings, idempotency_key_required, idempotency_mismatch")
def payout(body, model_ref):
    """Record a payout of a model's earnings (paid outside perfmenu): the amount leaves the model's earnings
    for its payouts account, in the ledger. An idempotency key is required (`Idempotency-Key` header or
    `idempotency_key`); the amount may not exceed the unpaid earnings. Audited."""
    session = db()
    key = required_idempotency_key(body)
    model = _model(model_ref)
    try:
        entry, replayed = record_payout(session, model.id, body["amount"], key, current_user_id())
        if not replayed:
            audit(session, "payout.recorded", model.id, current_user_id(), amount=body["amount"])
        session.commit()
    except PayoutTooLarge:
        session.rollback()
        raise ApiError(422, "insufficient_earnings", "The amount is more than the model's unpaid earnings") from None
    except ValueError:
        session.rollback()
        raise ApiError(422, "idempotency_mismatch", "This idempotency key was used for a different movement") from None
    except IntegrityError:  # the same key at the same moment: the other request's payout stands
        session.rollback()
        raise ApiError(409, "conflict", "The payout could not be recorded; try again") from None
    answer = {"entry_id": entry.id, "model_id": model.id, "amount": entry.amount,
              "unpaid": unpaid_earnings(session, model.id),
              "replayed": replayed}
    return (answer, 200) if replayed else answer


@blp.route("/admin/payables", methods=["GET"])
@role_required("admin")
@blp.arguments(PeriodQuery(only=("format",)), location="query")
@blp.response(200, PayablesOut, example={"payables": [{"model_id": MODEL_ID, "payable": 480}]})
@CSV_TOO
def list_payables(query):
    """Every model with unpaid earnings, largest first (CSV with `format=csv` or `Accept: text/csv`)."""
    rows = payables(db())
    if _wants_csv(query):
        out = io.StringIO()
        writer = SpreadsheetSafeWriter(out)
        writer.writerow(["model_id", "payable"])
        writer.writerows([r["model_id"], r["payable"]] for r in rows)
        return Response(out.getvalue(), content_type="text/csv; charset=utf-8")
    return {"payables": rows}
