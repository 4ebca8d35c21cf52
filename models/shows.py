"""Shows and the overlay's secret link (docs/architecture.md, "Shows").

A model is live while they have a show in status `live`; a show can pause (a break: not live) and resume, and
ends once. At most one show per model is open (live or paused): a partial unique index says so, whatever races.
Sales are attributed to the open show at intake (`purchases.show_id`). The operations that move money when a
show ends live in models/services/shows.py."""
from __future__ import annotations

import hashlib
import secrets
import uuid
from datetime import datetime

from sqlalchemy import ForeignKey, Index, String, func, select, text
from sqlalchemy.orm import Mapped, mapped_column

from .db import Base
from .types import UTCDateTime, str_enum, utcnow
from .users import User

SHOW_STATUSES = ("live", "paused", "ended")
OPEN_SHOW = ("live", "paused")
END_MODES = ("keep", "refund_all")  # what ending a show does with the queued entries


class Show(Base):
    __tablename__ = "shows"
    __table_args__ = (
        Index("uq_shows_one_open_per_model", "model_id", unique=True,
              postgresql_where=text("status <> 'ended'"), sqlite_where=text("status <> 'ended'")),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    model_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id"), index=True)
    status: Mapped[str] = mapped_column(str_enum(*SHOW_STATUSES, name="show_status"), default="live")
    started_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    paused_at: Mapped[datetime | None] = mapped_column(UTCDateTime)  # the current pause's start, if paused
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    end_mode: Mapped[str | None] = mapped_column(str_enum(*END_MODES, name="show_end_mode"))


def open_show(session, model_id, lock: bool = False) -> Show | None:
    """The model's open show; `lock`: FOR NO KEY UPDATE, which still lets a purchase row that references the
    show be written meanwhile (its foreign key check takes FOR KEY SHARE; FOR UPDATE here deadlocked with the
    queue actions)."""
    query = select(Show).where(Show.model_id == model_id, Show.status.in_(OPEN_SHOW))
    return session.scalar(query.with_for_update(key_share=True) if lock else query)


def is_live(model_id_column):
    """A column: whether the model in `model_id_column` has a live show (for a query's select list)."""
    return select(Show.id).where(Show.model_id == model_id_column, Show.status == "live").exists()


def live_now(session, model_id) -> bool:
    return bool(session.scalar(select(is_live(model_id))))


def last_refund_all_end(model_id_column):
    """A column: when the model's last show ended with refund_all (None if never)."""
    return (select(func.max(Show.ended_at))
            .where(Show.model_id == model_id_column, Show.end_mode == "refund_all").scalar_subquery())


def live_required(queued: bool, live_only_menu: bool, queue_off_needs_show: bool) -> bool:
    """Whether buying needs the model live: Queue OFF items are for the live stream (unless the operator turned
    that off), and a live-only menu is live only."""
    return live_only_menu or (not queued and queue_off_needs_show)


class OverlayLink(Base):
    """The secret of a model's overlay URL (an OBS browser source opens it without signing in). Only a hash is
    kept; a new key replaces the old one, and deleting the row revokes it."""

    __tablename__ = "overlay_links"

    model_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id"), primary_key=True)
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


def _hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def issue_overlay_key(session, model_id) -> str:
    """A new overlay key for the model (the old one stops working). The caller commits."""
    key = secrets.token_urlsafe(24)
    link = session.get(OverlayLink, model_id)
    if link is None:
        session.add(OverlayLink(model_id=model_id, key_hash=_hash(key)))
    else:
        link.key_hash, link.created_at = _hash(key), utcnow()
    return key


def revoke_overlay_key(session, model_id) -> None:
    link = session.get(OverlayLink, model_id)
    if link is not None:
        session.delete(link)


def model_for_overlay_key(session, key: str) -> uuid.UUID | None:
    """The model whose overlay `key` opens, while that model's account is active."""
    if not key or len(key) > 100:
        return None
    return session.scalar(select(OverlayLink.model_id).join(User, User.id == OverlayLink.model_id)
                          .where(OverlayLink.key_hash == _hash(key), User.is_active))
