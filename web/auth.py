"""Login, refresh, and the role checks every other endpoint uses."""
from __future__ import annotations

import time
import uuid
from functools import wraps

from flask import current_app, g, request
from flask_jwt_extended import (
    JWTManager,
    create_access_token,
    create_refresh_token,
    get_jwt,
    get_jwt_identity,
    jwt_required,
    verify_jwt_in_request,
)
from marshmallow import Schema, fields, validate
from sqlalchemy import select

from models.users import User, dummy_password_check

from .deps import db, runtime
from .docs import error, public, rate_limited
from .errors import ApiError, error_response
from .json_body import Blueprint
from .limits import limiter, login_limit
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


class LoginRequest(Schema):
    username = fields.String(required=True, validate=validate.Length(min=1, max=64))
    password = fields.String(required=True, validate=validate.Length(min=1, max=256), load_only=True)


class TokenPair(Schema):
    access_token = fields.String(required=True)
    refresh_token = fields.String()
    token_type = fields.String(required=True)
    user_id = fields.UUID()
    role = fields.String()


def tokens_for(user: User) -> dict:
    claims = {"role": user.role}
    return {
        "access_token": create_access_token(identity=str(user.id), additional_claims=claims),
        "refresh_token": create_refresh_token(identity=str(user.id), additional_claims=claims),
        "token_type": "Bearer",
        "user_id": user.id,
        "role": user.role,
    }


TOKEN_EXAMPLE = {"access_token": "eyJhbGciOiJIUzI1NiIs...", "refresh_token": "eyJhbGciOiJIUzI1NiIs...",
                 "token_type": "Bearer", "user_id": "3f1c2b9e-8d7a-4c55-9a41-0c7e2d6b1a90", "role": "fan"}


@blp.route("/login", methods=["POST"])
@public
@limiter.limit(login_limit)
@blp.arguments(LoginRequest, example={"username": "fan1", "password": "pw"})
@blp.response(200, TokenPair, example=TOKEN_EXAMPLE)
@error(401, "invalid_credentials", "Wrong username or password")
@rate_limited
def login(body):
    """Exchange a username and password for an access and a refresh token.

    Rate limited per client address (RATE_LIMIT_LOGIN)."""
    user = db().scalar(select(User).where(User.username == body["username"]))
    if user is None:
        dummy_password_check()
    if user is None or not user.is_active or not user.check_password(body["password"]):
        raise ApiError(401, "invalid_credentials", "Wrong username or password")
    return tokens_for(user)


@blp.route("/refresh", methods=["POST"])
@jwt_required(refresh=True)
@blp.response(200, TokenPair, example={k: v for k, v in TOKEN_EXAMPLE.items() if k != "refresh_token"})
@error(401, "unauthorized", "A bearer token is required",
       description="unauthorized, invalid_token, token_expired: send the refresh token as the bearer token")
def refresh():
    """A new access token for a valid refresh token (sent as `Authorization: Bearer <refresh token>`)."""
    user = db().get(User, uuid.UUID(get_jwt_identity()))
    if user is None or not user.is_active:
        raise ApiError(401, "unauthorized", "The account is not active")
    return {"access_token": tokens_for(user)["access_token"], "token_type": "Bearer", "user_id": user.id,
            "role": user.role}


def authenticate() -> None:
    """Who calls: from the platform's token (web/platform_auth.py) when the app trusts the platform and the
    token is not one of ours, else from our own token (flask-jwt-extended). Raises 401 (or 403 role_mismatch)."""
    platform = current_app.extensions.get("perfmenu_platform_tokens")
    token = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
    if platform is not None and token and is_platform_token(token):
        claims = platform.claims(token)
        with runtime().session_scope() as session:  # its own unit of work: the view's session starts clean
            user = platform_user(session, claims)
            g.identity = (user.id, user.role)
        return
    verify_jwt_in_request()
    g.identity = (uuid.UUID(get_jwt_identity()), get_jwt().get("role"))


def current_user_id() -> uuid.UUID:
    return g.identity[0]


def current_role() -> str:
    return g.identity[1]


def role_required(*roles: str):
    """Require a valid access token, and one of `roles` if any are given (documented as 401 and 403)."""

    def decorator(view):
        @wraps(view)
        def wrapper(*args, **kwargs):
            authenticate()
            if roles and current_role() not in roles:
                raise ApiError(403, "forbidden", "Your role may not do this")
            return view(*args, **kwargs)

        wrapper = error(401, "unauthorized", "A bearer token is required",
                        description="unauthorized, invalid_token, token_expired: no valid access token")(wrapper)
        if roles:
            wrapper = error(403, "forbidden", "Your role may not do this",
                            description=f"forbidden: only {', '.join(roles)} may do this")(wrapper)
        return wrapper

    return decorator


def init_jwt(app, settings) -> None:
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

    @jwt.revoked_token_loader
    def _revoked(_header, _payload):
        return error_response(401, "token_revoked", "The token has been revoked")

    @jwt.needs_fresh_token_loader
    def _stale(_header, _payload):
        return error_response(401, "fresh_token_required", "A fresh token is required")
