"""Purchase intake (thin: validate, check, insert `pending`, hand off), history and status.

No money moves here: the worker settles. The POST waits a short, configurable time for the verdict."""
from __future__ import annotations

from flask import g, request, url_for
from sqlalchemy import bindparam, func, literal, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import aliased

from models.auth_sessions import token_check_columns
from models.infra import metrics
from models.ledger import Account
from models.menus import Menu, MenuItem
from models.purchases import Purchase, daily_count, delivery_hours_for, purchase_day_of, refusal
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
from .limits import fan_key, limiter, purchase_limit
from .menus import load_visible_menu
from .schemas import HistoryOut, HistoryQuery, PurchaseOut, PurchaseRequest

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
    position, wait = performance_queue.position_or_repair(db(), p, redis()) or (None, None)
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
        "status_url": url_for("purchases.purchase_status", purchase_id=p.id),
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
    body = purchase_view(purchase)
    if purchase.status == "pending":
        return body, 202, {"Location": body["status_url"]}
    if purchase.status == "failed":
        refuse(purchase.failure_reason, **PurchaseOut().dump(body))
    return body, 200


# Built once (the operator overloading of building it costs more than running it): the id of the fan's
# purchase already made with this idempotency key (None if none or no key), the menu (None if missing), the
# item (None unless on that menu), the fan's wallet balance, the open entries of the menu's model's queue and
# whether the fan's token may be used (web/auth.py, session_checked_by_view), the model's open show and
# whether their queue is paused, in one round trip; the one-row FROM keeps the id and the balance when the menu is missing.
_model = aliased(User)
_INTAKE_QUERY = (
    select(
        select(Purchase.id)
        .where(Purchase.fan_id == bindparam("fan_id"), Purchase.idempotency_key == bindparam("key"))
        .scalar_subquery(),
        Menu,
        MenuItem,
        select(Account.balance)
        .where(Account.owner_id == bindparam("fan_id"), Account.kind == "wallet")
        .scalar_subquery(),
        open_queue_size_query(Menu.model_id).scalar_subquery(),
        *token_check_columns(bindparam("fan_id"), bindparam("token_session")),
        Show.id,
        Show.status,
        _model.queue_paused,
    )
    .select_from(select(literal(1).label("one")).subquery())
    .outerjoin(Menu, Menu.id == bindparam("menu_id"))
    .outerjoin(MenuItem, (MenuItem.id == bindparam("item_id")) & (MenuItem.menu_id == Menu.id))
    .outerjoin(Show, (Show.model_id == Menu.model_id) & Show.status.in_(OPEN_SHOW))
    .outerjoin(_model, _model.id == Menu.model_id)
)


def load_for_intake(session, menu_id, item_id, fan_id, key, token_session):
    """(existing purchase id, menu, item, wallet balance, open queue entries, fan active, token's session open,
    open show id, its status, model's queue paused):
    see _INTAKE_QUERY. The menu and the item stay in the session's identity map, so session.get answers them
    without a query."""
    return session.execute(
        _INTAKE_QUERY,
        {"fan_id": fan_id, "key": key, "menu_id": menu_id, "item_id": item_id, "token_session": token_session},
    ).one()


def _replay(session, purchase: Purchase, menu_id, item_id):
    if not purchase.same_request(menu_id, item_id):
        raise ApiError(422, "idempotency_mismatch", "This idempotency key was used for a different purchase")
    return _settled_response(session, purchase)


@blp.route("", methods=["POST"])
@role_required("fan", session_checked_by_view=True)
@limiter.limit(purchase_limit, key_func=fan_key)
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
    Rate limited per fan (RATE_LIMIT_PURCHASE)."""
    config = settings()
    fan_id = current_user_id()
    key = request.headers.get("Idempotency-Key") or body.get("idempotency_key")
    session = db()
    # Intake only reads (prechecks the worker repeats under lock) and inserts one row: in autocommit that
    # costs no BEGIN and no COMMIT round trip, and the UNIQUE (fan, key) still settles an idempotency race.
    session.connection(execution_options={"isolation_level": "AUTOCOMMIT"})

    menu_id = parse_uuid(body["menu_id"])
    item_id = parse_uuid(body.get("menu_item_id") or body.get("item_id"))
    (existing_id, _menu, item, balance, queue_size, fan_active, session_open, show_id, show_status,
     queue_paused) = load_for_intake(session, menu_id, item_id, fan_id, key, g.token_session)
    refuse_unusable_token(fan_active, session_open)
    if key is not None and not 1 <= len(key) <= 128:
        raise ApiError(422, "invalid_request", "The idempotency key must be 1 to 128 characters")
    if existing_id is not None:
        return _replay(session, session.get(Purchase, existing_id), menu_id, item_id)
    menu = load_visible_menu(session, menu_id, buying=True)
    if item is None:
        raise ApiError(404, "not_found", "No such item on this menu")

    now = utcnow()
    day = purchase_day_of(now, config.tz)
    queued = menu.queue_mode == "ON"
    reason = refusal(
        buyer_active=True,  # authenticate() refused an inactive account's token
        available=item.is_active and menu.is_active,
        live_required=live_required(queued, menu.live_only, config.queue_off_needs_show),
        live=show_status == "live",
        queue_paused=bool(queue_paused),
        price=item.token_value,
        balance=balance,
        daily_max=item.max_daily_purchases,
        bought_today=lambda: daily_count(session, fan_id, item.id, day),
        queued=queued,
        queue_size=lambda: queue_size,
        queue_capacity=config.queue_capacity,
    )
    if reason is not None:
        refuse_at_intake(reason)

    purchase = Purchase(
        fan_id=fan_id,
        model_id=menu.model_id,
        menu_id=menu.id,
        item_id=item.id,
        item_name=item.name,
        token_value=item.token_value,
        loyalty_points=item.bonus_loyalty_points,
        estimated_duration_minutes=item.estimated_duration_minutes,
        delivery_hours=delivery_hours_for(item.delivery_hours, menu.delivery_hours_default),
        lovense_activation=item.lovense_activation,
        transaction_type="queued" if queued else "immediate",
        queue_priority=item.token_value if queued and menu.queue_order == "priority" else 0,
        idempotency_key=key or None,
        client_metadata=body.get("metadata"),
        note=body.get("note") or None,
        anonymous=body["anonymous"],
        show_id=show_id,
        purchase_day=day,
        created_at=now,
    )
    session.add(purchase)
    try:
        session.commit()
    except IntegrityError:
        # Another request with the same key won the race: answer with its purchase.
        session.rollback()
        existing = session.scalar(select(Purchase).where(Purchase.fan_id == fan_id, Purchase.idempotency_key == key))
        if key is None or existing is None:
            raise
        return _replay(session, existing, menu_id, item_id)
    request_settlement(runtime(), purchase.id)
    return _settled_response(session, purchase)


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
