"""The host platform's identity: perfmenu trusts the platform's own access tokens beside the ones it issues.

Configured by PLATFORM_JWT_JWKS_URL (keys fetched, cached for PLATFORM_JWKS_CACHE_SECONDS and fetched again
when a token names an unknown `kid`) or PLATFORM_JWT_PUBLIC_KEY (one PEM key), with PLATFORM_JWT_ISSUER and
PLATFORM_JWT_AUDIENCE. A token is the platform's when its header's algorithm is not our own HS256: it must be
RS256 or ES256 (PLATFORM_JWT_ALGORITHMS), signed by a platform key, unexpired, from the issuer, for the audience,
and name a user (PLATFORM_JWT_USER_ID_CLAIM) and a known role (PLATFORM_JWT_ROLE_CLAIM, mapped by
PLATFORM_JWT_ROLES). Anything else is 401, never a fallback to another check.

A platform user seen for the first time is created with the platform's id as `external_id` and the accounts
of its role; its role is fixed from then on (a token naming another role gets 403 role_mismatch)."""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

import jwt
import requests
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from models.auth_sessions import ACCOUNT_INACTIVE
from models.users import User, create_user, platform_username

from .errors import ApiError, DependencyUnavailable

log = logging.getLogger(__name__)

OWN_ALGORITHM = "HS256"  # what perfmenu's own tokens are signed with (flask-jwt-extended's default)
MIN_REFETCH_SECONDS = 1  # unknown kids fetch the key set again at most this often
FAILED_FETCH_RETRY_SECONDS = 30  # after a failed fetch, stale keys are served this long before another try
FETCH_TIMEOUT = (2, 3)  # connect, read
MAX_TOKENS = 10_000
EXTERNAL_ID_MAX = 128


@dataclass(frozen=True)
class PlatformClaims:
    external_id: str
    role: str
    display_name: str | None
    expires: float


def is_platform_token(token: str) -> bool:
    """Whether a bearer token is meant for the platform's check (anything not signed like our own tokens)."""
    try:
        return jwt.get_unverified_header(token).get("alg") != OWN_ALGORITHM
    except jwt.InvalidTokenError:
        return False  # not a JWT at all: our own check answers 401 for it


class KeySet:
    """The platform's JWKS, cached; fetched again after its lifespan or for a kid it does not hold. One request
    fetches at a time; while it does, the others are answered from the keys held (they wait only when none are
    held yet). A failed fetch keeps the keys held for FAILED_FETCH_RETRY_SECONDS before the next try, so a
    hanging key server costs one request a timeout now and then, not every request."""

    def __init__(self, url: str, lifespan: float):
        self.url, self.lifespan = url, lifespan
        self.keys: dict[str | None, object] = {}
        self.fetched_at = self.tried_at = float("-inf")
        self.lock = threading.Lock()

    def _due(self, kid, now: float) -> bool:
        if kid not in self.keys and now - self.tried_at > MIN_REFETCH_SECONDS:
            return True
        retry_after = MIN_REFETCH_SECONDS if self.tried_at == self.fetched_at else FAILED_FETCH_RETRY_SECONDS
        return now - self.fetched_at > self.lifespan and now - self.tried_at > retry_after

    def key_for(self, kid):
        if self._due(kid, time.monotonic()) and self.lock.acquire(blocking=not self.keys):
            try:
                if self._due(kid, time.monotonic()):  # another request may have fetched meanwhile
                    self._fetch()
            finally:
                self.lock.release()
        if kid not in self.keys:
            raise jwt.InvalidTokenError("unknown key id")
        return self.keys[kid]

    def _fetch(self) -> None:
        self.tried_at = time.monotonic()
        try:
            response = requests.get(self.url, timeout=FETCH_TIMEOUT)
            response.raise_for_status()
            key_set = jwt.PyJWKSet.from_dict(response.json())
        except (requests.RequestException, ValueError, jwt.PyJWKSetError) as exc:
            log.warning("platform key set not fetched", extra={"error_type": type(exc).__name__})
            if not self.keys:
                raise DependencyUnavailable() from None
            return  # keep serving the keys we have
        self.keys = {key.key_id: key.key for key in key_set.keys}
        self.fetched_at = self.tried_at


class PlatformTokens:
    """Verifies the platform's tokens for one app (its settings), remembering verified ones until they expire."""

    def __init__(self, settings):
        self.settings = settings
        self.roles = dict(settings.platform_roles)
        self.key_set = KeySet(settings.platform_jwt_jwks_url, settings.platform_jwks_cache_seconds) \
            if settings.platform_jwt_jwks_url else None
        self.verified: dict[str, PlatformClaims] = {}

    def claims(self, token: str) -> PlatformClaims:
        known = self.verified.get(token)
        if known is not None and known.expires > time.time():
            return known
        claims = self._verify(token)
        if len(self.verified) >= MAX_TOKENS:
            self.verified.clear()
        self.verified[token] = claims
        return claims

    def _verify(self, token: str) -> PlatformClaims:
        s = self.settings
        try:
            header = jwt.get_unverified_header(token)
            if header.get("alg") not in s.platform_jwt_algorithms:
                raise jwt.InvalidAlgorithmError("algorithm not allowed")
            key = self.key_set.key_for(header.get("kid")) if self.key_set else s.platform_jwt_public_key
            payload = jwt.decode(token, key, algorithms=list(s.platform_jwt_algorithms), issuer=s.platform_jwt_issuer,
                                 audience=s.platform_jwt_audience, options={"require": ["exp", "iss", "aud"]})
        except jwt.ExpiredSignatureError:
            raise ApiError(401, "token_expired", "The token has expired") from None
        except (jwt.InvalidTokenError, ValueError, TypeError):
            raise ApiError(401, "invalid_token", "The token is invalid") from None
        external_id = payload.get(s.platform_user_id_claim)
        role = self.roles.get(str(payload.get(s.platform_role_claim)))
        if isinstance(external_id, int) and not isinstance(external_id, bool):
            external_id = str(external_id)
        if not isinstance(external_id, str) or not 1 <= len(external_id) <= EXTERNAL_ID_MAX or role is None:
            raise ApiError(401, "invalid_token", "The token does not name a user and a known role")
        name = payload.get(s.platform_name_claim)
        name = name[:65] if isinstance(name, str) and name.strip() else None
        return PlatformClaims(external_id, role, name, float(payload["exp"]))


def platform_user(session, claims: PlatformClaims) -> User:
    """The user the platform's token names, created with the accounts of its role on first sight."""
    user = session.scalar(select(User).where(User.external_id == claims.external_id))
    if user is None:
        try:
            user = create_user(session, platform_username(claims.external_id), None, claims.role,
                               claims.display_name, external_id=claims.external_id)
            session.commit()
            log.info("platform user created", extra={"user_id": str(user.id), "role": user.role})
        except IntegrityError:  # the same user's first requests raced: the other one created it
            session.rollback()
            user = session.scalar(select(User).where(User.external_id == claims.external_id))
    if not user.is_active:
        raise ApiError(401, ACCOUNT_INACTIVE, "The account is not active")
    if user.role != claims.role:
        raise ApiError(403, "role_mismatch", "The token's role is not this account's role")
    return user
