"""Marshmallow schemas of the API's bodies (they also generate the OpenAPI document)."""
from __future__ import annotations

from marshmallow import EXCLUDE, INCLUDE, Schema, fields, validate

from models.menus import (
    CARD_STYLES,
    DEVICE_TYPES,
    MAX_ITEMS_PER_MENU,
    PATTERNS,
    QUEUE_MODES,
    QUEUE_ORDERS,
    VISIBILITIES,
)


class Int(fields.Integer):
    """An integer that must be sent as a JSON integer (not a string, a float or a boolean)."""

    def __init__(self, **kwargs):
        super().__init__(strict=True, **kwargs)

    def _validated(self, value):
        if isinstance(value, bool):
            raise self.make_error("invalid")
        return super()._validated(value)


HEX_COLOUR = validate.Regexp(r"^#(?:[0-9A-Fa-f]{3}|[0-9A-Fa-f]{6})$", error="Not a hex colour like #FF6B9D.")


class ThemeSchema(Schema):
    primary_color = fields.String(validate=HEX_COLOUR)
    secondary_color = fields.String(validate=HEX_COLOUR)
    card_style = fields.String(validate=validate.OneOf(CARD_STYLES))


class LovenseActivationSchema(Schema):
    enabled = fields.Boolean(load_default=True)
    device_type = fields.String(required=True, validate=validate.OneOf(DEVICE_TYPES))
    intensity = Int(required=True, validate=validate.Range(min=1, max=20))
    duration_ms = Int(required=True, validate=validate.Range(min=1, max=3_600_000))
    timing_offset = Int(load_default=0, validate=validate.Range(min=0, max=3_600_000))
    pattern = fields.String(load_default="steady", validate=validate.OneOf(PATTERNS))


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


class MenuItemIn(Schema):
    """An item as a model writes it (POST, PATCH with every field optional, and the template format)."""

    name = fields.String(required=True, validate=validate.Length(min=1, max=65))
    description = fields.String(allow_none=True, validate=validate.Length(max=200))
    token_value = Int(required=True, validate=validate.Range(min=1, max=99999))
    bonus_loyalty_points = Int(load_default=0, validate=validate.Range(min=0, max=999_999))
    category = fields.String(allow_none=True, validate=validate.Length(max=40))
    icon_url = fields.String(
        allow_none=True,
        validate=[validate.Length(max=500), validate.URL(schemes={"http", "https"}, require_tld=False)],
    )
    display_order = Int(validate=validate.Range(min=0, max=10_000))
    is_active = fields.Boolean(load_default=True)
    max_daily_purchases = Int(allow_none=True, validate=validate.Range(min=1, max=10_000))
    estimated_duration_minutes = Int(load_default=5, validate=validate.Range(min=0, max=10_080))
    delivery_hours = Int(allow_none=True, validate=validate.Range(min=1, max=2_160))
    lovense_activation = fields.Nested(LovenseActivationSchema, allow_none=True)


class MenuFieldsIn(Schema):
    """A menu's own fields as a model writes them (PATCH sends any of them)."""

    name = fields.String(required=True, validate=validate.Length(min=1, max=65))
    description = fields.String(allow_none=True, validate=validate.Length(max=200))
    queue_mode = fields.String(load_default="OFF", validate=validate.OneOf(QUEUE_MODES))
    visibility = fields.String(load_default="public", validate=validate.OneOf(VISIBILITIES))
    queue_order = fields.String(load_default="priority", validate=validate.OneOf(QUEUE_ORDERS))
    theme = fields.Nested(ThemeSchema, allow_none=True)
    delivery_hours_default = Int(validate=validate.Range(min=1, max=2_160))
    is_active = fields.Boolean(load_default=True)
    display_order = Int(validate=validate.Range(min=0, max=10_000))


class MenuIn(MenuFieldsIn):
    """A new menu, optionally with its items; also one entry of a template file's `menuTemplates`."""

    items = fields.List(fields.Nested(MenuItemIn), load_default=list,
                        validate=validate.Length(max=MAX_ITEMS_PER_MENU))


class MenuTemplatesFile(Schema):
    """The platform's template format: {"menuTemplates": [menu, ...]}."""

    menuTemplates = fields.List(fields.Nested(MenuIn), required=True, validate=validate.Length(min=1))


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
