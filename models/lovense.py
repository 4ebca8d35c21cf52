"""Lovense (docs/architecture.md, "Lovense"): a model's paired toy account and one activation record per purchase."""
from __future__ import annotations

import hashlib
import hmac
import uuid
from datetime import datetime, timezone

from sqlalchemy import JSON, BigInteger, ForeignKey, Index, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from .db import Base
from .types import UTCDateTime, str_enum, utcnow

# pending: waiting for its slot; sent: played (playing while ends_at is ahead); stopped: cut off by a Stop
# (reject/refund of a Queue ON entry, unpairing, kill switch); expired: a Queue OFF buzz that could not start within
# LOVENSE_FRESHNESS_SECONDS of its slot; unconfirmed: sent, but whether the toy got it is unknown (no reply, a dropped
# connection, a worker lost mid-send), so it is never sent again on its own (docs/architecture.md, "Lovense").
ACTIVATION_STATUSES = ("pending", "sent", "failed", "skipped", "stopped", "expired", "unconfirmed")
DEVICE_TYPES = ("vibrator", "pump", "all")
PATTERNS = ("steady", "pulse", "wave", "fireworks", "earthquake", "custom")


class LovenseLink(Base):
    """A model's link to their Lovense account, written by Lovense's pairing callback."""

    __tablename__ = "lovense_links"

    model_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id"), primary_key=True)
    uid: Mapped[str] = mapped_column(String(128))
    toys: Mapped[dict | None] = mapped_column(JSON)
    linked_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # The pairing (QR code) that made this link: Lovense's later callbacks for it may refresh `toys`, no other.
    pairing_nonce: Mapped[str | None] = mapped_column(String(32))


class LovensePairing(Base):
    """A QR code we asked Lovense for: its nonce is in the utoken, and the first callback that brings it back
    uses it up (a replayed callback cannot link again)."""

    __tablename__ = "lovense_pairings"

    nonce: Mapped[str] = mapped_column(String(32), primary_key=True)
    model_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id"), index=True)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    used_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class LovenseActivation(Base):
    """The toy activation of one purchase (UNIQUE purchase_id: at most one, however often it is requested).

    A task owns the row while `claim_token` is set and `locked_until` has not passed: a duplicate delivery
    of the task finds it claimed and does nothing; a task that died frees it when the lease ends. `sending_since` is
    set just before the command goes out and cleared with the outcome: a task that claims a row still marked died
    mid-send, and the row becomes `unconfirmed` instead of being sent again."""

    __tablename__ = "lovense_activations"
    __table_args__ = (
        Index("ix_lovense_activations_status_updated", "status", "updated_at"),
        Index("ix_lovense_activations_model_status_starts", "model_id", "status", "starts_at"),
    )

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    purchase_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("purchases.id"), unique=True)
    model_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id"), index=True)
    status: Mapped[str] = mapped_column(str_enum(*ACTIVATION_STATUSES, name="activation_status"), default="pending")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(String(40))
    claim_token: Mapped[str | None] = mapped_column(String(32))
    locked_until: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)
    last_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    sending_since: Mapped[datetime | None] = mapped_column(UTCDateTime)  # a command is on its way (or was, if set)
    # The model's toy timeline: one slot per activation, back to back in the order they were scheduled.
    due_at: Mapped[datetime | None] = mapped_column(UTCDateTime)  # never before this (request + timing_offset)
    scheduled_at: Mapped[datetime | None] = mapped_column(UTCDateTime)  # the slot as first planned: freshness clock
    starts_at: Mapped[datetime | None] = mapped_column(UTCDateTime)  # planned start; once sent, the actual start
    ends_at: Mapped[datetime | None] = mapped_column(UTCDateTime)  # planned end; sent: when it stops; stopped: the Stop


def activation_enabled(spec) -> bool:
    """True if a purchase's lovense_activation snapshot asks for a toy activation."""
    return isinstance(spec, dict) and spec.get("enabled") is True


def toy_unavailable(settings, paired: bool) -> str | None:
    """Why a model's toy activations cannot fire now (`disabled`: the kill switch; `not_configured`: no developer
    token; `unpaired`: the model has no Lovense link), or None if they can. Activations record it as their skip
    reason; menus show it on toy items before anyone buys."""
    if not settings.lovense_enabled:
        return "disabled"
    if not settings.lovense_developer_token:
        return "not_configured"
    if not paired:
        return "unpaired"
    return None


PAIRING_MINUTES = 15  # how long a QR code's utoken is good for its first callback


def _signature(secret: str, model_id, nonce: str, expires: int) -> str:
    return hmac.new(secret.encode(), f"{model_id}.{nonce}.{expires}".encode(), hashlib.sha256).hexdigest()


def pairing_utoken(secret: str, model_id, nonce: str, expires_at: datetime) -> str:
    """The utoken we hand to Lovense with a QR code and expect back in its callback: the pairing's nonce, its
    expiry and an HMAC-SHA256 of both with the model id, so nobody can make one or move it to another model."""
    expires = int(expires_at.timestamp())
    return f"{nonce}.{expires}.{_signature(secret, model_id, nonce, expires)}"


def read_utoken(secret: str, model_id, utoken) -> tuple[str, datetime] | None:
    """(nonce, expiry) of a utoken we made for `model_id`, or None if it is not one (compared in constant time)."""
    parts = utoken.split(".") if isinstance(utoken, str) and secret else []
    if len(parts) != 3 or not parts[1].isdigit() or len(parts[1]) > 12:
        return None
    nonce, expires, signature = parts[0], int(parts[1]), parts[2]
    if not hmac.compare_digest(_signature(secret, model_id, nonce, expires).encode(), signature.encode()):
        return None
    return nonce, datetime.fromtimestamp(expires, timezone.utc)
