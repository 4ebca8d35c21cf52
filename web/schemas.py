"""Marshmallow schemas of the API's bodies (they also generate the OpenAPI document). What a model may write
into a menu is in models/menu_schemas.py, shared with the template loader."""
from __future__ import annotations

from marshmallow import EXCLUDE, INCLUDE, Schema, fields, validate

from models.menu_schemas import LovenseActivationSchema, ThemeSchema
from models.menus import MAX_ITEMS_PER_MENU


class MenuItemOut(Schema):
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


class MenuOut(Schema):
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
    display_order = fields.Integer()
    items = fields.List(fields.Nested(MenuItemOut))


class ModelMenusOut(Schema):
    model_id = fields.UUID()
    menus = fields.List(fields.Nested(MenuOut))


class ItemOrderIn(Schema):
    item_ids = fields.List(fields.UUID(), required=True, validate=validate.Length(max=MAX_ITEMS_PER_MENU))


class WhitelistOut(Schema):
    menu_id = fields.UUID()
    fan_ids = fields.List(fields.UUID())


class PurchaseRequest(Schema):
    class Meta:
        # Seed clients send extra fields (a price, an amount...): they are ignored, never trusted.
        unknown = EXCLUDE

    menu_id = fields.UUID(required=True)
    item_id = fields.UUID(required=True)
    idempotency_key = fields.String(validate=validate.Length(min=1, max=128), allow_none=True)


class PurchaseOut(Schema):
    success = fields.Boolean()
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
    failure_reason = fields.String(allow_none=True)
    refund_reason = fields.String(allow_none=True)
    created_at = fields.DateTime()
    settled_at = fields.DateTime(allow_none=True)
    started_at = fields.DateTime(allow_none=True)
    completed_at = fields.DateTime(allow_none=True)
    refunded_at = fields.DateTime(allow_none=True)
    escrow_deadline = fields.DateTime(allow_none=True)
    status_url = fields.String()


class HistoryQuery(Schema):
    limit = fields.Integer(load_default=20, validate=validate.Range(min=1))
    offset = fields.Integer(load_default=0, validate=validate.Range(min=0, max=10_000_000))


class HistoryOut(Schema):
    purchases = fields.List(fields.Nested(PurchaseOut))
    total = fields.Integer()
    limit = fields.Integer()
    offset = fields.Integer()


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
