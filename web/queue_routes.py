"""The performance queue (Queue ON): the model lists, starts, completes and rejects entries; the fan cancels.

Each action is one transaction with the purchase row locked (models/services/escrow.py), so two actions on one entry
serialize and the second gets 409; Redis is updated after the commit. Only the owning model (or, for a cancel,
the owning fan) may act: anyone else gets 404, as if the entry did not exist."""
from __future__ import annotations

from marshmallow import Schema, fields, validate
from sqlalchemy import select

from models.audit import audit
from models.outbox import queue_changed
from models.purchases import InvalidTransition
from models.services import escrow
from models.services.performance_queue import open_entries
from models.users import User
from worker.handoff import after_queue_change

from .auth import current_user_id, role_required
from .deps import db, runtime, settings
from .docs import error
from .errors import ApiError
from .json_body import Blueprint
from .purchases import PURCHASE_EXAMPLE, purchase_view
from .schemas import PurchaseOut

blp = Blueprint("queue", __name__, url_prefix="/queue", description="The model's performance queue (Queue ON)")

# Why a model rejects an entry: stored as the purchase's refund_reason (stable codes; the system's own reasons,
# `deadline_passed` and `cancelled_by_fan`, cannot be given).
REJECT_REASONS = ("cannot_deliver", "request_not_allowed", "unavailable", "other")


class QueueEntryOut(Schema):
    position = fields.Integer()
    purchase_id = fields.UUID()
    status = fields.String()
    item_id = fields.UUID()
    item_name = fields.String()
    fan_id = fields.UUID(allow_none=True, metadata={"description": "null when the fan bought anonymously"})
    fan_display_name = fields.String(allow_none=True, metadata={
        "description": "the fan's display name, if any (null when the fan bought anonymously)"})
    anonymous = fields.Boolean()
    note = fields.String(allow_none=True, metadata={"description": "the fan's note (plain text: escape it)"})
    token_value = fields.Integer()
    estimated_duration_minutes = fields.Integer()
    estimated_wait_minutes = fields.Integer()
    waiting_since = fields.DateTime()
    started_at = fields.DateTime(allow_none=True)
    escrow_deadline = fields.DateTime(allow_none=True)


class QueueOut(Schema):
    model_id = fields.UUID()
    paused = fields.Boolean(metadata={"description": "new Queue ON purchases are refused (queue_paused)"})
    entries = fields.List(fields.Nested(QueueEntryOut))
    total = fields.Integer()
    total_minutes = fields.Integer()


class RejectRequest(Schema):
    reason = fields.String(required=True, validate=validate.OneOf(REJECT_REASONS))


QUEUED_EXAMPLE = {**PURCHASE_EXAMPLE, "transaction_type": "queued", "item_name": "Custom Photo", "token_value": 200}
QUEUE_EXAMPLE = {
    "model_id": "7e6d5c4b-3a29-4181-9f0e-1d2c3b4a5f6e", "total": 1, "total_minutes": 15,
    "entries": [{"position": 1, "purchase_id": PURCHASE_EXAMPLE["purchase_id"], "status": "queued",
                 "item_id": "9a8b7c6d-5e4f-4a3b-2c1d-0e9f8a7b6c5d", "item_name": "Custom Photo",
                 "fan_id": "3f1c2b9e-8d7a-4c55-9a41-0c7e2d6b1a90", "fan_display_name": "Ana", "token_value": 200,
                 "estimated_duration_minutes": 15, "estimated_wait_minutes": 0,
                 "waiting_since": "2024-06-01T12:00:00+00:00", "started_at": None,
                 "escrow_deadline": "2024-06-02T12:00:00+00:00"}],
}


@blp.route("", methods=["GET"])
@role_required("model")
@blp.response(200, QueueOut, example=QUEUE_EXAMPLE)
def my_queue():
    """The caller's queue in order: the entry in progress first, then by priority, first come first served."""
    model_id = current_user_id()
    session = db()
    entries, wait = [], 0
    # Read from the database (the source of truth), in the same order as the Redis queue.
    open_now = open_entries(session, model_id)
    fan_ids = {p.fan_id for p in open_now}
    names = dict(session.execute(select(User.id, User.display_name).where(User.id.in_(fan_ids))).all())
    paused = session.scalar(select(User.queue_paused).where(User.id == model_id))
    for position, p in enumerate(open_now, start=1):
        entries.append({
            "position": position,
            "purchase_id": p.id,
            "status": p.status,
            "item_id": p.item_id,
            "item_name": p.item_name,
            "fan_id": None if p.anonymous else p.fan_id,
            "fan_display_name": None if p.anonymous else names.get(p.fan_id),
            "anonymous": p.anonymous,
            "note": p.note,
            "token_value": p.token_value,
            "estimated_duration_minutes": p.estimated_duration_minutes,
            "estimated_wait_minutes": wait,
            "waiting_since": p.created_at,
            "started_at": p.started_at,
            "escrow_deadline": p.escrow_deadline,
        })
        wait += p.estimated_duration_minutes or 0
    return {"model_id": model_id, "entries": entries, "total": len(entries), "total_minutes": wait,
            "paused": paused}


def _act(purchase_id, owner: str, action):
    """Lock the entry, check who may act, run `action` (which raises on a wrong state), commit, update Redis."""
    session = db()
    user_id = current_user_id()
    purchase = escrow.lock_purchase(session, purchase_id)
    if purchase is None or purchase.transaction_type != "queued" or getattr(purchase, owner) != user_id:
        session.rollback()
        raise ApiError(404, "not_found", "No such queue entry")
    try:
        action(session, purchase, user_id)
    except ApiError:
        session.rollback()
        raise
    except InvalidTransition as exc:
        session.rollback()
        raise ApiError(409, "invalid_state", f"The entry is {exc.current}; it cannot become {exc.wanted}") from None
    except escrow.AlreadyInProgress:
        session.rollback()
        raise ApiError(409, "already_in_progress", "Another entry is in progress: complete or reject it first") from None
    session.commit()
    after_queue_change(runtime(), [purchase])
    return purchase_view(purchase)


_CONFLICTS = "invalid_state (the entry is not in a state that allows this)"
_CONFLICT_EXAMPLE = "The entry is completed; it cannot become in_progress"


@blp.route("/<uuid:purchase_id>/start", methods=["POST"])
@role_required("model")
@blp.response(200, PurchaseOut, example={**QUEUED_EXAMPLE, "status": "in_progress"})
@error(404, "not_found", "No such queue entry", description="not_found (not an entry of the caller's queue)")
@error(409, "invalid_state", _CONFLICT_EXAMPLE,
       description=f"{_CONFLICTS}, already_in_progress")
def start_entry(purchase_id):
    """Start performing a queued entry (one entry in progress at a time)."""
    return _act(purchase_id, "model_id", lambda s, p, actor: escrow.start(s, p, actor_id=actor))


@blp.route("/<uuid:purchase_id>/complete", methods=["POST"])
@role_required("model")
@blp.response(200, PurchaseOut, example={**QUEUED_EXAMPLE, "status": "completed"})
@error(404, "not_found", "No such queue entry", description="not_found (not an entry of the caller's queue)")
@error(409, "invalid_state", _CONFLICT_EXAMPLE,
       description=_CONFLICTS)
def complete_entry(purchase_id):
    """Complete the entry in progress: the escrow goes to the model's earnings, loyalty points to the fan."""
    return _act(purchase_id, "model_id", lambda s, p, actor: escrow.release(s, p, settings().tz, actor_id=actor))


@blp.route("/<uuid:purchase_id>/reject", methods=["POST"])
@role_required("model")
@blp.arguments(RejectRequest, example={"reason": "cannot_deliver"})
@blp.response(200, PurchaseOut, example={**QUEUED_EXAMPLE, "status": "refunded", "refund_reason": "cannot_deliver"})
@error(404, "not_found", "No such queue entry", description="not_found (not an entry of the caller's queue)")
@error(409, "invalid_state", _CONFLICT_EXAMPLE,
       description=_CONFLICTS)
def reject_entry(body, purchase_id):
    """Reject a queued or in-progress entry: the escrow goes back to the fan; `reason` becomes refund_reason."""
    return _act(purchase_id, "model_id",
                lambda s, p, actor: escrow.refund(s, p, body["reason"], settings().tz, "model", actor_id=actor))


def _cancel(session, purchase, actor_id):
    if purchase.status == "in_progress":
        raise ApiError(409, "already_started", "The model has started this entry; it can no longer be cancelled")
    if purchase.status != "queued":
        raise InvalidTransition(purchase.status, "refunded")
    escrow.refund(session, purchase, "cancelled_by_fan", settings().tz, "fan", actor_id=actor_id)


@blp.route("/<uuid:purchase_id>/cancel", methods=["POST"])
@role_required("fan")
@blp.response(200, PurchaseOut, example={**QUEUED_EXAMPLE, "status": "refunded", "refund_reason": "cancelled_by_fan"})
@error(404, "not_found", "No such queue entry", description="not_found (not one of the caller's queue entries)")
@error(409, "invalid_state", _CONFLICT_EXAMPLE,
       description=f"{_CONFLICTS}, already_started")
def cancel_entry(purchase_id):
    """Cancel one of the caller's entries that the model has not started: the tokens come back."""
    return _act(purchase_id, "fan_id", _cancel)


class QueuePausedOut(Schema):
    paused = fields.Boolean()


def _set_paused(paused: bool):
    session = db()
    model = session.get(User, current_user_id())
    if model.queue_paused != paused:
        model.queue_paused = paused
        audit(session, "queue.paused" if paused else "queue.resumed", model.id, model.id)
        queue_changed(session, model.id)
        session.commit()
    return {"paused": paused}


@blp.route("/pause", methods=["POST"])
@role_required("model")
@blp.response(200, QueuePausedOut, example={"paused": True})
def pause_queue():
    """Take no new Queue ON purchases (they are refused with 409 `queue_paused`); the open entries stay."""
    return _set_paused(True)


@blp.route("/resume", methods=["POST"])
@role_required("model")
@blp.response(200, QueuePausedOut, example={"paused": False})
def resume_queue():
    """Take Queue ON purchases again."""
    return _set_paused(False)
