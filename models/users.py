from __future__ import annotations

import uuid
from datetime import datetime

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import ForeignKey, String, UniqueConstraint, select
from sqlalchemy.orm import Mapped, mapped_column

from .db import Base
from .ledger import create_accounts
from .types import UTCDateTime, str_enum, utcnow

ROLES = ("fan", "model", "admin")
USERNAME_MAX = 64
_hasher = PasswordHasher()


class User(Base):
    __tablename__ = "users"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    username: Mapped[str] = mapped_column(String(64), unique=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    role: Mapped[str] = mapped_column(str_enum(*ROLES, name="user_role"))
    display_name: Mapped[str | None] = mapped_column(String(65))
    is_active: Mapped[bool] = mapped_column(default=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    def set_password(self, password: str) -> None:
        self.password_hash = _hasher.hash(password)

    def check_password(self, password: str) -> bool:
        try:
            return _hasher.verify(self.password_hash, password)
        except (VerificationError, InvalidHashError):
            return False


def dummy_password_check() -> None:
    """Spend the same time as a real check, so unknown usernames cannot be told apart by timing."""
    try:
        _hasher.verify(_DUMMY_HASH, "not-the-password")
    except VerificationError:
        pass


_DUMMY_HASH = _hasher.hash("dummy-password-for-timing")


class Subscription(Base):
    """A fan's subscription to a model; decides access to `subscribers_only` menus."""

    __tablename__ = "subscriptions"
    __table_args__ = (UniqueConstraint("fan_id", "model_id"),)

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    fan_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id"))
    model_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id"), index=True)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class UsernameTaken(Exception):
    pass


def create_user(session, username: str, password: str, role: str, display_name: str | None = None) -> User:
    """A user with the accounts their role needs (used by the CLI, the admin API, the demo and the tests)."""
    if role not in ROLES:
        raise ValueError("unknown role")
    if session.scalar(select(User.id).where(User.username == username)) is not None:
        raise UsernameTaken()
    user = User(username=username, role=role, display_name=display_name)
    user.set_password(password)
    session.add(user)
    session.flush()
    create_accounts(session, user)
    return user
