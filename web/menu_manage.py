"""Models manage their own menus: create, edit, switch on/off, duplicate; items; order; a private menu's whitelist.

Only the menu's model may do this. A menu of another model answers 404 (as if it did not exist), a fan or an
admin 403 (role). Prices are the model's to set; purchases already made keep their own snapshot of the item.
"""
from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import selectinload

from models.audit import audit
from models.outbox import MENU_CHANGED, emit
from models.menu_schemas import MenuFieldsIn, MenuIn, MenuItemIn
from models.menus import LimitReached, Menu, MenuItem, MenuWhitelist, add_item, create_menu, duplicate_menu
from models.users import User

from .auth import current_user_id, role_required
from .deps import db
from .docs import error
from .errors import ApiError
from .json_body import Blueprint
from .menus import MENU_EXAMPLE, mark_toy_status, menu_view
from .schemas import ItemOrderIn, MenuItemOut, MenuOut, WhitelistOut

blp = Blueprint("menu_manage", __name__, url_prefix="/menu", description="A model's management of their own menus")



class MenuPatchIn(MenuFieldsIn):
    """Any of a menu's fields."""


class MenuItemPatchIn(MenuItemIn):
    """Any of an item's fields."""


# Partial at the top level only: a lovense_activation sent in a PATCH is still checked whole.
MenuPatch = MenuPatchIn(partial=tuple(MenuFieldsIn._declared_fields))
ItemPatch = MenuItemPatchIn(partial=tuple(MenuItemIn._declared_fields))
ITEM_EXAMPLE = {**MENU_EXAMPLE["items"][0], "menu_id": MENU_EXAMPLE["id"], "description": "30 seconds",
                "display_order": 0, "max_daily_purchases": None, "estimated_duration_minutes": 1,
                "lovense_activation": None}
ITEM_IN_EXAMPLE = {"name": "Dance", "token_value": 50, "bonus_loyalty_points": 30, "category": "performance"}
MENU_IN_EXAMPLE = {"name": "Quick Fun Menu", "queue_mode": "OFF", "visibility": "public",
                   "theme": {"primary_color": "#FF6B9D", "secondary_color": "#C44569", "card_style": "modern"},
                   "items": [ITEM_IN_EXAMPLE]}
WHITELIST_EXAMPLE = {"menu_id": MENU_EXAMPLE["id"], "fan_ids": ["3f1c2b9e-8d7a-4c55-9a41-0c7e2d6b1a90"]}
_NOT_OWNER = "404 not_found: no such menu or item, or not the caller's"
_INVALID = "invalid_request (fields named under `fields`), menu_limit_reached, item_limit_reached"


def own_menu(session, menu_id, lock: bool = False) -> Menu:
    """The caller's menu, or 404 (another model's menus are indistinguishable from missing ones)."""
    query = select(Menu).where(Menu.id == menu_id).options(selectinload(Menu.items))
    if lock:
        query = query.with_for_update()
    menu = session.scalar(query)
    if menu is None or menu.model_id != current_user_id():
        raise ApiError(404, "not_found", "No such menu")
    return menu


def own_item(session, menu_id, item_id) -> MenuItem:
    menu = own_menu(session, menu_id)
    item = session.get(MenuItem, item_id)
    if item is None or item.menu_id != menu.id:
        raise ApiError(404, "not_found", "No such item on this menu")
    return item


def limit_error(exc: LimitReached) -> ApiError:
    code = "menu_limit_reached" if exc.what.startswith("menus") else "item_limit_reached"
    return ApiError(422, code, f"At most {exc.limit} {exc.what}")


def _changed(session, action: str, model_id, menu_id, item_id=None, **data) -> None:
    """Audit a change of the model's menus and tell the event stream (one `menu.changed` event)."""
    audit(session, action, item_id or menu_id, current_user_id(), **data)
    emit(session, MENU_CHANGED, model_id=model_id, change=action, menu_id=menu_id, item_id=item_id)


def _commit_menu(session, menu: Menu, action: str) -> dict:
    _changed(session, action, menu.model_id, menu.id)
    session.commit()
    session.refresh(menu)
    return menu_view(session, menu, owner_view=True)


@blp.route("", methods=["POST"])
@role_required("model")
@blp.arguments(MenuIn, example=MENU_IN_EXAMPLE)
@blp.response(201, MenuOut, example=MENU_EXAMPLE)
@error(422, description=_INVALID)
def create(body):
    """Create a menu (with its items, if given). At most 8 menus per model and 50 items per menu."""
    session = db()
    items = body.pop("items")
    try:
        menu = create_menu(session, current_user_id(), body, items)
    except LimitReached as exc:
        raise limit_error(exc) from None
    return _commit_menu(session, menu, "menu.created")


@blp.route("/<uuid:menu_id>", methods=["PATCH"])
@role_required("model")
@blp.arguments(MenuPatch, example={"name": "Quick Fun Menu", "queue_mode": "ON"})
@blp.response(200, MenuOut, example=MENU_EXAMPLE)
@error(404, description=_NOT_OWNER)
@error(422, description=_INVALID)
def update(body, menu_id):
    """Change any of a menu's fields: name, description, queue mode, visibility, queue order, theme, delivery
    default, display order, on/off."""
    session = db()
    menu = own_menu(session, menu_id, lock=True)
    for name, value in body.items():
        setattr(menu, name, value)
    return _commit_menu(session, menu, "menu.updated")


def _switch_menu(menu_id, active: bool) -> dict:
    session = db()
    menu = own_menu(session, menu_id, lock=True)
    menu.is_active = active
    return _commit_menu(session, menu, "menu.activated" if active else "menu.deactivated")


@blp.route("/<uuid:menu_id>/activate", methods=["POST"])
@role_required("model")
@blp.response(200, MenuOut, example=MENU_EXAMPLE)
@error(404, description=_NOT_OWNER)
def activate(menu_id):
    """Switch a menu on: fans may see it (by its visibility) and buy from it."""
    return _switch_menu(menu_id, True)


@blp.route("/<uuid:menu_id>/deactivate", methods=["POST"])
@role_required("model")
@blp.response(200, MenuOut, example=MENU_EXAMPLE)
@error(404, description=_NOT_OWNER)
def deactivate(menu_id):
    """Switch a menu off: hidden from fans, nothing on it can be bought. Purchases already made go on."""
    return _switch_menu(menu_id, False)


@blp.route("/<uuid:menu_id>/duplicate", methods=["POST"])
@role_required("model")
@blp.response(201, MenuOut, example=MENU_EXAMPLE)
@error(404, description=_NOT_OWNER)
@error(422, description="menu_limit_reached")
def duplicate(menu_id):
    """Copy a menu with its items and whitelist. The copy starts switched off, named "<name> (copy)"."""
    session = db()
    menu = own_menu(session, menu_id)
    try:
        copy = duplicate_menu(session, menu, f"{menu.name[:58]} (copy)")
    except LimitReached as exc:
        raise limit_error(exc) from None
    return _commit_menu(session, copy, "menu.duplicated")


@blp.route("/<uuid:menu_id>/items", methods=["POST"])
@role_required("model")
@blp.arguments(MenuItemIn, example=ITEM_IN_EXAMPLE)
@blp.response(201, MenuItemOut, example=ITEM_EXAMPLE)
@error(404, description=_NOT_OWNER)
@error(422, description=_INVALID)
def create_item(body, menu_id):
    """Add an item (at the end unless `display_order` is given). At most 50 items per menu."""
    session = db()
    menu = own_menu(session, menu_id)
    try:
        item = add_item(session, menu, body)
    except LimitReached as exc:
        raise limit_error(exc) from None
    _changed(session, "menu_item.created", menu.model_id, menu.id, item.id)
    session.commit()
    mark_toy_status(session, [item], menu.model_id)
    return item


@blp.route("/<uuid:menu_id>/items/<uuid:item_id>", methods=["PATCH"])
@role_required("model")
@blp.arguments(ItemPatch, example={"token_value": 60, "max_daily_purchases": 5})
@blp.response(200, MenuItemOut, example=ITEM_EXAMPLE)
@error(404, description=_NOT_OWNER)
@error(422, description=_INVALID)
def update_item(body, menu_id, item_id):
    """Change any of an item's fields. A new price or points apply to later purchases only."""
    session = db()
    item = own_item(session, menu_id, item_id)
    for name, value in body.items():
        setattr(item, name, value)
    _changed(session, "menu_item.updated", item.menu.model_id, item.menu_id, item.id, fields=sorted(body))
    session.commit()
    mark_toy_status(session, [item], item.menu.model_id)
    return item


def _switch_item(menu_id, item_id, active: bool):
    session = db()
    item = own_item(session, menu_id, item_id)
    item.is_active = active
    _changed(session, "menu_item.activated" if active else "menu_item.deactivated", item.menu.model_id,
             item.menu_id, item.id)
    session.commit()
    mark_toy_status(session, [item], item.menu.model_id)
    return item


@blp.route("/<uuid:menu_id>/items/<uuid:item_id>/activate", methods=["POST"])
@role_required("model")
@blp.response(200, MenuItemOut, example=ITEM_EXAMPLE)
@error(404, description=_NOT_OWNER)
def activate_item(menu_id, item_id):
    """Switch an item on."""
    return _switch_item(menu_id, item_id, True)


@blp.route("/<uuid:menu_id>/items/<uuid:item_id>/deactivate", methods=["POST"])
@role_required("model")
@blp.response(200, MenuItemOut, example=ITEM_EXAMPLE)
@error(404, description=_NOT_OWNER)
def deactivate_item(menu_id, item_id):
    """Switch an item off: fans no longer see or buy it; purchases already made go on."""
    return _switch_item(menu_id, item_id, False)


@blp.route("/<uuid:menu_id>/items/order", methods=["PUT"])
@role_required("model")
@blp.arguments(ItemOrderIn, example={"item_ids": [ITEM_EXAMPLE["id"]]})
@blp.response(200, MenuOut, example=MENU_EXAMPLE)
@error(404, description=_NOT_OWNER)
@error(422, description="invalid_request: item_ids is not every item of the menu once")
def reorder_items(body, menu_id):
    """Set the order of a menu's items: `item_ids` lists every item of the menu (on or off) exactly once."""
    session = db()
    menu = own_menu(session, menu_id, lock=True)
    items = {i.id: i for i in menu.items}
    if len(body["item_ids"]) != len(items) or set(body["item_ids"]) != set(items):
        raise ApiError(422, "invalid_request", "item_ids must list every item of the menu exactly once",
                       fields={"item_ids": ["Must list every item of the menu exactly once."]})
    for order, item_id in enumerate(body["item_ids"]):
        items[item_id].display_order = order
    session.flush()
    session.expire(menu, ["items"])
    return _commit_menu(session, menu, "menu.items_reordered")


def _whitelist(session, menu: Menu) -> dict:
    fan_ids = session.scalars(
        select(MenuWhitelist.fan_id).where(MenuWhitelist.menu_id == menu.id).order_by(MenuWhitelist.created_at)
    ).all()
    return {"menu_id": menu.id, "fan_ids": fan_ids}


@blp.route("/<uuid:menu_id>/whitelist", methods=["GET"])
@role_required("model")
@blp.response(200, WhitelistOut, example=WHITELIST_EXAMPLE)
@error(404, description=_NOT_OWNER)
def get_whitelist(menu_id):
    """The fans invited to a private menu."""
    session = db()
    return _whitelist(session, own_menu(session, menu_id))


@blp.route("/<uuid:menu_id>/whitelist/<uuid:fan_id>", methods=["PUT"])
@role_required("model")
@blp.response(200, WhitelistOut, example=WHITELIST_EXAMPLE)
@error(404, description=_NOT_OWNER + "; no such fan")
def add_to_whitelist(menu_id, fan_id):
    """Invite a fan to a private menu (adding a fan twice changes nothing)."""
    session = db()
    menu = own_menu(session, menu_id)
    fan = session.get(User, fan_id)
    if fan is None or fan.role != "fan":
        raise ApiError(404, "not_found", "No such fan")
    if session.get(MenuWhitelist, (menu.id, fan_id)) is None:
        session.add(MenuWhitelist(menu_id=menu.id, fan_id=fan_id))
        audit(session, "menu.whitelist_added", menu.id, current_user_id(), fan_id=str(fan_id))
        session.commit()
    return _whitelist(session, menu)


@blp.route("/<uuid:menu_id>/whitelist/<uuid:fan_id>", methods=["DELETE"])
@role_required("model")
@blp.response(200, WhitelistOut, example=WHITELIST_EXAMPLE)
@error(404, description=_NOT_OWNER)
def remove_from_whitelist(menu_id, fan_id):
    """Take a fan off a private menu's whitelist (removing an absent fan changes nothing)."""
    session = db()
    menu = own_menu(session, menu_id)
    entry = session.get(MenuWhitelist, (menu.id, fan_id))
    if entry is not None:
        session.delete(entry)
        audit(session, "menu.whitelist_removed", menu.id, current_user_id(), fan_id=str(fan_id))
        session.commit()
    return _whitelist(session, menu)
