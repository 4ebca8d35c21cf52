from __future__ import annotations

import hashlib
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
PASSWORD_MIN, PASSWORD_MAX = 8, 256  # for every password a person sets (API and CLI)
NO_PASSWORD = "!"  # not an argon2 hash: every password check fails
_hasher = PasswordHasher()


class User(Base):
    __tablename__ = "users"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    username: Mapped[str] = mapped_column(String(64), unique=True)
    # The host platform's id of a user who signs in with the platform's tokens (any string, e.g. an ObjectId).
    external_id: Mapped[str | None] = mapped_column(String(128), unique=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    role: Mapped[str] = mapped_column(str_enum(*ROLES, name="user_role"))
    display_name: Mapped[str | None] = mapped_column(String(65))
    is_active: Mapped[bool] = mapped_column(default=True)
    # A model's: new Queue ON purchases are refused (queue_paused) until they resume the queue.
    queue_paused: Mapped[bool] = mapped_column(default=False)
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


PLATFORM_PREFIX = "platform:"  # the platform users' usernames (platform_username): no local user may take one


def create_user(session, username: str, password: str | None, role: str, display_name: str | None = None,
                external_id: str | None = None) -> User:
    """A user with the accounts their role needs (used by the CLI, the admin API, the demo, the platform's first
    sign-in and the tests). Without a password (a platform user) nobody can log in as them here. A local user's
    username never starts with PLATFORM_PREFIX (UsernameTaken): the platform's users own those names."""
    if role not in ROLES:
        raise ValueError("unknown role")
    if external_id is None and username.startswith(PLATFORM_PREFIX):
        raise UsernameTaken()
    if session.scalar(select(User.id).where(User.username == username)) is not None:
        raise UsernameTaken()
    user = User(username=username, role=role, display_name=display_name, external_id=external_id)
    if password is None:
        user.password_hash = NO_PASSWORD
    else:
        user.set_password(password)
    session.add(user)
    session.flush()
    create_accounts(session, user)
    return user


def platform_username(external_id: str) -> str:
    """The username of a platform user: unique, since external ids are, and never a valid login name clash
    (it holds a colon)."""
    name = PLATFORM_PREFIX + external_id
    return name if len(name) <= USERNAME_MAX else PLATFORM_PREFIX + hashlib.sha256(external_id.encode()).hexdigest()


def parse_uuid(value) -> uuid.UUID | None:
    """`value` as a UUID, or None if it is not one (an id from elsewhere names nothing of ours)."""
    try:
        return uuid.UUID(str(value))
    except ValueError:
        return None


def find_user_id(session, ref: str) -> uuid.UUID | None:
    """The user a path names: by our id, or by the host platform's id (`external_id`)."""
    own = parse_uuid(ref)
    if own is not None and session.get(User, own) is not None:
        return own
    return session.scalar(select(User.id).where(User.external_id == ref))
