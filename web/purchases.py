"""Purchase intake (thin: validate, check, insert `pending`, hand off), history and status.

No money moves here: the worker settles. The POST waits a short, configurable time for the verdict."""
from __future__ import annotations

import functools
import json
import uuid
from datetime import timedelta
from types import SimpleNamespace

from flask import Response, g, request
from sqlalchemy import bindparam, case, func, insert, literal, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import aliased

from models.auth_sessions import token_check_columns
from models.db import HotStatement, one_of, reading
from models.infra import metrics
from models.ledger import Account
from models.menus import Menu, MenuItem
from models.purchases import Purchase, daily_count_query, delivery_hours_for, purchase_day_of, refusal
from models.lovense import activation_enabled
from models.services import performance_queue
from models.services.activations import slot_of
from models.services.settlement import open_queue_size_query
from models.services.verdicts import wait_for_verdict
from models.shows import OPEN_SHOW, Show, live_required
from models.types import utcnow
from models.users import User, parse_uuid
from worker.handoff import request_settlement

from .auth import current_role, current_user_id, refuse_unusable_token, role_required
from .deps import db, redis, runtime, settings
from .docs import error, rate_limited
from .errors import ApiError
from .json_body import Blueprint
from .limits import purchase_limits, recent_purchases_column, refuse_over_purchase_limit
from .menus import load_visible_menu
from .schemas import HistoryOut, HistoryQuery, PurchaseOut, PurchaseRequest, dump_purchase

blp = Blueprint("purchases", __name__, url_prefix="/menu/purchase", description="Buying menu items")

# HTTP status of a refused purchase, by reason (the same codes whether intake or the worker refused it).
REFUSAL_STATUS = {
    "show_ended": 409,
    "model_not_live": 409,
    "queue_paused": 409,
    "insufficient_balance": 402,
    "daily_limit_reached": 422,
    "queue_full": 409,
    "item_unavailable": 409,
    "account_inactive": 403,
}
REFUSAL_MESSAGE = {
    "show_ended": "The show ended and its queue was refunded",
    "model_not_live": "The model is not live: this item is sold during a show",
    "queue_paused": "The model has paused their queue",
    "insufficient_balance": "Not enough tokens for this item",
    "daily_limit_reached": "You have reached today's limit for this item",
    "queue_full": "The model's queue is full",
    "item_unavailable": "This item is not available",
    "account_inactive": "The account is not active",
}


def purchase_view(p: Purchase) -> dict:
    """The purchase as the API shows it; an open queue entry with its place and wait from the Redis queue."""
    queued = p.transaction_type == "queued"  # (no session for the others: a purchase's answer is the hot path)
    position, wait = (queued and performance_queue.position_or_repair(db(), p, redis())) or (None, None)
    return {
        "success": p.status not in ("failed", "refunded"),
        "purchase_id": p.id,
        "transaction_type": p.transaction_type,
        "status": p.status,
        "token_value": p.token_value,
        "loyalty_points_awarded": p.loyalty_points if p.status == "completed" else 0,
        "queue_position": position,
        "estimated_wait_minutes": wait,
        "item_name": p.item_name,
        "menu_id": p.menu_id,
        "item_id": p.item_id,
        "model_id": p.model_id,
        "fan_id": None if hidden_buyer(p) else p.fan_id,
        "failure_reason": p.failure_reason,
        "refund_reason": p.refund_reason,
        "idempotency_key": p.idempotency_key,
        "metadata": p.client_metadata,
        "note": p.note,
        "anonymous": p.anonymous,
        "show_id": p.show_id,
        "created_at": p.created_at,
        "updated_at": p.updated_at,
        "settled_at": p.settled_at,
        "started_at": p.started_at,
        "completed_at": p.completed_at,
        "failed_at": p.failed_at,
        "refunded_at": p.refunded_at,
        "escrow_deadline": p.escrow_deadline,
        # Its toy buzz, with its place on the model's timeline (None: the item buzzes no toy, or not yet asked).
        "toy": slot_of(db(), p.id) if activation_enabled(p.lovense_activation) else None,
        "status_url": f"{request.script_root}/menu/purchase/{p.id}/status",  # purchase_status (url_for: ~20 us)
    }


def hidden_buyer(p: Purchase) -> bool:
    """An anonymous purchase's buyer is hidden from the model (the fan and admins see it)."""
    return p.anonymous and current_role() == "model"


def refuse(reason: str, **extra):
    raise ApiError(REFUSAL_STATUS[reason], reason, REFUSAL_MESSAGE[reason], **extra)


def refuse_at_intake(reason: str):
    metrics.PURCHASES.labels(outcome="refused", reason=reason).inc()
    refuse(reason)


PURCHASE_EXAMPLE = {
    "success": True, "_id": "0b6f3c8e-2a51-4d0e-9f7a-5c1d2e3f4a5b",
    "purchase_id": "0b6f3c8e-2a51-4d0e-9f7a-5c1d2e3f4a5b", "transaction_type": "immediate", "status": "completed",
    "token_value": 50, "loyalty_points_awarded": 30, "queue_position": None, "estimated_wait_minutes": None,
    "item_name": "Dance", "status_url": "/menu/purchase/0b6f3c8e-2a51-4d0e-9f7a-5c1d2e3f4a5b/status",
}


def _settled_response(session, purchase: Purchase):
    """Wait briefly for the worker's verdict, then answer with the purchase as it stands."""
    if purchase.status == "pending" and wait_for_verdict(redis(), purchase.id, settings().purchase_wait_seconds):
        session.refresh(purchase)
    return _answer(purchase)


# Purchase columns that intake leaves empty (a new purchase's answer has them as null).
_SET_AFTER_INTAKE = ("failure_reason", "refund_reason", "settled_at", "started_at", "completed_at", "failed_at",
                     "refunded_at", "escrow_deadline", "fee_bps", "platform_fee")


def _answer(purchase):
    """The answer to a purchase (a Purchase, or its columns as attributes): 202 while pending, the refusal's
    error if it failed, else 200. Serialized by hand (web/schemas.py, dump_purchase): this is the hot path."""
    body = dump_purchase(purchase_view(purchase))
    if purchase.status == "failed":
        refuse(purchase.failure_reason, **body)
    pending = purchase.status == "pending"
    return Response(json.dumps(body), 202 if pending else 200,
                    {"Location": body["status_url"]} if pending else None, mimetype="application/json")


# Intake's one read (docs/architecture.md, "The purchase"), built once (building it costs more than running it)
# and run on the autocommit engine as plain columns, no ORM objects: the id of the fan's purchase already made
# with this idempotency key (None if none or no key), the menu and the item (None if missing or not on that
# menu), the fan's wallet balance, how many of the item the fan bought today, the open entries of the model's
# queue, whether the fan's token may be used (web/auth.py, session_checked_by_view), the model's open show and
# whether their queue is paused, and (_intake_statement) the fan's purchases in each rate-limit period. The
# one-row FROM keeps the id and the balance when the menu is missing.
_model = aliased(User)


@functools.lru_cache
def _intake_statement(limits: int) -> HotStatement:
    """Intake's read for a RATE_LIMIT_PURCHASE of `limits` limits: the fan's purchases since `since_<i>`
    (web/limits.py) as columns recent_<i>."""
    return HotStatement(_INTAKE_QUERY.add_columns(*(
        recent_purchases_column(bindparam("fan_id"), bindparam(f"since_{i}")).label(f"recent_{i}")
        for i in range(limits))))


_INTAKE_QUERY = (
    select(
        select(Purchase.id)
        .where(Purchase.fan_id == bindparam("fan_id"), Purchase.idempotency_key == bindparam("key"))
        .scalar_subquery().label("existing_id"),
        Menu.id.label("menu_id"), Menu.model_id, Menu.is_active.label("menu_active"), Menu.visibility,
        Menu.queue_mode, Menu.queue_order, Menu.live_only, Menu.delivery_hours_default,
        MenuItem.id.label("item_id"), MenuItem.name, MenuItem.token_value, MenuItem.bonus_loyalty_points,
        MenuItem.estimated_duration_minutes, MenuItem.delivery_hours, MenuItem.lovense_activation,
        MenuItem.max_daily_purchases, MenuItem.is_active.label("item_active"),
        select(Account.balance)
        .where(Account.owner_id == bindparam("fan_id"), Account.kind == "wallet")
        .scalar_subquery().label("balance"),
        # Counted only where a rule needs them (a daily limit; a Queue ON menu): the queue count is the costliest.
        case((MenuItem.max_daily_purchases.is_not(None),
              daily_count_query(bindparam("fan_id"), MenuItem.id, bindparam("day")).scalar_subquery())
             ).label("bought_today"),
        case((Menu.queue_mode == "ON", open_queue_size_query(Menu.model_id).scalar_subquery())).label("queue_size"),
        *(column.label(name) for column, name in zip(token_check_columns(bindparam("fan_id"),
                                                                         bindparam("token_session")),
                                                     ("fan_active", "session_open"))),
        Show.id.label("show_id"),
        Show.status.label("show_status"),
        _model.queue_paused,
    )
    .select_from(select(literal(1).label("one")).subquery())
    .outerjoin(Menu, Menu.id == bindparam("menu_id"))
    .outerjoin(MenuItem, (MenuItem.id == bindparam("item_id")) & (MenuItem.menu_id == Menu.id))
    .outerjoin(Show, (Show.model_id == Menu.model_id) & one_of(Show.status, OPEN_SHOW))
    .outerjoin(_model, _model.id == Menu.model_id)
)
# The columns intake writes (by column name: `metadata` is Purchase.client_metadata).
_INSERTED = ("id", "fan_id", "model_id", "menu_id", "item_id", "item_name", "token_value", "loyalty_points",
             "estimated_duration_minutes", "delivery_hours", "lovense_activation", "transaction_type", "queue_priority",
             "status", "idempotency_key", "metadata", "note", "anonymous", "show_id", "purchase_day", "created_at",
             "updated_at")
_INSERT = HotStatement(insert(Purchase.__table__).values({name: bindparam(name) for name in _INSERTED}),
                       json_params=("metadata", "lovense_activation"))


def _replay(session, purchase: Purchase, menu_id, item_id):
    if not purchase.same_request(menu_id, item_id):
        raise ApiError(422, "idempotency_mismatch", "This idempotency key was used for a different purchase")
    return _settled_response(session, purchase)


@blp.route("", methods=["POST"])
@role_required("fan", session_checked_by_view=True)
@blp.arguments(PurchaseRequest, example={"menu_id": "5d2f8a47-1c3b-4e6a-8f90-7b1c2d3e4f5a",
                                         "menu_item_id": "9a8b7c6d-5e4f-4a3b-2c1d-0e9f8a7b6c5d",
                                         "idempotency_key": "tip-2024-06-01-001",
                                         "metadata": {"source": "tip-menu-widget"}})
@blp.response(200, PurchaseOut, example=PURCHASE_EXAMPLE)
@blp.alt_response(202, schema=PurchaseOut, description="Accepted; not settled yet: poll status_url",
                  example={**PURCHASE_EXAMPLE, "status": "pending", "loyalty_points_awarded": 0}, success=True)
@error(402, "insufficient_balance", REFUSAL_MESSAGE["insufficient_balance"], description="insufficient_balance")
@error(404, "not_found", "No such item on this menu", description="not_found: no such menu or item")
@error(409, "queue_full", REFUSAL_MESSAGE["queue_full"], description="queue_full, item_unavailable")
@error(422, "daily_limit_reached", REFUSAL_MESSAGE["daily_limit_reached"],
       description="daily_limit_reached, idempotency_mismatch, invalid_request")
@rate_limited
def create_purchase(body):
    """Buy a menu item. The price comes from the server; any client-sent price is ignored.

    Send an `Idempotency-Key` header (or `idempotency_key` in the body) to make retries safe.
    Rate limited per fan (RATE_LIMIT_PURCHASE: purchases made in the period; a retry is never limited)."""
    config = settings()
    fan_id = current_user_id()
    key = request.headers.get("Idempotency-Key") or body.get("idempotency_key")
    if key is not None and not 1 <= len(key) <= 128:
        raise ApiError(422, "invalid_request", "The idempotency key must be 1 to 128 characters")
    menu_id = parse_uuid(body["menu_id"])
    item_id = parse_uuid(body.get("menu_item_id") or body.get("item_id"))
    now = utcnow()
    day = purchase_day_of(now, config.tz)
    # Intake only reads (prechecks the worker repeats under lock) and inserts one row, in autocommit: no BEGIN,
    # no COMMIT round trip, and the UNIQUE (fan, key) still settles an idempotency race.
    limits = purchase_limits(config.purchase_rate_limit)
    params = {"fan_id": fan_id, "key": key, "menu_id": menu_id, "item_id": item_id, "token_session": g.token_session,
              "day": day, **{f"since_{i}": now - timedelta(seconds=period) for i, (period, _) in enumerate(limits)}}
    with reading(runtime().autocommit_engine, _intake_statement(len(limits)), params) as (conn, c):
        refuse_unusable_token(c.fan_active, c.session_open)
        if c.existing_id is not None:
            session = db()
            return _replay(session, session.get(Purchase, c.existing_id), menu_id, item_id)
        refuse_over_purchase_limit(db(), fan_id, config.purchase_rate_limit,
                                   [getattr(c, f"recent_{i}") for i in range(len(limits))], now)
        if c.menu_id is None or not c.menu_active or c.visibility != "public":
            load_visible_menu(db(), menu_id, buying=True)  # the menu rules' answer: 404, 403, or go on
        if c.item_id is None:
            raise ApiError(404, "not_found", "No such item on this menu")

        queued = c.queue_mode == "ON"
        reason = refusal(
            buyer_active=True,  # authenticate() refused an inactive account's token
            available=c.item_active and c.menu_active,
            live_required=live_required(queued, c.live_only, config.queue_off_needs_show),
            live=c.show_status == "live",
            queue_paused=bool(c.queue_paused),
            price=c.token_value,
            balance=c.balance,
            daily_max=c.max_daily_purchases,
            bought_today=lambda: c.bought_today,
            queued=queued,
            queue_size=lambda: c.queue_size,
            queue_capacity=config.queue_capacity,
        )
        if reason is not None:
            refuse_at_intake(reason)

        purchase = dict(
            id=uuid.uuid4(),
            fan_id=fan_id,
            model_id=c.model_id,
            menu_id=c.menu_id,
            item_id=c.item_id,
            item_name=c.name,
            token_value=c.token_value,
            loyalty_points=c.bonus_loyalty_points,
            estimated_duration_minutes=c.estimated_duration_minutes,
            delivery_hours=delivery_hours_for(c.delivery_hours, c.delivery_hours_default),
            lovense_activation=c.lovense_activation,
            transaction_type="queued" if queued else "immediate",
            queue_priority=c.token_value if queued and c.queue_order == "priority" else 0,
            status="pending",
            idempotency_key=key or None,
            client_metadata=body.get("metadata"),
            note=body.get("note") or None,
            anonymous=body["anonymous"],
            show_id=c.show_id,
            purchase_day=day,
            created_at=now,
            updated_at=now,
        )
        columns = {name: value for name, value in purchase.items() if name != "client_metadata"}
        try:
            _INSERT.run(conn, {**columns, "metadata": purchase["client_metadata"]})
        except IntegrityError:
            # Another request with the same key won the race: answer with its purchase.
            session = db()
            existing = session.scalar(select(Purchase).where(Purchase.fan_id == fan_id,
                                                             Purchase.idempotency_key == key))
            if key is None or existing is None:
                raise
            return _replay(session, existing, menu_id, item_id)
    # The connection is back in the pool: the verdict wait holds none.
    request_settlement(runtime(), purchase["id"])
    verdict = wait_for_verdict(redis(), purchase["id"], config.purchase_wait_seconds) or {}
    return _answer(SimpleNamespace(**{**purchase, **dict.fromkeys(_SET_AFTER_INTAKE), **verdict}))


@blp.route("/history", methods=["GET"])
@role_required()
@blp.arguments(HistoryQuery, location="query")
@blp.response(200, HistoryOut, example={"purchases": [PURCHASE_EXAMPLE], "total": 1, "limit": 20, "offset": 0})
def purchase_history(query):
    """The caller's purchases, newest first (a model sees purchases of their items)."""
    session = db()
    limit = min(query["limit"], settings().history_max_limit)
    user_id = current_user_id()
    owner_column = Purchase.model_id if current_role() == "model" else Purchase.fan_id
    where = owner_column == user_id
    total = session.scalar(select(func.count()).select_from(Purchase).where(where))
    rows = session.scalars(
        select(Purchase).where(where).order_by(Purchase.created_at.desc(), Purchase.id).limit(limit).offset(query["offset"])
    ).all()
    return {"purchases": [purchase_view(p) for p in rows], "total": total, "limit": limit, "offset": query["offset"]}


@blp.route("/<uuid:purchase_id>/status", methods=["GET"])
@role_required()
@blp.response(200, PurchaseOut, example=PURCHASE_EXAMPLE)
@error(404, "not_found", "No such purchase")
def purchase_status(purchase_id):
    """One purchase: its fan, its model or an admin may look."""
    purchase = db().get(Purchase, purchase_id)
    user_id = current_user_id()
    if purchase is None or not (current_role() == "admin" or user_id in (purchase.fan_id, purchase.model_id)):
        raise ApiError(404, "not_found", "No such purchase")
    return purchase_view(purchase)
