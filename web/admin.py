"""Operator endpoints (/admin, role admin): users, top-ups, subscriptions, refunds, stuck purchases, the books."""
from __future__ import annotations

from datetime import timedelta

from flask import request
from marshmallow import Schema, ValidationError, fields, validate, validates_schema
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from models.audit import audit
from models.auth_sessions import revoke_user_sessions
from models.ledger import Account, LedgerEntry, books_differences, top_up
from models.menu_schemas import Int
from models.purchases import STATUSES, InvalidTransition, Purchase
from models.services import escrow
from models.types import utcnow
from models.users import (
    ROLES,
    PASSWORD_MAX,
    PASSWORD_MIN,
    USERNAME_MAX,
    Subscription,
    User,
    UsernameTaken,
    create_user,
    find_user_id,
    parse_uuid,
)
from worker.handoff import after_queue_change

from .auth import current_user_id, role_required
from .deps import db, runtime, settings
from .docs import error
from .errors import ApiError
from .json_body import Blueprint
from .platform_auth import EXTERNAL_ID_MAX, PlatformClaims, platform_user
from .purchases import PURCHASE_EXAMPLE, purchase_view
from .schemas import PageOut, PurchaseOut

blp = Blueprint("admin", __name__, url_prefix="/admin", description="Operator actions (admin role)")

MAX_TOP_UP = 10_000_000
FAN_ID = "3f1c2b9e-8d7a-4c55-9a41-0c7e2d6b1a90"
MODEL_ID = "7e6d5c4b-3a29-4181-9f0e-1d2c3b4a5f6e"
TOP_UP_EXAMPLE = {"entry_id": 42, "fan_id": FAN_ID, "amount": 500, "token_balance": 950, "replayed": False}


class UserIn(Schema):
    username = fields.String(required=True, validate=validate.Length(min=1, max=USERNAME_MAX))
    password = fields.String(required=True, load_only=True,
                             validate=validate.Length(min=PASSWORD_MIN, max=PASSWORD_MAX))
    role = fields.String(required=True, validate=validate.OneOf(ROLES))
    display_name = fields.String(allow_none=True, validate=validate.Length(max=65))


class UserOut(Schema):
    id = fields.UUID()
    username = fields.String()
    role = fields.String()
    display_name = fields.String(allow_none=True)
    is_active = fields.Boolean()


class TopUpIn(Schema):
    amount = Int(required=True, validate=validate.Range(min=1, max=MAX_TOP_UP))
    idempotency_key = fields.String(validate=validate.Length(min=1, max=120))


class TopUpOut(Schema):
    entry_id = fields.Integer()
    fan_id = fields.UUID()
    amount = fields.Integer()
    token_balance = fields.Integer()
    replayed = fields.Boolean()


class SubscriptionIn(Schema):
    days = Int(validate=validate.Range(min=1, max=3660))
    expires_at = fields.AwareDateTime()

    @validates_schema
    def _one_of(self, data, **_kwargs):
        if ("days" in data) == ("expires_at" in data):
            raise ValidationError("Send either days or expires_at.", "days")
        if "expires_at" in data and data["expires_at"] <= utcnow():
            raise ValidationError("Must be in the future.", "expires_at")


class SubscriptionOut(Schema):
    id = fields.UUID()
    fan_id = fields.UUID()
    model_id = fields.UUID()
    expires_at = fields.DateTime()


class RefundIn(Schema):
    reason = fields.String(load_default="admin_refund", validate=validate.Regexp(r"^[a-z_]{1,40}$"))


class PurchaseListQuery(Schema):
    status = fields.String(validate=validate.OneOf(STATUSES))
    older_than_seconds = fields.Integer(validate=validate.Range(min=0, max=10 * 365 * 86400))
    limit = fields.Integer(load_default=50, validate=validate.Range(min=1, max=500))
    offset = fields.Integer(load_default=0, validate=validate.Range(min=0, max=10_000_000))


class PurchaseListOut(PageOut):
    purchases = fields.List(fields.Nested(PurchaseOut))


class BooksOut(Schema):
    balanced = fields.Boolean()
    differences = fields.List(fields.Dict())


def required_idempotency_key(body) -> str:
    """The key an operator's money movement must carry: the `Idempotency-Key` header or `idempotency_key`."""
    key = request.headers.get("Idempotency-Key") or body.get("idempotency_key")
    if not key or len(key) > 120:
        raise ApiError(422, "idempotency_key_required", "Send an idempotency key of 1 to 120 characters",
                       fields={"idempotency_key": ["Required, 1 to 120 characters."]})
    return key


def user_by_ref(session, ref: str, role: str | None = None) -> User:
    """The user a path names (our id or the platform's), of `role` if given; 404 otherwise."""
    user_id = find_user_id(session, ref)
    user = session.get(User, user_id) if user_id is not None else None
    if user is None or role is not None and user.role != role:
        raise ApiError(404, "not_found", f"No such {role or 'user'}")
    return user


def _user(session, user_id, role: str) -> User:
    user = session.get(User, user_id)
    if user is None or user.role != role:
        raise ApiError(404, "not_found", f"No such {role}")
    return user


def _fan_to_top_up(session, ref: str):
    fan_id = find_user_id(session, ref)
    is_platform_id = parse_uuid(ref) is None and len(ref) <= EXTERNAL_ID_MAX  # never cut: two ids would meet
    if fan_id is None and is_platform_id and settings().platform_identity:
        fan_id = platform_user(session, PlatformClaims(ref, "fan", None, 0)).id
    if fan_id is None:
        raise ApiError(404, "not_found", "No such fan")
    return _user(session, fan_id, "fan").id


@blp.route("/users", methods=["POST"])
@role_required("admin")
@blp.arguments(UserIn, example={"username": "fan1", "password": "a-long-password", "role": "fan"})
@blp.response(201, UserOut, example={"id": FAN_ID, "username": "fan1", "role": "fan", "display_name": None,
                                    "is_active": True})
@error(409, description="username_taken")
def create_user_endpoint(body):
    """Create a fan, model or admin with the accounts the role needs."""
    session = db()
    try:
        user = create_user(session, body["username"], body["password"], body["role"], body.get("display_name"))
        audit(session, "user.created", user.id, current_user_id(), role=user.role)
        session.commit()
    except UsernameTaken:
        session.rollback()
        raise ApiError(409, "username_taken", "That username is taken") from None
    except IntegrityError as exc:
        session.rollback()
        # Only the username's own constraint means a taken name (two creations racing); anything else (the
        # calling admin's row gone, say) is not the caller's doing with the name.
        if getattr(getattr(exc.orig, "diag", None), "constraint_name", None) == "uq_users_username":
            raise ApiError(409, "username_taken", "That username is taken") from None
        raise ApiError(409, "conflict", "The user could not be created; try again") from None
    return user


def _set_active(user_ref: str, active: bool) -> User:
    session = db()
    user = user_by_ref(session, user_ref)
    session.refresh(user, with_for_update=True)
    if user.id == current_user_id() and not active:
        raise ApiError(409, "conflict", "An admin cannot deactivate themselves")
    if user.is_active != active:
        user.is_active = active
        if not active:
            revoke_user_sessions(session, user.id, "deactivated")
        audit(session, "user.activated" if active else "user.deactivated", user.id, current_user_id())
        session.commit()
    return user


USER_EXAMPLE = {"id": FAN_ID, "username": "fan1", "role": "fan", "display_name": None, "is_active": False}


@blp.route("/users/<user_ref>/deactivate", methods=["POST"])
@role_required("admin")
@blp.response(200, UserOut, example=USER_EXAMPLE)
@error(404, description="not_found: no such user")
@error(409, description="conflict: an admin cannot deactivate themselves")
def deactivate_user(user_ref):
    """Deactivate a user (our id or the platform's id): every token they hold is refused from their next
    request, they cannot sign in, and their purchases still pending fail with `account_inactive` (nothing moves).
    Queue entries already paid stay as they are. Audited."""
    return _set_active(user_ref, False)


@blp.route("/users/<user_ref>/activate", methods=["POST"])
@role_required("admin")
@blp.response(200, UserOut, example={**USER_EXAMPLE, "is_active": True})
@error(404, description="not_found: no such user")
def activate_user(user_ref):
    """Let a deactivated user sign in again (tokens from before the deactivation stay refused). Audited."""
    return _set_active(user_ref, True)


def _top_up_view(session, entry: LedgerEntry, fan_id, replayed: bool) -> dict:
    wallet = session.scalar(select(Account.balance).where(Account.owner_id == fan_id, Account.kind == "wallet"))
    return {"entry_id": entry.id, "fan_id": fan_id, "amount": entry.amount, "token_balance": wallet,
            "replayed": replayed}


def _replayed_top_up(session, key: str, fan_id, amount: int) -> dict | None:
    entry = session.scalar(select(LedgerEntry).where(LedgerEntry.external_ref == key))
    if entry is None:
        return None
    wallet_id = session.scalar(select(Account.id).where(Account.owner_id == fan_id, Account.kind == "wallet"))
    if entry.kind != "top_up" or entry.credit_account_id != wallet_id or entry.amount != amount:
        raise ApiError(422, "idempotency_mismatch", "This idempotency key was used for a different top-up")
    return _top_up_view(session, entry, fan_id, replayed=True)


@blp.route("/users/<fan_ref>/top-up", methods=["POST"])
@role_required("admin")
@blp.arguments(TopUpIn, example={"amount": 500, "idempotency_key": "topup-2024-06-01-fan1"})
@blp.response(201, TopUpOut, example=TOP_UP_EXAMPLE)
@blp.alt_response(200, schema=TopUpOut, description="The same key again: the first top-up, nothing added",
                  example={**TOP_UP_EXAMPLE, "replayed": True})
@error(404, description="not_found: no such fan")
@error(422, description="invalid_request, idempotency_key_required, idempotency_mismatch")
def top_up_endpoint(body, fan_ref):
    """Issue tokens to a fan's wallet (a ledgered top_up). An idempotency key is required (the
    `Idempotency-Key` header or `idempotency_key`): the same key tops up once. `fan_ref` is our id or, when
    the platform's identity is trusted, the platform's id of the fan (a fan not seen yet is created)."""
    session = db()
    key = required_idempotency_key(body)
    fan_id = _fan_to_top_up(session, fan_ref)
    replay = _replayed_top_up(session, key, fan_id, body["amount"])
    if replay is not None:
        return replay, 200
    entry = top_up(session, fan_id, body["amount"], external_ref=key, actor_id=current_user_id())
    if entry in session.new:
        try:
            session.commit()
            return _top_up_view(session, entry, fan_id, replayed=False)
        except IntegrityError:
            pass
    # The same key at the same moment: the other request's top-up stands, this one adds nothing.
    session.rollback()
    replay = _replayed_top_up(session, key, fan_id, body["amount"])
    if replay is None:
        raise ApiError(409, "conflict", "The top-up could not be recorded; try again")
    return replay, 200


@blp.route("/subscriptions/<uuid:fan_id>/<uuid:model_id>", methods=["PUT"])
@role_required("admin")
@blp.arguments(SubscriptionIn, example={"days": 30})
@blp.response(200, SubscriptionOut, example={"id": "c0ffee00-1234-4abc-8def-001122334455", "fan_id": FAN_ID,
                                             "model_id": MODEL_ID, "expires_at": "2024-07-01T00:00:00+00:00"})
@error(404, description="not_found: no such fan or model")
@error(422, description="invalid_request")
def grant_subscription(body, fan_id, model_id):
    """Grant (or extend, or shorten) a fan's subscription to a model: `days` from now, or `expires_at`."""
    session = db()
    _user(session, fan_id, "fan")
    _user(session, model_id, "model")
    expires_at = body.get("expires_at") or utcnow() + timedelta(days=body["days"])
    sub = session.scalar(
        select(Subscription).where(Subscription.fan_id == fan_id, Subscription.model_id == model_id).with_for_update()
    )
    if sub is None:
        sub = Subscription(fan_id=fan_id, model_id=model_id, expires_at=expires_at)
        session.add(sub)
    else:
        sub.expires_at = expires_at
    session.flush()
    audit(session, "subscription.granted", sub.id, current_user_id(), expires_at=expires_at.isoformat())
    try:
        session.commit()
    except IntegrityError:
        session.rollback()
        raise ApiError(409, "conflict", "The subscription changed at the same time; try again") from None
    return sub


@blp.route("/subscriptions/<uuid:fan_id>/<uuid:model_id>", methods=["DELETE"])
@role_required("admin")
@blp.response(204)
@error(404, description="not_found: no such subscription")
def revoke_subscription(fan_id, model_id):
    """Revoke a fan's subscription to a model at once."""
    session = db()
    sub = session.scalar(
        select(Subscription).where(Subscription.fan_id == fan_id, Subscription.model_id == model_id).with_for_update()
    )
    if sub is None:
        raise ApiError(404, "not_found", "No such subscription")
    audit(session, "subscription.revoked", sub.id, current_user_id())
    session.delete(sub)
    session.commit()


@blp.route("/purchases/<uuid:purchase_id>/refund", methods=["POST"])
@role_required("admin")
@blp.arguments(RefundIn, example={"reason": "admin_refund"})
@blp.response(200, PurchaseOut, example={**PURCHASE_EXAMPLE, "transaction_type": "queued", "status": "refunded",
                                         "refund_reason": "admin_refund"})
@error(404, description="not_found")
@error(409, description="not_refundable: only queued or in_progress purchases")
def refund_purchase(body, purchase_id):
    """Refund a queued or in-progress purchase: its escrow goes back to the fan. A completed, failed, pending
    or already refunded purchase cannot be refunded here (409 not_refundable)."""
    session = db()
    purchase = escrow.lock_purchase(session, purchase_id)
    if purchase is None:
        raise ApiError(404, "not_found", "No such purchase")
    try:
        escrow.refund(session, purchase, body["reason"], settings().tz, "admin", actor_id=current_user_id())
    except InvalidTransition as exc:
        session.rollback()
        raise ApiError(409, "not_refundable", f"A {exc.current} purchase cannot be refunded",
                       status=exc.current) from None
    session.commit()
    after_queue_change(runtime(), [purchase])  # the entry leaves the model's Redis queue
    return purchase_view(purchase)


@blp.route("/purchases", methods=["GET"])
@role_required("admin")
@blp.arguments(PurchaseListQuery, location="query")
@blp.response(200, PurchaseListOut, example={"purchases": [{**PURCHASE_EXAMPLE, "status": "pending"}], "total": 1,
                                             "limit": 50, "offset": 0})
def list_purchases(query):
    """Purchases by status and age, oldest first: `status=pending&older_than_seconds=60` lists stuck ones."""
    session = db()
    where = []
    if "status" in query:
        where.append(Purchase.status == query["status"])
    if "older_than_seconds" in query:
        where.append(Purchase.created_at < utcnow() - timedelta(seconds=query["older_than_seconds"]))
    total = session.scalar(select(func.count()).select_from(Purchase).where(*where))
    rows = session.scalars(
        select(Purchase).where(*where).order_by(Purchase.created_at, Purchase.id)
        .limit(query["limit"]).offset(query["offset"])
    ).all()
    return {"purchases": [purchase_view(p) for p in rows], "total": total, "limit": query["limit"],
            "offset": query["offset"]}


@blp.route("/books", methods=["GET"])
@role_required("admin")
@blp.response(200, BooksOut, example={"balanced": True, "differences": []})
def books_check():
    """Recompute every balance from the ledger: each account against its ledger rows, and each currency's
    balances against what was issued. `balanced` is false and `differences` lists them on any mismatch."""
    diffs = books_differences(db())
    return {"balanced": not diffs, "differences": diffs}
