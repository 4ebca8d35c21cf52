"""Lovense pairing (model), Lovense's pairing callback (no JWT: verified by utoken) and failed activations (admin).

The utoken we give Lovense with a QR request names a pairing (a nonce stored until used) and its expiry, signed
with the model id under LOVENSE_CALLBACK_SECRET (models/lovense.py). The first callback that brings it back for the
uid it names, before it expires, links the model and uses the pairing up; Lovense's later callbacks for that same
pairing may only refresh the toys of the link it made. A replayed callback cannot link again, after an unpairing or
a newer pairing. Neither the developer token nor a utoken is ever logged or returned in an error."""
from __future__ import annotations

import secrets
from datetime import timedelta

from marshmallow import EXCLUDE, Schema, fields, validate
from sqlalchemy import delete, func, select

from models.audit import audit
from models.lovense import (
    ACTIVATION_STATUSES,
    PAIRING_MINUTES,
    LovenseActivation,
    LovenseLink,
    LovensePairing,
    pairing_utoken,
    read_utoken,
)
from models.services.activations import reset_for_resend, timeline
from models.services.lovense_api import LovenseError, client_for
from models.types import utcnow
from models.users import parse_uuid
from worker.handoff import request_activation, request_stop

from .auth import current_user_id, role_required
from .deps import db, settings
from .docs import error, public
from .errors import ApiError
from .json_body import Blueprint
from .schemas import PageOut

MODEL_ID = "7e6d5c4b-3a29-4181-9f0e-1d2c3b4a5f6e"
LINK_EXAMPLE = {"linked": True, "uid": MODEL_ID, "toys": {"a1b2c3": {"name": "lush", "status": "1"}},
                "linked_at": "2024-06-01T12:00:00+00:00"}
ACTIVATION_EXAMPLE = {"id": 7, "purchase_id": "0b6f3c8e-2a51-4d0e-9f7a-5c1d2e3f4a5b", "model_id": MODEL_ID,
                      "status": "failed", "attempts": 5, "last_error": "lovense_507",
                      "created_at": "2024-06-01T12:00:00+00:00", "updated_at": "2024-06-01T12:02:00+00:00",
                      "last_attempt_at": "2024-06-01T12:02:00+00:00", "sent_at": None}

blp = Blueprint("lovense", __name__, url_prefix="/lovense", description="Lovense toy pairing and activations")


class QrCodeOut(Schema):
    qr_url = fields.String(metadata={"description": "URL of the QR code image the model scans in the Lovense app"})
    code = fields.String(allow_none=True, metadata={"description": "the pairing code shown with the QR code"})


class CallbackIn(Schema):
    class Meta:
        unknown = EXCLUDE  # Lovense also sends app and network details we do not keep

    uid = fields.String(required=True, validate=validate.Length(min=1, max=128))
    utoken = fields.String(required=True, validate=validate.Length(min=1, max=256), load_only=True)
    toys = fields.Dict(load_default=None, allow_none=True)


class LinkOut(Schema):
    linked = fields.Boolean()
    uid = fields.String(allow_none=True)
    toys = fields.Dict(allow_none=True)
    linked_at = fields.DateTime(allow_none=True)


class CallbackOut(Schema):
    result = fields.Boolean()


class ActivationOut(Schema):
    id = fields.Integer()
    purchase_id = fields.UUID()
    model_id = fields.UUID()
    status = fields.String()
    attempts = fields.Integer()
    last_error = fields.String(allow_none=True)
    created_at = fields.DateTime()
    updated_at = fields.DateTime()
    last_attempt_at = fields.DateTime(allow_none=True)
    sent_at = fields.DateTime(allow_none=True)


class ActivationQuery(Schema):
    status = fields.String(load_default="failed", validate=validate.OneOf(ACTIVATION_STATUSES))
    limit = fields.Integer(load_default=50, validate=validate.Range(min=1, max=200))
    offset = fields.Integer(load_default=0, validate=validate.Range(min=0, max=10_000_000))


class ActivationListOut(PageOut):
    activations = fields.List(fields.Nested(ActivationOut))


class SlotOut(Schema):
    purchase_id = fields.UUID()
    fan_id = fields.UUID(allow_none=True, metadata={"description": "null when the fan bought anonymously"})
    anonymous = fields.Boolean()
    item_id = fields.UUID()
    item_name = fields.String()
    status = fields.String(metadata={"description": "playing (on the toy now) or waiting"})
    position = fields.Integer(metadata={"description": "0: playing now; n: n slots ahead of this one"})
    starts_at = fields.DateTime(metadata={"description": "playing: when it started; waiting: when it will"})
    ends_at = fields.DateTime()
    duration_seconds = fields.Float(metadata={"description": "what the toy plays (at least 2 s)"})


class TimelineOut(Schema):
    model_id = fields.UUID()
    now_playing = fields.Nested(SlotOut, allow_none=True)
    waiting = fields.List(fields.Nested(SlotOut))
    ends_at = fields.DateTime(allow_none=True, metadata={"description": "when the last slot ends (None: idle)"})


TIMELINE_SLOT = {"purchase_id": ACTIVATION_EXAMPLE["purchase_id"], "fan_id": "5d4c3b2a-1f0e-4d9c-8b7a-6f5e4d3c2b1a",
                 "anonymous": False,
                 "item_id": "1c2d3e4f-5a6b-4c7d-8e9f-0a1b2c3d4e5f", "item_name": "Lovense Tease - Low",
                 "status": "playing", "position": 0, "starts_at": "2024-06-01T12:00:00+00:00",
                 "ends_at": "2024-06-01T12:00:10+00:00", "duration_seconds": 10.0}


def _link_view(link: LovenseLink | None) -> dict:
    if link is None:
        return {"linked": False, "uid": None, "toys": None, "linked_at": None}
    return {"linked": True, "uid": link.uid, "toys": link.toys, "linked_at": link.linked_at}


@blp.route("/qr-code", methods=["POST"])
@role_required("model")
@blp.response(200, QrCodeOut, example={"qr_url": "https://api.lovense-api.com/qr/abc123.png", "code": "AB12CD"})
@error(502, description="lovense_unavailable: Lovense refused or did not answer")
@error(503, description="lovense_disabled: activations are switched off")
def qr_code():
    """A QR code the model scans in the Lovense app to pair their toys with this account."""
    config = settings()
    if not config.lovense_enabled or not config.lovense_developer_token:
        raise ApiError(503, "lovense_disabled", "Lovense is switched off on this platform")
    model_id = current_user_id()
    session = db()
    now = utcnow()
    pairing = LovensePairing(nonce=secrets.token_hex(16), model_id=model_id,
                             expires_at=now + timedelta(minutes=PAIRING_MINUTES))
    session.execute(delete(LovensePairing).where(LovensePairing.model_id == model_id,
                                                 LovensePairing.expires_at < now))
    session.add(pairing)
    session.commit()
    # uid and uname are our model id: Lovense needs no personal data to pair.
    utoken = pairing_utoken(config.lovense_callback_secret, model_id, pairing.nonce, pairing.expires_at)
    try:
        qr = client_for(config).qr_code(str(model_id), str(model_id), utoken)
    except LovenseError as exc:
        raise ApiError(502, "lovense_unavailable", f"Lovense did not return a QR code ({exc.code})") from None
    return {"qr_url": qr["qr"], "code": qr["code"]}


@blp.route("/callback", methods=["POST"])
@public
@blp.arguments(CallbackIn, example={"uid": MODEL_ID, "utoken": "<the utoken we issued>",
                                    "toys": LINK_EXAMPLE["toys"]})
@blp.response(200, CallbackOut, example={"result": True})
@error(403, description="invalid_utoken: the callback is not for a pairing we started (or the pairing was used by "
       "another callback); pairing_expired: the QR code's utoken has expired")
def callback(body):
    """Lovense's pairing callback (no JWT): links the model named by uid, if the utoken is one we issued for that
    model, not expired and not used by another callback (Lovense's later callbacks for the same pairing refresh the
    toys)."""
    session = db()
    model_id = parse_uuid(body["uid"])
    # Verify before any lookup, so a forged call learns nothing about which ids exist.
    utoken = read_utoken(settings().lovense_callback_secret, model_id, body["utoken"]) if model_id else None
    if utoken is None:
        raise ApiError(403, "invalid_utoken", "The callback could not be verified")
    nonce, expires_at = utoken
    pairing = session.get(LovensePairing, nonce, with_for_update=True)
    link = session.get(LovenseLink, model_id)
    if pairing is None or pairing.model_id != model_id:
        raise ApiError(403, "invalid_utoken", "The callback could not be verified")
    if pairing.used_at is None:
        if expires_at <= utcnow():
            raise ApiError(403, "pairing_expired", "The QR code has expired; ask for a new one")
        pairing.used_at = utcnow()
        link = link or LovenseLink(model_id=model_id)
        # Stored in one form (ours, the one we gave Lovense), whatever case or dashes the callback used.
        link.uid, link.pairing_nonce, link.linked_at = str(model_id), nonce, utcnow()
        session.add(link)
        audit(session, "lovense.linked", model_id)
    elif link is None or link.pairing_nonce != nonce:
        raise ApiError(403, "invalid_utoken", "The callback could not be verified")
    link.toys = body["toys"]
    session.commit()
    return {"result": True}


@blp.route("/link", methods=["GET"])
@role_required("model")
@blp.response(200, LinkOut, example=LINK_EXAMPLE)
def get_link():
    """Whether the model's Lovense toys are paired, and which."""
    return _link_view(db().get(LovenseLink, current_user_id()))


@blp.route("/link", methods=["DELETE"])
@role_required("model")
@blp.response(200, LinkOut, example=LINK_EXAMPLE)
def unlink():
    """Unpair: a buzz playing now is stopped, and later activations of this model's purchases are recorded as
    skipped (unpaired)."""
    session = db()
    model_id = current_user_id()
    link = session.get(LovenseLink, model_id)
    if link is not None:
        uid = link.uid
        session.delete(link)
        audit(session, "lovense.unlinked", model_id, model_id)
        session.commit()
        request_stop(model_id, reason="unpaired", uid=uid)  # the link is gone, so the Stop carries its uid
    return _link_view(None)


@blp.route("/timeline", methods=["GET"])
@role_required("model")
@blp.response(200, TimelineOut, example={"model_id": MODEL_ID, "now_playing": TIMELINE_SLOT, "waiting": [
    {**TIMELINE_SLOT, "status": "waiting", "position": 1, "starts_at": "2024-06-01T12:00:10+00:00",
     "ends_at": "2024-06-01T12:00:20+00:00"}], "ends_at": "2024-06-01T12:00:20+00:00"})
def get_timeline():
    """The model's toy timeline: the buzz playing now (with its end), then the waiting ones in the order they play,
    each with its purchase, fan, item, start and duration."""
    model_id = current_user_id()
    slots = timeline(db(), model_id)
    playing = [s for s in slots if s["status"] == "playing"]
    return {"model_id": model_id, "now_playing": playing[0] if playing else None,
            "waiting": [s for s in slots if s["status"] == "waiting"],
            "ends_at": slots[-1]["ends_at"] if slots else None}


@blp.route("/activations", methods=["GET"])
@role_required("admin")
@blp.arguments(ActivationQuery, location="query")
@blp.response(200, ActivationListOut, example={"activations": [ACTIVATION_EXAMPLE], "total": 1, "limit": 50,
                                               "offset": 0})
def list_activations(query):
    """Activations by status (default `failed`), most recently changed first."""
    session = db()
    where = LovenseActivation.status == query["status"]
    total = session.scalar(select(func.count()).select_from(LovenseActivation).where(where))
    rows = session.scalars(
        select(LovenseActivation)
        .where(where)
        .order_by(LovenseActivation.updated_at.desc(), LovenseActivation.id)
        .limit(query["limit"])
        .offset(query["offset"])
    ).all()
    return {"activations": rows, "total": total, "limit": query["limit"], "offset": query["offset"]}


@blp.route("/activations/<uuid:purchase_id>/resend", methods=["POST"])
@role_required("admin")
@blp.response(202, ActivationOut, example={**ACTIVATION_EXAMPLE, "status": "pending", "attempts": 0,
                                           "last_error": None})
@error(404, description="not_found: no activation for this purchase")
@error(409, description="conflict: the activation is not failed, skipped, expired or unconfirmed")
def resend(purchase_id):
    """Send a failed, skipped, expired or unconfirmed activation again, with a fresh attempt count and a new slot at
    the end of the model's timeline (an unconfirmed one may have played already: it is the operator's call)."""
    session = db()
    try:
        row = reset_for_resend(session, purchase_id)
    except ValueError as exc:
        raise ApiError(409, "conflict",
                       f"The activation is {exc}; only failed, skipped, expired or unconfirmed ones are re-sent") from None
    if row is None:
        raise ApiError(404, "not_found", "No activation for this purchase")
    audit(session, "lovense.resend", purchase_id, current_user_id())
    session.commit()
    request_activation(purchase_id)
    return row
