"""Sign-in sessions (docs/architecture.md, "Sign-in sessions"): every token we issue names one, so that logging
out, deactivating the user or replaying a spent refresh token ends all of the session's tokens on their next
request, long before they expire."""
from __future__ import annotations

import uuid
from datetime import datetime, timedelta

from sqlalchemy import ForeignKey, String, exists, select, update
from sqlalchemy.orm import Mapped, mapped_column

from .db import Base
from .types import UTCDateTime, utcnow
from .users import User

# Why a token is refused although its signature and expiry are fine (error codes of the 401 answer).
ACCOUNT_INACTIVE, TOKEN_REVOKED = "account_inactive", "token_revoked"


class AuthSession(Base):
    __tablename__ = "auth_sessions"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id"), index=True)
    # The one refresh token of the session that may still be used (each refresh replaces it).
    refresh_jti: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    revoked_reason: Mapped[str | None] = mapped_column(String(40))


def open_session(session, user_id, lifetime: timedelta) -> AuthSession:
    now = utcnow()
    row = AuthSession(user_id=user_id, refresh_jti=new_jti(), created_at=now, expires_at=now + lifetime)
    session.add(row)
    session.flush()
    return row


def new_jti() -> str:
    return uuid.uuid4().hex


def token_check_columns(user_id, session_id):
    """Two SQL columns that decide whether a token may be used: the user's `is_active`, and whether the token's
    session exists and has not ended. A token without a session (from before sessions existed) has none: signing
    in again fixes it. Intake selects them in its own one statement (web/purchases.py)."""
    return (
        select(User.is_active).where(User.id == user_id).scalar_subquery(),
        exists().where(AuthSession.id == session_id, AuthSession.user_id == user_id,
                       AuthSession.revoked_at.is_(None)),
    )


def refusal_of(user_active: bool | None, session_open: bool) -> str | None:
    """Why a well-signed, unexpired token may not be used now, from the two columns above, or None."""
    if not user_active:
        return ACCOUNT_INACTIVE
    if not session_open:
        return TOKEN_REVOKED
    return None


def token_refusal(session, user_id: uuid.UUID, session_id) -> str | None:
    return refusal_of(*session.execute(select(*token_check_columns(user_id, session_id))).one())


def rotate_refresh(session, session_id, presented_jti: str) -> AuthSession | None:
    """Spend the session's refresh token `presented_jti` and give the session a new one; None if it may not be
    spent. A refresh token that was already spent means two parties hold the session (one of them stole it): the
    whole session ends (reuse detection), and both must sign in again."""
    row = session.scalar(select(AuthSession).where(AuthSession.id == session_id).with_for_update())
    if row is None or row.revoked_at is not None:
        return None
    if row.refresh_jti != presented_jti:
        row.revoked_at, row.revoked_reason = utcnow(), "refresh_reused"
        return None
    row.refresh_jti = new_jti()
    return row


def revoke_session(session, session_id, reason: str) -> None:
    _revoke(session, AuthSession.id == session_id, reason)


def revoke_user_sessions(session, user_id, reason: str) -> None:
    _revoke(session, AuthSession.user_id == user_id, reason)


def _revoke(session, which, reason: str) -> None:
    session.execute(update(AuthSession).where(which, AuthSession.revoked_at.is_(None))
                    .values(revoked_at=utcnow(), revoked_reason=reason))
