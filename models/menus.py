from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import JSON, CheckConstraint, ForeignKey, Integer, String, UniqueConstraint, select
from sqlalchemy.orm import Mapped, mapped_column, relationship

from .db import Base
from .types import UTCDateTime, str_enum, utcnow
from .users import Subscription

QUEUE_MODES = ("ON", "OFF")
VISIBILITIES = ("public", "subscribers_only", "private")
QUEUE_ORDERS = ("priority", "fifo")
CARD_STYLES = ("modern", "premium", "luxury", "minimal")
MAX_MENUS_PER_MODEL = 8
MAX_ITEMS_PER_MENU = 50
DEFAULT_DELIVERY_HOURS = 24


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
