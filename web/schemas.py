"""Marshmallow schemas of the API's bodies (they also generate the OpenAPI document). What a model may write
into a menu is in models/menu_schemas.py, shared with the template loader."""
from __future__ import annotations

import json

from marshmallow import EXCLUDE, INCLUDE, Schema, ValidationError, fields, validate, validates_schema

from models.menu_schemas import LovenseActivationSchema, ThemeSchema
from models.menus import MAX_ITEMS_PER_MENU
from models.purchases import NOTE_MAX


class MenuItemOut(Schema):
    """An item, under our names and the seed API's (`_id`, `created_by`, `createdAt`, `updatedAt`)."""

    _id = fields.UUID(attribute="id", dump_only=True)
    id = fields.UUID()
    menu_id = fields.UUID()
    name = fields.String()
    description = fields.String(allow_none=True)
    token_value = fields.Integer()
    bonus_loyalty_points = fields.Integer()
    category = fields.String(allow_none=True)
    icon_url = fields.String(allow_none=True)
    display_order = fields.Integer()
    is_active = fields.Boolean()
    max_daily_purchases = fields.Integer(allow_none=True)
    estimated_duration_minutes = fields.Integer()
    delivery_hours = fields.Integer(allow_none=True)
    lovense_activation = fields.Nested(LovenseActivationSchema, allow_none=True)
    created_by = fields.UUID(attribute="menu.model_id", dump_only=True,
                             metadata={"description": "the model the item belongs to"})
    lovense_status = fields.String(dump_only=True, allow_none=True, metadata={
        "description": "for an item with a toy activation: `ready`, or why the toy will not buzz if bought now "
                       "(`unpaired`, `not_configured`, `disabled`); null for other items"})
    createdAt = fields.DateTime(attribute="created_at", dump_only=True)
    updatedAt = fields.DateTime(attribute="updated_at", dump_only=True)


class MenuOut(Schema):
    """A menu, under our names and the seed API's (`_id`, `menu_items`, `whitelist_users`, `createdAt`...)."""

    _id = fields.UUID(attribute="id", dump_only=True)
    id = fields.UUID()
    model_id = fields.UUID()
    name = fields.String()
    description = fields.String(allow_none=True)
    queue_mode = fields.String()
    visibility = fields.String()
    queue_order = fields.String()
    theme = fields.Nested(ThemeSchema, allow_none=True)
    delivery_hours_default = fields.Integer()
    is_active = fields.Boolean()
    live_only = fields.Boolean(metadata={"description": "shown to fans and sold only while the model is live"})
    display_order = fields.Integer()
    items = fields.List(fields.Nested(MenuItemOut))
    menu_items = fields.List(fields.Nested(MenuItemOut), attribute="items", dump_only=True)
    whitelist_users = fields.List(fields.UUID(), metadata={
        "description": "fans invited to a private menu (shown to its model and admins; empty for others)"})
    createdAt = fields.DateTime(attribute="created_at", dump_only=True)
    updatedAt = fields.DateTime(attribute="updated_at", dump_only=True)


class ItemOrderIn(Schema):
    item_ids = fields.List(fields.UUID(), required=True, validate=validate.Length(max=MAX_ITEMS_PER_MENU))


class WhitelistOut(Schema):
    menu_id = fields.UUID()
    fan_ids = fields.List(fields.UUID())


MAX_METADATA_BYTES = 2048  # a purchase's `metadata`, as compact JSON


def _small_json(value) -> None:
    if len(json.dumps(value, separators=(",", ":"))) > MAX_METADATA_BYTES:
        raise ValidationError(f"At most {MAX_METADATA_BYTES} bytes of JSON.")


def _plain_text(value: str) -> None:
    """Line breaks and tabs, but no other control characters (they hide text on a page or an overlay)."""
    if any(ord(c) < 32 and c not in "\n\t" or 0x7f <= ord(c) < 0xa0 for c in value):
        raise ValidationError("Plain text only: no control characters.")


class PurchaseRequest(Schema):
    """The seed API's body: {menu_id, menu_item_id, idempotency_key, metadata}. Ids are strings here, so an id
    that names nothing we know (a platform's 24-hex ObjectId) is a plain 404, not a validation message."""

    class Meta:
        # Seed clients send extra fields (a price, an amount...): they are ignored, never trusted.
        unknown = EXCLUDE

    menu_id = fields.String(required=True, validate=validate.Length(min=1, max=64))
    menu_item_id = fields.String(validate=validate.Length(min=1, max=64), metadata={"description": "the item"})
    item_id = fields.String(validate=validate.Length(min=1, max=64),
                            metadata={"description": "the item (perfmenu's earlier name; menu_item_id wins)"})
    idempotency_key = fields.String(validate=validate.Length(min=1, max=128), allow_none=True)
    metadata = fields.Dict(keys=fields.String(), allow_none=True, validate=_small_json,
                           metadata={"description": f"the client's own JSON object, kept with the purchase "
                                                    f"(at most {MAX_METADATA_BYTES} bytes)"})

    note = fields.String(allow_none=True, validate=[validate.Length(max=NOTE_MAX), _plain_text], metadata={
        "description": f"for the model (what a custom photo should show): plain text, at most {NOTE_MAX} "
                       "characters, shown escaped"})
    anonymous = fields.Boolean(load_default=False, metadata={
        "description": "hide the buyer from the overlay, other fans and the model (admins and the ledger still "
                       "know)"})

    @validates_schema
    def _one_item(self, data, **_kwargs):
        given = {data[k] for k in ("menu_item_id", "item_id") if data.get(k) is not None}
        if len(given) != 1:
            raise ValidationError("Send the item's id as menu_item_id.", "menu_item_id")


class ToySlotOut(Schema):
    """A purchase's toy buzz and its place on the model's timeline (docs/architecture.md, "Lovense")."""

    status = fields.String(metadata={"description": "pending (waiting), playing, sent (played), failed, skipped, "
                                                    "stopped, expired or unconfirmed (sent, no answer: it may have "
                                                    "played)"})
    position = fields.Integer(allow_none=True, metadata={"description": "0: playing now; n: n slots ahead"})
    starts_at = fields.DateTime(allow_none=True)
    ends_at = fields.DateTime(allow_none=True)
    reason = fields.String(allow_none=True, metadata={"description": "why it failed, was skipped, stopped, "
                                                                     "expired or is unconfirmed"})


class PurchaseOut(Schema):
    """A purchase: the seed API's answer and record fields (`_id`, `user_id`, `menu_item_id`, `createdAt`...)
    beside ours."""

    success = fields.Boolean()
    _id = fields.UUID(attribute="purchase_id", dump_only=True)
    purchase_id = fields.UUID()
    transaction_type = fields.String()
    status = fields.String()
    token_value = fields.Integer()
    loyalty_points_awarded = fields.Integer()
    queue_position = fields.Integer(allow_none=True)
    estimated_wait_minutes = fields.Integer(allow_none=True)
    item_name = fields.String()
    menu_id = fields.UUID()
    item_id = fields.UUID()
    model_id = fields.UUID()
    fan_id = fields.UUID()
    user_id = fields.UUID(attribute="fan_id", dump_only=True)
    menu_item_id = fields.UUID(attribute="item_id", dump_only=True)
    failure_reason = fields.String(allow_none=True)
    refund_reason = fields.String(allow_none=True)
    idempotency_key = fields.String(allow_none=True)
    metadata = fields.Dict(allow_none=True)
    note = fields.String(allow_none=True)
    anonymous = fields.Boolean()
    show_id = fields.UUID(allow_none=True, metadata={"description": "the show it was bought in, if any"})
    created_at = fields.DateTime()
    createdAt = fields.DateTime(attribute="created_at", dump_only=True)
    updatedAt = fields.DateTime(attribute="updated_at", dump_only=True)
    settled_at = fields.DateTime(allow_none=True)
    started_at = fields.DateTime(allow_none=True)
    completed_at = fields.DateTime(allow_none=True)
    failed_at = fields.DateTime(allow_none=True)
    refunded_at = fields.DateTime(allow_none=True)
    escrow_deadline = fields.DateTime(allow_none=True)
    toy = fields.Nested(ToySlotOut, allow_none=True)
    status_url = fields.String()


def plain_dumper(schema_class):
    """`schema_class().dump` for a dict of plain values, compiled once from the schema's own fields: the purchase
    answer is on intake's hot path, where marshmallow's generic dump was a tenth of the request's CPU. A field
    type it does not know fails here, at import, so the schema stays the one definition of the answer
    (tests/unit/test_plain_dump.py holds the two dumps equal)."""
    plan = []
    for name, field in schema_class().dump_fields.items():
        if isinstance(field, fields.Nested):
            convert = plain_dumper(type(field.schema))
        else:
            convert = next((c for kind, c in _PLAIN if isinstance(field, kind)), None)
            if convert is None:
                raise TypeError(f"plain_dumper: no conversion for {type(field).__name__} ({name})")
        plan.append((field.data_key or name, field.attribute or name, convert))

    def dump(values: dict) -> dict:
        return {key: None if (v := values[attr]) is None else convert(v)
                for key, attr, convert in plan if attr in values}

    return dump


# Field type -> conversion of a non-null value, as marshmallow serializes it (the order matters: subclasses first).
_PLAIN = ((fields.UUID, str), (fields.DateTime, lambda v: v.isoformat()), (fields.Boolean, bool),
          (fields.Integer, int), (fields.String, str), (fields.Dict, lambda v: v))


class HistoryQuery(Schema):
    limit = fields.Integer(load_default=50, validate=validate.Range(min=1))
    offset = fields.Integer(load_default=0, validate=validate.Range(min=0, max=10_000_000))


class PageOut(Schema):
    """One page of a list: `total` rows match, this page starts at `offset` and holds at most `limit`."""
    total = fields.Integer()
    limit = fields.Integer()
    offset = fields.Integer()


class HistoryOut(PageOut):
    purchases = fields.List(fields.Nested(PurchaseOut))


class WalletOut(Schema):
    user_id = fields.UUID()
    role = fields.String()
    token_balance = fields.Integer(allow_none=True)
    loyalty_points = fields.Integer(allow_none=True)
    earnings_balance = fields.Integer(allow_none=True)
    escrow_balance = fields.Integer(allow_none=True)


class ErrorBody(Schema):
    code = fields.String(required=True)
    message = fields.String(required=True)


class ErrorOut(Schema):
    """The envelope of every error (also what the OpenAPI document declares for 4xx and `default`).
    A refused purchase carries the purchase's fields next to `error`, hence INCLUDE."""

    class Meta:
        unknown = INCLUDE

    error = fields.Nested(ErrorBody, required=True)
    field_errors = fields.Dict(data_key="fields", metadata={"description": "Invalid fields and their messages"})


dump_purchase = plain_dumper(PurchaseOut)
