"""Webhook endpoints (/admin/webhooks, role admin): register, list, disable and enable, rotate the secret, list
deliveries and failures, replay one delivery or a range of events (rules and delivery in models/webhooks.py).

A secret is shown twice only: in the answer that registers the endpoint and in the one that rotates it."""
from __future__ import annotations

import logging

from marshmallow import Schema, ValidationError, fields, validate, validates_schema
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from models.audit import audit
from models.menu_schemas import Int
from models.outbox import EVENT_TYPES, OutboxEvent
from models.webhooks import (
    DELIVERY_STATUSES,
    MAX_REPLAY,
    UrlRefused,
    WebhookDelivery,
    WebhookEndpoint,
    check_url,
    clear_backoff,
    new_secret,
    replay_one,
    replay_range,
    valid_secret,
)
from worker.handoff import request_webhook_delivery

from .auth import current_user_id, role_required
from .deps import db, redis, settings
from .docs import error
from .errors import ApiError
from .json_body import Blueprint
from .schemas import PageOut

log = logging.getLogger(__name__)

blp = Blueprint("webhooks", __name__, url_prefix="/admin/webhooks",
                description="Webhook endpoints of the platform and their deliveries (admin role)")

MAX_SEQ = 2**62  # within a BIGINT


def _secret_format(value: str) -> None:
    if not valid_secret(value):
        raise ValidationError("Must be whsec_ followed by the base64 of a 24 to 64 byte key.")


class EndpointIn(Schema):
    url = fields.String(required=True, validate=validate.Length(min=1, max=2000),
                        metadata={"description": "http(s); its host must resolve to public addresses only, unless "
                                                 "WEBHOOK_ALLOWED_NETWORKS allows them"})
    event_types = fields.List(fields.String(validate=validate.OneOf(EVENT_TYPES)), load_default=list,
                              validate=validate.Length(max=len(EVENT_TYPES)),
                              metadata={"description": "the types to send; empty: every type"})
    description = fields.String(allow_none=True, validate=validate.Length(max=200))
    secret = fields.String(validate=_secret_format, metadata={
        "description": "whsec_ + base64 of a 24 to 64 byte signing key; generated if omitted"})


class EndpointOut(Schema):
    id = fields.UUID()
    url = fields.String()
    event_types = fields.List(fields.String())
    description = fields.String(allow_none=True)
    is_active = fields.Boolean()
    created_at = fields.DateTime()
    created_by = fields.UUID(allow_none=True)
    pending = fields.Integer(metadata={"description": "deliveries waiting for an attempt or a retry"})
    dead = fields.Integer(metadata={"description": "deliveries given up after the retry period (replay them)"})


class EndpointWithSecretOut(EndpointOut):
    secret = fields.String(metadata={"description": "the signing secret: shown now and never again"})


class EndpointListOut(Schema):
    endpoints = fields.List(fields.Nested(EndpointOut))


class DeliveryQuery(Schema):
    status = fields.String(validate=validate.OneOf(DELIVERY_STATUSES))
    limit = fields.Integer(load_default=50, validate=validate.Range(min=1, max=500))
    offset = fields.Integer(load_default=0, validate=validate.Range(min=0, max=10_000_000))


class DeliveryOut(Schema):
    id = fields.Integer()
    event_id = fields.Integer(metadata={"description": "the event's id (its `webhook-id`)"})
    event_type = fields.String()
    status = fields.String()
    attempts = fields.Integer()
    last_attempt_at = fields.DateTime(allow_none=True)
    last_status_code = fields.Integer(allow_none=True)
    last_error = fields.String(allow_none=True, metadata={
        "description": "timeout, connection_error, refused_address, invalid_url or http_<status>"})
    next_attempt_at = fields.DateTime(allow_none=True)
    delivered_at = fields.DateTime(allow_none=True)
    created_at = fields.DateTime(metadata={"description": "when it was queued (or replayed): its retry period "
                                                          "runs from here"})


class DeliveryListOut(PageOut):
    deliveries = fields.List(fields.Nested(DeliveryOut))


class ReplayIn(Schema):
    delivery_id = Int(validate=validate.Range(min=1, max=MAX_SEQ))
    from_seq = Int(validate=validate.Range(min=1, max=MAX_SEQ))
    to_seq = Int(validate=validate.Range(min=1, max=MAX_SEQ))

    @validates_schema
    def _one_form(self, data, **_kwargs):
        if "delivery_id" in data:
            if "from_seq" in data or "to_seq" in data:
                raise ValidationError("Send either delivery_id or from_seq and to_seq.", "delivery_id")
            return
        if "from_seq" not in data or "to_seq" not in data:
            raise ValidationError("Send either delivery_id or from_seq and to_seq.", "from_seq")
        if data["from_seq"] > data["to_seq"]:
            raise ValidationError("Must not be after to_seq.", "from_seq")
        if data["to_seq"] - data["from_seq"] >= MAX_REPLAY:
            raise ValidationError(f"A range is at most {MAX_REPLAY} events.", "to_seq")


class ReplayOut(Schema):
    queued = fields.Integer(metadata={"description": "deliveries made pending, due now"})


ENDPOINT_ID = "6a1f0c2e-9b8d-4e7f-a1b2-c3d4e5f60718"
ENDPOINT_EXAMPLE = {"id": ENDPOINT_ID, "url": "https://platform.example.com/hooks/perfmenu",
                    "event_types": ["purchase.completed", "purchase.queued"], "description": "notifications",
                    "is_active": True, "created_at": "2026-11-26T08:00:00+00:00",
                    "created_by": "0b9c8d7e-6f5a-4b3c-9d2e-1f0a9b8c7d6e", "pending": 0, "dead": 0}
SECRET_EXAMPLE = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
DELIVERY_EXAMPLE = {"id": 812, "event_id": 4711, "event_type": "purchase.completed", "status": "dead",
                    "attempts": 14, "last_attempt_at": "2026-11-27T08:00:03+00:00", "last_status_code": 503,
                    "last_error": "http_503", "next_attempt_at": None, "delivered_at": None,
                    "created_at": "2026-11-26T08:00:01+00:00"}


def _endpoint(session, endpoint_id, lock: bool = False) -> WebhookEndpoint:
    endpoint = session.get(WebhookEndpoint, endpoint_id, with_for_update=lock)
    if endpoint is None:
        raise ApiError(404, "not_found", "No such webhook endpoint")
    return endpoint


def _counts(session, endpoint_ids) -> dict:
    """{(endpoint id, status): deliveries} for pending and dead."""
    rows = session.execute(
        select(WebhookDelivery.endpoint_id, WebhookDelivery.status, func.count())
        .where(WebhookDelivery.endpoint_id.in_(endpoint_ids), WebhookDelivery.status.in_(("pending", "dead")))
        .group_by(WebhookDelivery.endpoint_id, WebhookDelivery.status)
    )
    return {(endpoint_id, status): n for endpoint_id, status, n in rows}


def _views(session, endpoints, secret: bool = False) -> list[dict]:
    counts = _counts(session, [e.id for e in endpoints]) if endpoints else {}
    views = []
    for e in endpoints:
        view = {"id": e.id, "url": e.url, "event_types": e.event_types or [], "description": e.description,
                "is_active": e.is_active, "created_at": e.created_at, "created_by": e.created_by,
                "pending": counts.get((e.id, "pending"), 0), "dead": counts.get((e.id, "dead"), 0)}
        if secret:
            view["secret"] = e.secret
        views.append(view)
    return views


def _request_run(endpoint_id) -> None:
    """After a commit that made deliveries due: try the endpoint now, even if it was backing off."""
    try:
        clear_backoff(redis(), endpoint_id)
    except Exception:
        log.exception("webhook backoff not cleared")  # it ends on its own; the deliveries are due anyway
    request_webhook_delivery(endpoint_id)


@blp.route("", methods=["POST"])
@role_required("admin")
@blp.arguments(EndpointIn, example={"url": "https://platform.example.com/hooks/perfmenu",
                                    "event_types": ["purchase.completed", "purchase.queued"],
                                    "description": "notifications"})
@blp.response(201, EndpointWithSecretOut, example={**ENDPOINT_EXAMPLE, "secret": SECRET_EXAMPLE})
@error(422, description="webhook_url_refused: not http(s), the host does not resolve, or it resolves to a "
                        "private, loopback, link-local, multicast or reserved address; invalid_request")
def create_endpoint(body):
    """Register an endpoint: from the next event on, each event of its types (every type if none are given) is
    POSTed to `url`, signed with the Standard Webhooks scheme (`webhook-id` = the event's id, `webhook-timestamp`,
    `webhook-signature` = v1 HMAC-SHA256 with the secret). The answer shows the secret, once. Audited."""
    try:
        check_url(body["url"], settings().webhook_allowed_networks)
    except UrlRefused as exc:
        raise ApiError(422, "webhook_url_refused", str(exc), fields={"url": [str(exc)]}) from None
    session = db()
    event_types = sorted(set(body["event_types"]))
    endpoint = WebhookEndpoint(url=body["url"], event_types=event_types, description=body.get("description"),
                               secret=body.get("secret") or new_secret(), is_active=True,
                               created_by=current_user_id())
    session.add(endpoint)
    session.flush()
    audit(session, "webhook.created", endpoint.id, current_user_id(), url=endpoint.url, event_types=event_types)
    session.commit()
    return _views(session, [endpoint], secret=True)[0]


@blp.route("", methods=["GET"])
@role_required("admin")
@blp.response(200, EndpointListOut, example={"endpoints": [ENDPOINT_EXAMPLE]})
def list_endpoints():
    """Every endpoint, oldest first, with how many deliveries are pending and dead (no secrets)."""
    session = db()
    endpoints = list(session.scalars(select(WebhookEndpoint).order_by(WebhookEndpoint.created_at,
                                                                      WebhookEndpoint.id)))
    return {"endpoints": _views(session, endpoints)}


@blp.route("/<uuid:endpoint_id>", methods=["GET"])
@role_required("admin")
@blp.response(200, EndpointOut, example=ENDPOINT_EXAMPLE)
@error(404, description="not_found: no such endpoint")
def get_endpoint(endpoint_id):
    """One endpoint (no secret)."""
    session = db()
    return _views(session, [_endpoint(session, endpoint_id)])[0]


def _set_active(endpoint_id, active: bool) -> dict:
    session = db()
    endpoint = _endpoint(session, endpoint_id, lock=True)
    changed = endpoint.is_active != active
    if changed:
        endpoint.is_active = active
        audit(session, "webhook.enabled" if active else "webhook.disabled", endpoint.id, current_user_id())
    session.commit()
    if changed and active:
        _request_run(endpoint.id)  # what waited while it was off
    return _views(session, [endpoint])[0]


@blp.route("/<uuid:endpoint_id>/disable", methods=["POST"])
@role_required("admin")
@blp.response(200, EndpointOut, example={**ENDPOINT_EXAMPLE, "is_active": False})
@error(404, description="not_found: no such endpoint")
def disable_endpoint(endpoint_id):
    """Stop sending to the endpoint: no delivery is made for events from now on, and its pending deliveries wait
    (until enabled, or dead after the retry period; a range replay sends what it missed). Audited."""
    return _set_active(endpoint_id, False)


@blp.route("/<uuid:endpoint_id>/enable", methods=["POST"])
@role_required("admin")
@blp.response(200, EndpointOut, example=ENDPOINT_EXAMPLE)
@error(404, description="not_found: no such endpoint")
def enable_endpoint(endpoint_id):
    """Send to the endpoint again: its pending deliveries are tried now, and new events get deliveries. Audited."""
    return _set_active(endpoint_id, True)


@blp.route("/<uuid:endpoint_id>/rotate-secret", methods=["POST"])
@role_required("admin")
@blp.response(200, EndpointWithSecretOut, example={**ENDPOINT_EXAMPLE, "secret": SECRET_EXAMPLE})
@error(404, description="not_found: no such endpoint")
def rotate_secret(endpoint_id):
    """A new signing secret, shown in this answer only; every attempt from now on is signed with it (retries and
    replays of older events too). Audited."""
    session = db()
    endpoint = _endpoint(session, endpoint_id, lock=True)
    endpoint.secret = new_secret()
    audit(session, "webhook.secret_rotated", endpoint.id, current_user_id())
    session.commit()
    return _views(session, [endpoint], secret=True)[0]


@blp.route("/<uuid:endpoint_id>/deliveries", methods=["GET"])
@role_required("admin")
@blp.arguments(DeliveryQuery, location="query")
@blp.response(200, DeliveryListOut, example={"deliveries": [DELIVERY_EXAMPLE], "total": 1, "limit": 50,
                                             "offset": 0})
@error(404, description="not_found: no such endpoint")
def list_deliveries(query, endpoint_id):
    """The endpoint's deliveries, newest event first, optionally of one status (`dead`: the failures to look
    at and replay): attempts, the last answer's status code or error, the next attempt."""
    session = db()
    _endpoint(session, endpoint_id)
    where = [WebhookDelivery.endpoint_id == endpoint_id]
    if "status" in query:
        where.append(WebhookDelivery.status == query["status"])
    total = session.scalar(select(func.count()).select_from(WebhookDelivery).where(*where))
    rows = session.execute(
        select(WebhookDelivery, OutboxEvent.type).join(OutboxEvent, OutboxEvent.id == WebhookDelivery.event_id)
        .where(*where).order_by(WebhookDelivery.event_seq.desc(), WebhookDelivery.id.desc())
        .limit(query["limit"]).offset(query["offset"])
    )
    deliveries = [{"id": d.id, "event_id": d.event_seq, "event_type": event_type, "status": d.status,
                   "attempts": d.attempts, "last_attempt_at": d.last_attempt_at,
                   "last_status_code": d.last_status_code, "last_error": d.last_error,
                   "next_attempt_at": d.next_attempt_at, "delivered_at": d.delivered_at,
                   "created_at": d.created_at} for d, event_type in rows]
    return {"deliveries": deliveries, "total": total, "limit": query["limit"], "offset": query["offset"]}


@blp.route("/<uuid:endpoint_id>/replay", methods=["POST"])
@role_required("admin")
@blp.arguments(ReplayIn, example={"from_seq": 4700, "to_seq": 4711})
@blp.response(200, ReplayOut, example={"queued": 12})
@error(404, description="not_found: no such endpoint or delivery")
@error(409, description="conflict: a replay of the same events at the same moment; try again")
def replay(body, endpoint_id):
    """Send again one delivery (`delivery_id`) or the events `from_seq`..`to_seq` (inclusive, at most 10,000):
    each becomes pending and due now, its attempts kept and its retry period restarted; an event of the range
    the endpoint has no delivery for (registered later, disabled then, or another type wanted then) gets one if
    the endpoint wants its type now. The receiver sees the same `webhook-id` again and can deduplicate. A
    disabled endpoint's replayed deliveries wait until it is enabled. Audited."""
    session = db()
    endpoint = _endpoint(session, endpoint_id)
    try:
        if "delivery_id" in body:
            queued = replay_one(session, endpoint.id, body["delivery_id"])
            if not queued:
                raise ApiError(404, "not_found", "No such delivery of this endpoint")
        else:
            queued = replay_range(session, endpoint, body["from_seq"], body["to_seq"])
        audit(session, "webhook.replayed", endpoint.id, current_user_id(), queued=queued, **body)
        session.commit()
    except IntegrityError:
        session.rollback()
        raise ApiError(409, "conflict", "The same events were replayed at the same moment; try again") from None
    if queued and endpoint.is_active:
        _request_run(endpoint.id)
    return {"queued": queued}
