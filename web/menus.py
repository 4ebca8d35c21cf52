"""Reading menus: GET /menu/<menu_id> and GET /menu/model/<model_id> (the seed API's paths)."""
from __future__ import annotations

import uuid

from sqlalchemy import select
from sqlalchemy.orm import selectinload

from models.lovense import LovenseLink, activation_enabled, toy_unavailable
from models.menus import Menu, MenuWhitelist
from models.shows import live_now
from models.types import utcnow
from models.users import User, find_user_id

from .auth import current_role, current_user_id, role_required
from .deps import db, settings
from .docs import error
from .errors import ApiError
from .json_body import Blueprint
from .schemas import MenuOut

blp = Blueprint("menus", __name__, url_prefix="/menu", description="Menus and their items")


_MENU_FIELDS = ("id", "model_id", "name", "description", "queue_mode", "visibility", "queue_order", "theme",
                "delivery_hours_default", "is_active", "live_only", "display_order", "created_at", "updated_at")


def mark_toy_status(session, items, model_id) -> None:
    """Give each toy item its `lovense_status` (MenuItemOut shows it): `ready`, or why its toy would not buzz if
    bought now, so the model sees it on their menu and the fan before buying."""
    toys = [i for i in items if activation_enabled(i.lovense_activation)]
    unavailable = toy_unavailable(settings(), session.get(LovenseLink, model_id) is not None) if toys else None
    for item in items:
        item.lovense_status = (unavailable or "ready") if item in toys else None


def menu_view(session, menu: Menu, owner_view: bool) -> dict:
    """A menu as MenuOut shows it: switched-off items and the whitelist only for its model and admins."""
    items = [i for i in menu.items if owner_view or i.is_active]
    mark_toy_status(session, items, menu.model_id)
    whitelist = []
    if owner_view and menu.visibility == "private":
        whitelist = list(session.scalars(
            select(MenuWhitelist.fan_id).where(MenuWhitelist.menu_id == menu.id).order_by(MenuWhitelist.created_at)))
    return {**{c: getattr(menu, c) for c in _MENU_FIELDS}, "items": items, "whitelist_users": whitelist}


def shown(menu: Menu, owner_view: bool, live: bool) -> bool:
    """Whether a menu is listed: switched-off menus and, while the model is not live, live-only menus are for
    their model and admins only."""
    return owner_view or (menu.is_active and (live or not menu.live_only))


def load_visible_menu(session, menu_id: uuid.UUID | None, buying: bool = False) -> Menu:
    """The menu if the caller may see it: 404 if missing, switched off or live-only while the model is not live
    (to non-owners), 403 if hidden. `buying`: the live-only rule is the purchase rules' (409 model_not_live)."""
    menu = session.get(Menu, menu_id) if menu_id is not None else None
    user_id, role = current_user_id(), current_role()
    owner_view = role == "admin" or (menu is not None and menu.model_id == user_id)
    live = buying or (menu is not None and menu.live_only and live_now(session, menu.model_id))
    if menu is None or not shown(menu, owner_view, live):
        raise ApiError(404, "not_found", "No such menu")
    if not menu.visible_to(session, user_id, role, utcnow()):
        raise ApiError(403, "forbidden", "This menu is for subscribers or invited fans only")
    return menu


_ITEM_EXAMPLE = {"_id": "9a8b7c6d-5e4f-4a3b-2c1d-0e9f8a7b6c5d", "id": "9a8b7c6d-5e4f-4a3b-2c1d-0e9f8a7b6c5d",
                 "name": "Dance", "token_value": 50, "bonus_loyalty_points": 30, "category": "performance",
                 "is_active": True, "created_by": "7e6d5c4b-3a29-4181-9f0e-1d2c3b4a5f6e"}
MENU_EXAMPLE = {
    "_id": "5d2f8a47-1c3b-4e6a-8f90-7b1c2d3e4f5a", "id": "5d2f8a47-1c3b-4e6a-8f90-7b1c2d3e4f5a",
    "model_id": "7e6d5c4b-3a29-4181-9f0e-1d2c3b4a5f6e", "name": "Quick Fun Menu", "queue_mode": "OFF",
    "visibility": "public", "is_active": True, "whitelist_users": [], "items": [_ITEM_EXAMPLE],
    "menu_items": [_ITEM_EXAMPLE],
}


@blp.route("/<uuid:menu_id>", methods=["GET"])
@role_required()
@blp.response(200, MenuOut, example=MENU_EXAMPLE)
@error(403, "forbidden", "This menu is for subscribers or invited fans only",
       description="forbidden: subscribers-only or private menu")
@error(404, "not_found", "No such menu")
def get_menu(menu_id):
    """One menu with its items."""
    session = db()
    menu = load_visible_menu(session, menu_id)
    return menu_view(session, menu, owner_view=current_role() == "admin" or menu.model_id == current_user_id())


@blp.route("/model/<model_id>", methods=["GET"])
@role_required()
@blp.response(200, MenuOut(many=True), example=[MENU_EXAMPLE])
@error(404, "not_found", "No such model")
def get_model_menus(model_id):
    """A model's menus that the caller may see, in display order (hidden menus are left out), as a JSON array.
    `model_id` is our id or the host platform's id of the model."""
    session = db()
    model_id = find_user_id(session, model_id)
    # A fan's or an admin's id answers as no id does: users cannot be told from non-users here.
    if model_id is None or session.scalar(select(User.role).where(User.id == model_id)) != "model":
        raise ApiError(404, "not_found", "No such model")
    user_id, role = current_user_id(), current_role()
    owner_view = role == "admin" or user_id == model_id
    menus = session.scalars(
        select(Menu)
        .where(Menu.model_id == model_id)
        .order_by(Menu.display_order, Menu.created_at)
        .options(selectinload(Menu.items))
    ).all()
    now = utcnow()
    live = any(m.live_only for m in menus) and live_now(session, model_id)
    return [
        menu_view(session, m, owner_view)
        for m in menus
        if shown(m, owner_view, live) and m.visible_to(session, user_id, role, now)
    ]
