"""Reading menus: GET /menu/<menu_id> and GET /menu/model/<model_id> (the seed API's paths)."""
from __future__ import annotations

import uuid

from flask_smorest import Blueprint
from sqlalchemy import select
from sqlalchemy.orm import selectinload

from models.menus import Menu
from models.types import utcnow

from .auth import current_role, current_user_id, role_required
from .deps import db
from .docs import error
from .errors import ApiError
from .schemas import MenuOut, ModelMenusOut

blp = Blueprint("menus", __name__, url_prefix="/menu", description="Menus and their items")


def menu_view(menu: Menu, owner_view: bool) -> dict:
    items = [i for i in menu.items if owner_view or i.is_active]
    return {**{c: getattr(menu, c) for c in MenuOut._declared_fields if c != "items"}, "items": items}


def load_visible_menu(session, menu_id: uuid.UUID) -> Menu:
    """The menu if the caller may see it: 404 if missing or switched off (to non-owners), 403 if hidden."""
    menu = session.get(Menu, menu_id)
    user_id, role = current_user_id(), current_role()
    owner_view = role == "admin" or (menu is not None and menu.model_id == user_id)
    if menu is None or not (menu.is_active or owner_view):
        raise ApiError(404, "not_found", "No such menu")
    if not menu.visible_to(session, user_id, role, utcnow()):
        raise ApiError(403, "forbidden", "This menu is for subscribers or invited fans only")
    return menu


MENU_EXAMPLE = {
    "id": "5d2f8a47-1c3b-4e6a-8f90-7b1c2d3e4f5a", "model_id": "7e6d5c4b-3a29-4181-9f0e-1d2c3b4a5f6e",
    "name": "Quick Fun Menu", "queue_mode": "OFF", "visibility": "public", "is_active": True,
    "items": [{"id": "9a8b7c6d-5e4f-4a3b-2c1d-0e9f8a7b6c5d", "name": "Dance", "token_value": 50,
               "bonus_loyalty_points": 30, "category": "performance", "is_active": True}],
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
    return menu_view(menu, owner_view=current_role() == "admin" or menu.model_id == current_user_id())


@blp.route("/model/<uuid:model_id>", methods=["GET"])
@role_required()
@blp.response(200, ModelMenusOut, example={"model_id": MENU_EXAMPLE["model_id"], "menus": [MENU_EXAMPLE]})
def get_model_menus(model_id):
    """A model's menus that the caller may see, in display order (hidden menus are left out)."""
    session = db()
    user_id, role = current_user_id(), current_role()
    owner_view = role == "admin" or user_id == model_id
    menus = session.scalars(
        select(Menu)
        .where(Menu.model_id == model_id)
        .order_by(Menu.display_order, Menu.created_at)
        .options(selectinload(Menu.items))
    ).all()
    now = utcnow()
    visible = [
        menu_view(m, owner_view)
        for m in menus
        if (m.is_active or owner_view) and m.visible_to(session, user_id, role, now)
    ]
    return {"model_id": model_id, "menus": visible}
