"""Login, refresh, logout, and the role checks every other endpoint uses.

Every token we issue names its sign-in session (claim `sid`, models/auth_sessions.py). Each request checks, in
one query, that the user is active and the session not ended: deactivation, logout and a reused refresh token
take effect on the next request of every token involved."""
from __future__ import annotations

import time
import uuid
from functools import wraps

from flask import Response, current_app, g, request
from flask_jwt_extended import (
    JWTManager,
    create_access_token,
    create_refresh_token,
    decode_token,
    get_csrf_token,
    get_jwt,
    get_jwt_identity,
    jwt_required,
    verify_jwt_in_request,
)
from flask_jwt_extended.exceptions import WrongTokenError
from marshmallow import Schema, fields, validate
from sqlalchemy import select

from models.audit import audit
from models.auth_sessions import (
    ACCOUNT_INACTIVE,
    TOKEN_REVOKED,
    open_session,
    refusal_of,
    revoke_session,
    rotate_refresh,
    token_refusal,
)
from models.users import User, dummy_password_check

from .deps import db, runtime
from .docs import error, public, rate_limited
from .errors import ApiError, error_response
from .json_body import Blueprint
from .limits import login_limited
from .platform_auth import PlatformTokens, is_platform_token, platform_user

blp = Blueprint("auth", __name__, url_prefix="/auth", description="Log in and refresh tokens")


class CachingJWTManager(JWTManager):
    """Remembers tokens whose signature it has verified, so a fan's next request skips PyJWT's decode (a
    large share of a purchase's CPU, measured in bench/). The key is the whole token, signature included;
    expiry is checked on every use, and an expired token goes through the full decode to get its usual
    error. Blocklist, type and freshness checks run after this, on every request, as before."""

    MAX_TOKENS = 10_000

    def _decode_jwt_from_config(self, encoded_token, csrf_value=None, allow_expired=False):
        verified = current_app.extensions.setdefault("perfmenu_verified_tokens", {})  # per app: per secret
        key = (encoded_token, csrf_value)
        claims = verified.get(key)
        if claims is not None and (allow_expired or claims.get("exp", float("inf")) > time.time()):
            return dict(claims)
        claims = super()._decode_jwt_from_config(encoded_token, csrf_value, allow_expired)
        if not allow_expired:
            if len(verified) >= self.MAX_TOKENS:
                verified.clear()  # simpler than LRU bookkeeping; refills within seconds
            verified[key] = claims
        return dict(claims)


jwt = CachingJWTManager()
TOKEN_REFUSAL_MESSAGE = {ACCOUNT_INACTIVE: "The account is not active", TOKEN_REVOKED: "The token has been revoked"}


class LoginRequest(Schema):
    username = fields.String(required=True, validate=validate.Length(min=1, max=64))
    password = fields.String(required=True, validate=validate.Length(min=1, max=256), load_only=True)


class TokenPair(Schema):
    access_token = fields.String(required=True)
    refresh_token = fields.String()
    token_type = fields.String(required=True)
    user_id = fields.UUID()
    role = fields.String()


def tokens_for(user: User, session_id, refresh_jti: str) -> dict:
    claims = {"role": user.role, "sid": str(session_id)}
    return {
        "access_token": create_access_token(identity=str(user.id), additional_claims=claims),
        "refresh_token": create_refresh_token(identity=str(user.id), additional_claims={**claims, "jti": refresh_jti}),
        "token_type": "Bearer",
        "user_id": user.id,
        "role": user.role,
    }


def sign_in(session, user: User) -> dict:
    """A new sign-in session for `user` and its first pair of tokens (committed)."""
    row = open_session(session, user.id, current_app.config["JWT_REFRESH_TOKEN_EXPIRES"])
    session.commit()
    return tokens_for(user, row.id, row.refresh_jti)


def _session_id(claims: dict) -> uuid.UUID | None:
    try:
        return uuid.UUID(claims["sid"])
    except (KeyError, TypeError, ValueError):
        return None


TOKEN_EXAMPLE = {"access_token": "eyJhbGciOiJIUzI1NiIs...", "refresh_token": "eyJhbGciOiJIUzI1NiIs...",
                 "token_type": "Bearer", "user_id": "3f1c2b9e-8d7a-4c55-9a41-0c7e2d6b1a90", "role": "fan"}


@blp.route("/login", methods=["POST"])
@public
@login_limited
@blp.arguments(LoginRequest, example={"username": "fan1", "password": "pw"})
@blp.response(200, TokenPair, example=TOKEN_EXAMPLE)
@error(401, "invalid_credentials", "Wrong username or password")
@rate_limited
def login(body):
    """Exchange a username and password for an access and a refresh token.

    Rate limited per client address (RATE_LIMIT_LOGIN)."""
    session = db()
    user = session.scalar(select(User).where(User.username == body["username"]))
    if user is None:
        dummy_password_check()
    # The hash is checked for inactive users too: timing must not tell them apart.
    if user is None or not user.check_password(body["password"]) or not user.is_active:
        raise ApiError(401, "invalid_credentials", "Wrong username or password")
    return sign_in(session, user)


@blp.route("/refresh", methods=["POST"])
@jwt_required(refresh=True, locations=["headers"])  # a cookie's refresh token never comes back in a JSON body
@blp.response(200, TokenPair, example=TOKEN_EXAMPLE)
@error(401, "unauthorized", "A bearer token is required",
       description="unauthorized, invalid_token, token_expired, token_revoked, account_inactive: send the session's "
                   "latest refresh token as the bearer token")
def refresh():
    """A new access token and a new refresh token for the session's latest refresh token (sent as
    `Authorization: Bearer <refresh token>`). The refresh token sent is spent: sending it again ends the session
    (reuse detection), and every token of the session is refused from then on."""
    tokens = refreshed_tokens(db())
    if tokens is None:
        raise ApiError(401, TOKEN_REVOKED, TOKEN_REFUSAL_MESSAGE[TOKEN_REVOKED])
    return tokens


def refreshed_tokens(session) -> dict | None:
    """Spend the verified refresh token: the session's next pair of tokens (committed), or None when the token was
    spent already (reuse: the session is ended). /auth/refresh and the pages' cookies alike."""
    claims = get_jwt()
    row = rotate_refresh(session, _session_id(claims), claims["jti"])
    session.commit()
    if row is None:
        return None
    return tokens_for(session.get(User, row.user_id), row.id, row.refresh_jti)


@blp.route("/logout", methods=["POST"])
@blp.response(204)
@error(401, "unauthorized", "A bearer token is required",
       description="unauthorized, invalid_token, token_expired, token_revoked: send one of the session's tokens")
def logout():
    """End the sign-in session of the bearer token (access or refresh): every token of that session, the refresh
    token included, is refused from the next request on. A platform token's session is the platform's to end:
    nothing changes here (204)."""
    if platform_tokens() is not None and is_platform_token(_bearer()):
        authenticate()
        return Response(status=204)
    verify_jwt_in_request(verify_type=False, locations=["headers"])
    end_session(db())
    return Response(status=204)


def end_session(session) -> None:
    """Revoke the verified token's sign-in session (committed): /auth/logout and the console's logout."""
    session_id = _session_id(get_jwt())
    revoke_session(session, session_id, "logout")
    audit(session, "auth.logout", session_id, uuid.UUID(get_jwt_identity()))
    session.commit()


# Pages (web/pages.py) keep the tokens in cookies: HttpOnly, SameSite=Strict, Secure unless served over plain http
# on this machine; a POST sent with a cookie needs the double-submit CSRF value (X-CSRF-TOKEN or the form's
# `csrf_token`), read by the page's script from the non-HttpOnly CSRF cookie.
COOKIES = {"JWT_ACCESS_COOKIE_NAME": "perfmenu_access", "JWT_REFRESH_COOKIE_NAME": "perfmenu_refresh",
           "JWT_ACCESS_CSRF_COOKIE_NAME": "perfmenu_csrf_access",
           "JWT_REFRESH_CSRF_COOKIE_NAME": "perfmenu_csrf_refresh"}
LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "[::1]"}


def cookie_secure() -> bool:
    return not (request.scheme == "http" and request.host.rsplit(":", 1)[0] in LOOPBACK_HOSTS)


def set_session_cookies(response, tokens: dict) -> None:
    """Both tokens and their CSRF values as cookies on `response` (they live as long as the refresh token; the
    access token inside expires sooner and is refreshed through POST /console/refresh)."""
    c = current_app.config
    max_age = int(c["JWT_REFRESH_TOKEN_EXPIRES"].total_seconds())
    for name, value, http_only in (
            (c["JWT_ACCESS_COOKIE_NAME"], tokens["access_token"], True),
            (c["JWT_REFRESH_COOKIE_NAME"], tokens["refresh_token"], True),
            (c["JWT_ACCESS_CSRF_COOKIE_NAME"], get_csrf_token(tokens["access_token"]), False),
            (c["JWT_REFRESH_CSRF_COOKIE_NAME"], get_csrf_token(tokens["refresh_token"]), False)):
        response.set_cookie(name, value, max_age=max_age, path="/", secure=cookie_secure(), httponly=http_only,
                            samesite="Strict")


def clear_session_cookies(response) -> None:
    for key in COOKIES:
        response.delete_cookie(current_app.config[key], path="/", secure=cookie_secure(), samesite="Strict")


def authenticate(session_checked_by_view: bool = False) -> None:
    """Who calls: from the platform's token (web/platform_auth.py) when the app trusts the platform and the
    token is not one of ours, else from our own token. Raises 401 (or 403 role_mismatch).

    Our tokens: a plain `Authorization: Bearer <token>` goes through `_access_claims` (the hot path: a token seen
    before costs a dict lookup); a page's cookie, or a header the library must judge, through
    flask-jwt-extended's own verify_jwt_in_request. Either way the token's sign-in session is then checked
    (models/auth_sessions.py) unless `session_checked_by_view`: then the view selects token_check_columns in its
    own statement and calls `refuse_unusable_token` (intake does, to stay at one round trip). A platform token is
    checked here either way (platform_user)."""
    platform = platform_tokens()
    token = _bearer()
    g.token_check_deferred, g.token_session = False, None
    if platform is not None and token and is_platform_token(token):
        claims = platform.claims(token)
        with runtime().session_scope() as session:  # its own unit of work: the view's session starts clean
            user = platform_user(session, claims)
            g.identity = (user.id, user.role)
        g.platform_expires = claims.expires  # an event stream opened with it ends then (web/events.py)
        return
    header = request.headers.get("Authorization", "")
    if header.startswith("Bearer ") and token and not any(c in token for c in " ,"):
        claims = _access_claims(token)
    else:
        verify_jwt_in_request(skip_revocation_check=True)
        claims = get_jwt()
    g.identity = (uuid.UUID(claims["sub"]), claims.get("role"))
    g.token_session = _session_id(claims)
    if session_checked_by_view:
        g.token_check_deferred = True
        return
    reason = token_refusal(db(), g.identity[0], g.token_session)
    if reason is not None:
        raise ApiError(401, reason, TOKEN_REFUSAL_MESSAGE[reason])


def _access_claims(token: str) -> dict:
    """The claims of one of our access tokens: flask-jwt-extended's decode (signature, expiry, its errors and
    their answers), remembered by CachingJWTManager, and the type check verify_jwt_in_request makes."""
    claims = decode_token(token)
    if claims.get("type") != "access":
        raise WrongTokenError("Only non-refresh tokens are allowed")
    return claims


def refuse_unusable_token(user_active: bool | None, session_open: bool) -> None:
    """The view's half of `session_checked_by_view`: the same answers as the check authenticate() makes."""
    reason = refusal_of(user_active, session_open) if g.token_check_deferred else None
    if reason is not None:
        raise ApiError(401, reason, TOKEN_REFUSAL_MESSAGE[reason])


def platform_tokens() -> PlatformTokens | None:
    return current_app.extensions.get("perfmenu_platform_tokens")


def _bearer() -> str:
    return request.headers.get("Authorization", "").removeprefix("Bearer ").strip()


def current_user_id() -> uuid.UUID:
    return g.identity[0]


def current_role() -> str:
    return g.identity[1]


def role_required(*roles: str, session_checked_by_view: bool = False):
    """Require a valid access token, and one of `roles` if any are given (documented as 401 and 403).
    `session_checked_by_view`: see authenticate()."""

    def decorator(view):
        @wraps(view)
        def wrapper(*args, **kwargs):
            authenticate(session_checked_by_view)
            if roles and current_role() not in roles:
                raise ApiError(403, "forbidden", "Your role may not do this")
            return view(*args, **kwargs)

        wrapper = error(401, "unauthorized", "A bearer token is required",
                        description="unauthorized, invalid_token, token_expired, token_revoked, account_inactive: "
                                    "no valid access token")(wrapper)
        if roles:
            wrapper = error(403, "forbidden", "Your role may not do this",
                            description=f"forbidden: only {', '.join(roles)} may do this")(wrapper)
        return wrapper

    return decorator


def init_jwt(app, settings) -> None:
    # Bearer tokens first (the API's clients, unchanged), then the pages' cookies.
    app.config.update(JWT_TOKEN_LOCATION=["headers", "cookies"], JWT_COOKIE_CSRF_PROTECT=True,
                      JWT_CSRF_CHECK_FORM=True, JWT_COOKIE_SAMESITE="Strict", **COOKIES)
    jwt.init_app(app)
    if settings.platform_identity:
        app.extensions["perfmenu_platform_tokens"] = PlatformTokens(settings)

    @jwt.unauthorized_loader
    def _missing(reason):
        return error_response(401, "unauthorized", "A bearer token is required")

    @jwt.invalid_token_loader
    def _invalid(reason):
        return error_response(401, "invalid_token", "The token is invalid")

    @jwt.expired_token_loader
    def _expired(_header, _payload):
        return error_response(401, "token_expired", "The token has expired")

    @jwt.token_in_blocklist_loader
    def _refused(_header, payload) -> bool:
        g.token_refusal = token_refusal(db(), uuid.UUID(payload["sub"]), _session_id(payload))
        return g.token_refusal is not None

    @jwt.revoked_token_loader
    def _revoked(_header, _payload):
        reason = g.get("token_refusal") or TOKEN_REVOKED
        return error_response(401, reason, TOKEN_REFUSAL_MESSAGE[reason])

    @jwt.needs_fresh_token_loader
    def _stale(_header, _payload):
        return error_response(401, "fresh_token_required", "A fresh token is required")
