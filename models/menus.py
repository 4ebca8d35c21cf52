from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import JSON, CheckConstraint, ForeignKey, Integer, String, UniqueConstraint, func, select
from sqlalchemy.orm import Mapped, mapped_column, relationship

from .db import Base
from .purchases import DEFAULT_DELIVERY_HOURS
from .types import UTCDateTime, str_enum, utcnow
from .users import Subscription, User

QUEUE_MODES = ("ON", "OFF")
VISIBILITIES = ("public", "subscribers_only", "private")
QUEUE_ORDERS = ("priority", "fifo")
CARD_STYLES = ("modern", "premium", "luxury", "minimal")
MAX_MENUS_PER_MODEL = 8
MAX_ITEMS_PER_MENU = 50


class Menu(Base):
    __tablename__ = "menus"
    __table_args__ = (UniqueConstraint("model_id", "template_key"),)

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    model_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id"), index=True)
    name: Mapped[str] = mapped_column(String(65))
    description: Mapped[str | None] = mapped_column(String(200))
    queue_mode: Mapped[str] = mapped_column(str_enum(*QUEUE_MODES, name="queue_mode"), default="OFF")
    visibility: Mapped[str] = mapped_column(str_enum(*VISIBILITIES, name="visibility"), default="public")
    queue_order: Mapped[str] = mapped_column(str_enum(*QUEUE_ORDERS, name="queue_order"), default="priority")
    theme: Mapped[dict | None] = mapped_column(JSON)
    delivery_hours_default: Mapped[int] = mapped_column(Integer, default=DEFAULT_DELIVERY_HOURS)
    is_active: Mapped[bool] = mapped_column(default=True)
    live_only: Mapped[bool] = mapped_column(default=False)  # shown and sold only while the model is live
    display_order: Mapped[int] = mapped_column(Integer, default=0)
    # Name of the template a menu was loaded from; makes loading the same templates twice a no-op.
    template_key: Mapped[str | None] = mapped_column(String(65))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)

    items: Mapped[list["MenuItem"]] = relationship(
        back_populates="menu", order_by="(MenuItem.display_order, MenuItem.created_at)"
    )

    def visible_to(self, session, user_id: uuid.UUID | None, role: str | None, now: datetime) -> bool:
        """Access rule for GET and purchase: owner and admins always; others by visibility."""
        if role == "admin" or user_id == self.model_id:
            return True
        if self.visibility == "public":
            return True
        if user_id is None:
            return False
        if self.visibility == "subscribers_only":
            return session.scalar(
                select(Subscription.id).where(
                    Subscription.fan_id == user_id,
                    Subscription.model_id == self.model_id,
                    Subscription.expires_at > now,
                )
            ) is not None
        return session.get(MenuWhitelist, (self.id, user_id)) is not None


class MenuItem(Base):
    __tablename__ = "menu_items"
    __table_args__ = (
        CheckConstraint("token_value BETWEEN 1 AND 99999", name="token_value_range"),
        CheckConstraint("bonus_loyalty_points >= 0", name="points_non_negative"),
        CheckConstraint("max_daily_purchases IS NULL OR max_daily_purchases >= 1", name="daily_max_positive"),
        CheckConstraint("estimated_duration_minutes >= 0", name="duration_non_negative"),
        CheckConstraint("delivery_hours IS NULL OR delivery_hours >= 1", name="delivery_hours_positive"),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    menu_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("menus.id"), index=True)
    name: Mapped[str] = mapped_column(String(65))
    description: Mapped[str | None] = mapped_column(String(200))
    token_value: Mapped[int] = mapped_column(Integer)
    bonus_loyalty_points: Mapped[int] = mapped_column(Integer, default=0)
    category: Mapped[str | None] = mapped_column(String(40))
    icon_url: Mapped[str | None] = mapped_column(String(500))
    display_order: Mapped[int] = mapped_column(Integer, default=0)
    is_active: Mapped[bool] = mapped_column(default=True)
    max_daily_purchases: Mapped[int | None] = mapped_column(Integer)
    estimated_duration_minutes: Mapped[int] = mapped_column(Integer, default=5)
    delivery_hours: Mapped[int | None] = mapped_column(Integer)
    lovense_activation: Mapped[dict | None] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)

    menu: Mapped[Menu] = relationship(back_populates="items")


class MenuWhitelist(Base):
    """Fans allowed to see and buy from a private menu."""

    __tablename__ = "menu_whitelist"

    menu_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("menus.id"), primary_key=True)
    fan_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id"), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class LimitReached(Exception):
    """A model already has MAX_MENUS_PER_MODEL menus, or a menu MAX_ITEMS_PER_MENU items."""

    def __init__(self, what: str, limit: int):
        super().__init__(f"at most {limit} {what}")
        self.what = what
        self.limit = limit


def create_menu(session, model_id: uuid.UUID, fields: dict, items=(), template_key: str | None = None) -> Menu:
    """A new menu of `model_id` with `items`, within the limits. The model's row is locked so that concurrent
    creations count each other."""
    session.scalar(select(User.id).where(User.id == model_id).with_for_update())
    count = session.scalar(select(func.count()).select_from(Menu).where(Menu.model_id == model_id))
    if count >= MAX_MENUS_PER_MODEL:
        raise LimitReached("menus per model", MAX_MENUS_PER_MODEL)
    if len(items) > MAX_ITEMS_PER_MENU:
        raise LimitReached("items per menu", MAX_ITEMS_PER_MENU)
    fields = dict(fields)
    fields.setdefault("display_order", _next_order(session, Menu.display_order, Menu.model_id == model_id))
    menu = Menu(model_id=model_id, template_key=template_key, **fields)
    session.add(menu)
    session.flush()
    for order, spec in enumerate(items):
        session.add(MenuItem(menu_id=menu.id, **{"display_order": order, **spec}))
    session.flush()
    return menu


def add_item(session, menu: Menu, fields: dict) -> MenuItem:
    """A new item at the end of `menu` (unless an order is given), within the limit; the menu row is locked."""
    session.refresh(menu, with_for_update=True)
    count = session.scalar(select(func.count()).select_from(MenuItem).where(MenuItem.menu_id == menu.id))
    if count >= MAX_ITEMS_PER_MENU:
        raise LimitReached("items per menu", MAX_ITEMS_PER_MENU)
    fields = dict(fields)
    fields.setdefault("display_order", _next_order(session, MenuItem.display_order, MenuItem.menu_id == menu.id))
    item = MenuItem(menu_id=menu.id, **fields)
    session.add(item)
    session.flush()
    return item


def duplicate_menu(session, menu: Menu, name: str) -> Menu:
    """A switched-off copy of `menu` with its items and whitelist (bought items keep their own snapshot)."""
    fields = {c: getattr(menu, c) for c in _COPIED_MENU_FIELDS}
    items = [{c: getattr(i, c) for c in _COPIED_ITEM_FIELDS} for i in menu.items]
    copy = create_menu(session, menu.model_id, {**fields, "name": name, "is_active": False}, items)
    for fan_id in session.scalars(select(MenuWhitelist.fan_id).where(MenuWhitelist.menu_id == menu.id)):
        session.add(MenuWhitelist(menu_id=copy.id, fan_id=fan_id))
    session.flush()
    return copy


def _next_order(session, column, where) -> int:
    return session.scalar(select(func.coalesce(func.max(column) + 1, 0)).where(where))


_COPIED_MENU_FIELDS = ("description", "queue_mode", "visibility", "queue_order", "theme", "delivery_hours_default")
_COPIED_ITEM_FIELDS = (
    "name", "description", "token_value", "bonus_loyalty_points", "category", "icon_url", "display_order",
    "is_active", "max_daily_purchases", "estimated_duration_minutes", "delivery_hours", "lovense_activation",
)
