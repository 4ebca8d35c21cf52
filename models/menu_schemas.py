"""What a menu may contain, as a model writes it through the API or a platform's template file sets it: the
marshmallow schemas the API and the template loader (seed/loader.py) both validate with."""
from __future__ import annotations

import re

from marshmallow import Schema, fields, pre_load, validate

from .lovense import DEVICE_TYPES, PATTERNS
from .menus import CARD_STYLES, MAX_ITEMS_PER_MENU, QUEUE_MODES, QUEUE_ORDERS, VISIBILITIES


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
    # Under 2 s is accepted and played as 2 s (Lovense's shortest timed command; lovense_api.time_sec).
    duration_ms = Int(required=True, validate=validate.Range(min=1, max=3_600_000))
    timing_offset = Int(load_default=0, validate=validate.Range(min=0, max=3_600_000))
    pattern = fields.String(load_default="steady", validate=validate.OneOf(PATTERNS))
    # pattern `custom` only: the strength steps (0..20) the toy loops, one every interval_ms (Lovense's Pattern).
    strengths = fields.List(Int(validate=validate.Range(min=0, max=20)), validate=validate.Length(min=1, max=50))
    interval_ms = Int(validate=validate.Range(min=100, max=10_000))


_WEB_URL = validate.URL(schemes={"http", "https"}, require_tld=False)
_ICON_PATH = re.compile(r"^/(?!/)[A-Za-z0-9._~%!$&'()*+,;=:@/-]*$")  # a path on the platform's own host


def _icon_url(value: str) -> None:
    if _ICON_PATH.match(value) and "/../" not in value + "/":
        return
    _WEB_URL(value)


class MenuItemIn(Schema):
    """An item as a model writes it (POST, PATCH with every field optional, and the template format)."""

    name = fields.String(required=True, validate=validate.Length(min=1, max=65))
    description = fields.String(allow_none=True, validate=validate.Length(max=200))
    token_value = Int(required=True, validate=validate.Range(min=1, max=99999))
    bonus_loyalty_points = Int(load_default=0, validate=validate.Range(min=0, max=999_999))
    category = fields.String(allow_none=True, validate=validate.Length(max=40))
    icon_url = fields.String(allow_none=True, validate=[validate.Length(max=500), _icon_url],
                             metadata={"description": "an http(s) URL or a path on the platform's host, like "
                                                      "/icons/kiss.png"})
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
    live_only = fields.Boolean(load_default=False, metadata={
        "description": "shown to fans and sold only while the model is live (a show is on)"})
    display_order = Int(validate=validate.Range(min=0, max=10_000))


class MenuIn(MenuFieldsIn):
    """A new menu, optionally with its items; also one entry of a template file's `menuTemplates`. The seed's
    name for the items, `menu_items`, is read as `items`."""

    @pre_load
    def _seed_names(self, data, **_kwargs):
        if isinstance(data, dict) and "menu_items" in data and "items" not in data:
            data = {**data, "items": data["menu_items"]}
            del data["menu_items"]
        return data

    items = fields.List(fields.Nested(MenuItemIn), load_default=list,
                        validate=validate.Length(max=MAX_ITEMS_PER_MENU))


class MenuTemplatesFile(Schema):
    """The platform's template format: {"menuTemplates": [menu, ...], "metadata": {...}} (the metadata, e.g. the
    export's version and date, is read and not stored)."""

    menuTemplates = fields.List(fields.Nested(MenuIn), required=True, validate=validate.Length(min=1))
    metadata = fields.Dict()
