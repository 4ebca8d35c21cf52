"""A model's shows: go live, pause, end (docs/architecture.md, "Shows"). While no show is live, Queue OFF items
and live-only menus are refused with 409 `model_not_live`; Queue ON items stay purchasable (offline requests)."""
from __future__ import annotations

from marshmallow import Schema, fields, validate
from sqlalchemy import func, select

from models.purchases import Purchase
from models.services import shows
from models.shows import END_MODES, Show, open_show
from models.users import User
from worker.handoff import after_queue_change

from .auth import current_user_id, role_required
from .deps import db, runtime, settings
from .docs import error
from .errors import ApiError
from .json_body import Blueprint

blp = Blueprint("shows", __name__, url_prefix="/show", description="The model's live shows")


class SalesOut(Schema):
    count = fields.Integer(metadata={"description": "completed sales made in the show"})
    tokens = fields.Integer(metadata={"description": "their price, in tokens, before the platform's fee"})


class ShowOut(Schema):
    id = fields.UUID()
    status = fields.String(metadata={"description": "live, paused or ended"})
    started_at = fields.DateTime()
    paused_at = fields.DateTime(allow_none=True)
    ended_at = fields.DateTime(allow_none=True)
    end_mode = fields.String(allow_none=True, metadata={"description": "keep or refund_all, once ended"})
    sales = fields.Nested(SalesOut)


class ShowStateOut(Schema):
    show = fields.Nested(ShowOut, allow_none=True, metadata={"description": "the open show, else the last one"})
    live = fields.Boolean()
    queue_paused = fields.Boolean()
    refunded = fields.Integer(metadata={"description": "entries refunded by this end (POST /show/end only)"})


class EndRequest(Schema):
    open_entries = fields.String(load_default="keep", validate=validate.OneOf(END_MODES), metadata={
        "description": "keep: the queue stays as it is; refund_all: every queued entry goes back to its fan "
                       "(reason show_ended); an entry in progress stays for the model to complete or reject"})


SHOW_EXAMPLE = {"show": {"id": "1c9e7a52-3b4d-4f60-8a71-2e3f4a5b6c7d", "status": "live",
                         "started_at": "2024-06-01T20:00:00+00:00", "paused_at": None, "ended_at": None,
                         "end_mode": None, "sales": {"count": 3, "tokens": 150}},
                "live": True, "queue_paused": False}


def _state(session, model_id, show: Show | None = None, **extra) -> dict:
    show = show or open_show(session, model_id) or shows.last_show(session, model_id)
    view = None
    if show is not None:
        count, tokens = session.execute(
            select(func.count(), func.coalesce(func.sum(Purchase.token_value), 0))
            .where(Purchase.show_id == show.id, Purchase.status == "completed")).one()
        view = {"id": show.id, "status": show.status, "started_at": show.started_at, "paused_at": show.paused_at,
                "ended_at": show.ended_at, "end_mode": show.end_mode, "sales": {"count": count, "tokens": tokens}}
    paused = session.scalar(select(User.queue_paused).where(User.id == model_id))
    return {"show": view, "live": view is not None and view["status"] == "live", "queue_paused": paused, **extra}


@blp.route("", methods=["GET"])
@role_required("model")
@blp.response(200, ShowStateOut, example=SHOW_EXAMPLE)
def show_state():
    """The caller's open show (else their last one), its sales so far, and whether they are live."""
    return _state(db(), current_user_id())


@blp.route("/start", methods=["POST"])
@role_required("model")
@blp.response(200, ShowStateOut, example=SHOW_EXAMPLE)
def start_show():
    """Go live: open a new show, or resume the paused one (live already: nothing changes)."""
    session, model_id = db(), current_user_id()
    show = shows.start(session, model_id, actor_id=model_id)
    session.commit()
    return _state(session, model_id, show)


@blp.route("/pause", methods=["POST"])
@role_required("model")
@blp.response(200, ShowStateOut, example={**SHOW_EXAMPLE, "live": False,
                                          "show": {**SHOW_EXAMPLE["show"], "status": "paused"}})
@error(409, "no_open_show", "There is no open show", description="no_open_show")
def pause_show():
    """A break: not live until POST /show/start; Queue OFF and live-only items are refused meanwhile."""
    session, model_id = db(), current_user_id()
    try:
        show = shows.pause(session, model_id, actor_id=model_id)
    except shows.NoOpenShow:
        raise ApiError(409, "no_open_show", "There is no open show") from None
    session.commit()
    return _state(session, model_id, show)


@blp.route("/end", methods=["POST"])
@role_required("model")
@blp.arguments(EndRequest, example={"open_entries": "refund_all"})
@blp.response(200, ShowStateOut, example={**SHOW_EXAMPLE, "live": False, "refunded": 2,
                                          "show": {**SHOW_EXAMPLE["show"], "status": "ended",
                                                   "end_mode": "refund_all"}})
@error(409, "no_open_show", "There is no open show", description="no_open_show")
def end_show(body):
    """End the open show. With `open_entries: refund_all`, every entry bought before the end and still queued
    is refunded (reason `show_ended`), each its own ledger movement. Sent again after a refund_all end, it
    refunds only what is still queued (nothing, unless the first call was cut short) and answers 200; any other
    call without an open show answers 409 `no_open_show`."""
    session, model_id = db(), current_user_id()
    try:
        show = shows.end(session, model_id, body["open_entries"], actor_id=model_id)
        session.commit()
    except shows.NoOpenShow:
        session.rollback()
        show = shows.last_show(session, model_id)
        if show is None or show.end_mode != "refund_all" or body["open_entries"] != "refund_all":
            raise ApiError(409, "no_open_show", "There is no open show") from None
    refunded = []
    if show.end_mode == "refund_all":
        refunded = shows.refund_queued(session, show, settings().tz, actor_id=model_id)
        if refunded:
            after_queue_change(runtime(), refunded)
    return _state(session, model_id, show, refunded=len(refunded))
