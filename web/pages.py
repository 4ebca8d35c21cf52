"""Pages a person uses (docs/architecture.md, "Pages"): the model's console, the fan page and the stream overlay.

Server-rendered shells (web/templates) with one script (web/static/pages.js) that calls the JSON API with the
sign-in cookies and redraws from what it reads whenever the event stream says something changed.

- Sign-in: POST /console/login (perfmenu credentials, or a platform token when platform identity is configured)
  opens a sign-in session like /auth/login and puts its tokens in HttpOnly cookies (web/auth.py). The login form
  is protected by a signed form token bound to a cookie (a cross-site page cannot post it); every other POST sent
  with the cookies needs the CSRF double-submit value. The access token expires after ACCESS_TOKEN_MINUTES: the
  script spends the refresh cookie at POST /console/refresh, and a page load does the same, so a console left
  open for hours keeps working.
- The overlay (an OBS browser source) opens without signing in: its URL holds the model's secret overlay key
  (models/shows.py; rotated or revoked from the console). What it reads (GET /overlay/state) is public by key:
  menus, what is performed now and next, the toy now playing, never fan ids, notes or anonymous buyers' names.

The pages blueprint is not part of the API (not in the OpenAPI document nor the auth matrix: tests/test_console.py
covers it); the model's overlay-link routes are (`blp`)."""
from __future__ import annotations

import json
import secrets
import uuid

from flask import Blueprint as FlaskBlueprint
from flask import abort, current_app, make_response, redirect, render_template, request, url_for
from flask_jwt_extended import get_jwt_identity, verify_jwt_in_request
from flask_jwt_extended.exceptions import JWTExtendedException
from itsdangerous import BadSignature, URLSafeTimedSerializer
from jwt import PyJWTError
from marshmallow import Schema, fields
from sqlalchemy import select
from sqlalchemy.orm import selectinload

from models import outbox
from models.audit import audit
from models.menus import Menu
from models.services.activations import timeline
from models.services.performance_queue import open_entries
from models.shows import OverlayLink, issue_overlay_key, model_for_overlay_key, open_show, revoke_overlay_key
from models.users import User, dummy_password_check, find_user_id

from .auth import (
    clear_session_cookies,
    cookie_secure,
    current_user_id,
    end_session,
    platform_tokens,
    refreshed_tokens,
    role_required,
    set_session_cookies,
    sign_in,
)
from .deps import db
from .errors import ApiError
from .events import issue_ticket
from .json_body import Blueprint
from .limits import login_limited
from .menus import shown
from .platform_auth import is_platform_token, platform_user

pages = FlaskBlueprint("pages", __name__)
blp = Blueprint("overlay_link", __name__, url_prefix="/overlay-link", description="The model's secret overlay URL")

LOGIN_NONCE_COOKIE = "perfmenu_login"
LOGIN_FORM_SECONDS = 3600
HOME = {"model": "/console", "fan": "/fan", "admin": "/docs"}
# Event types a page listens for (an EventSource hears only the named events it subscribed to).
STREAM_EVENTS = [*outbox.EVENT_TYPES, "queue.position", "end"]
NEXT_ENTRIES = 5  # entries after the one performed now that the overlay shows


# --- signing in --------------------------------------------------------------------------------------------------

def _form_signer() -> URLSafeTimedSerializer:
    return URLSafeTimedSerializer(current_app.config["JWT_SECRET_KEY"], salt="perfmenu-console-login")


def _local(next_url: str | None) -> str | None:
    """Only a path on this site (never //host or a scheme): no open redirect. Browsers drop tabs and line feeds
    from a URL (so "/\t/host" is "//host") and a header cannot hold them: any unprintable or blank character
    refuses the value."""
    if (next_url and next_url.startswith("/") and not next_url.startswith("//") and "\\" not in next_url
            and next_url.isprintable() and " " not in next_url):
        return next_url
    return None


def _login_page(error: str | None = None, status: int = 200):
    nonce = request.cookies.get(LOGIN_NONCE_COOKIE) or secrets.token_urlsafe(24)
    response = make_response(render_template(
        "login.html", form_token=_form_signer().dumps(nonce), error=error, next=_local(request.values.get("next")),
        platform=platform_tokens() is not None), status)
    response.set_cookie(LOGIN_NONCE_COOKIE, nonce, max_age=LOGIN_FORM_SECONDS, path="/console/login",
                        secure=cookie_secure(), httponly=True, samesite="Strict")
    return response


@pages.route("/console/login", methods=["GET"])
def login_form():
    return _login_page()


def _form_token_ok() -> bool:
    """The form's token was signed here for the nonce in this browser's cookie, within the hour."""
    try:
        nonce = _form_signer().loads(request.form.get("form_token", ""), max_age=LOGIN_FORM_SECONDS)
    except BadSignature:
        return False
    return secrets.compare_digest(str(nonce), request.cookies.get(LOGIN_NONCE_COOKIE, ""))


def _user_from_form(session) -> User | None:
    token = request.form.get("platform_token", "").strip()
    platform = platform_tokens()
    if token and platform is not None:
        if not is_platform_token(token):
            return None
        try:
            return platform_user(session, platform.claims(token))
        except ApiError:
            return None
    username, password = request.form.get("username", ""), request.form.get("password", "")
    if not 1 <= len(username) <= 64 or not 1 <= len(password) <= 256:  # /auth/login's LoginRequest bounds
        return None
    user = session.scalar(select(User).where(User.username == username))
    if user is None:
        dummy_password_check()
    # As /auth/login: the hash is checked for inactive users too, so timing does not tell them apart.
    if user is None or not user.check_password(password) or not user.is_active:
        return None
    return user


@pages.route("/console/login", methods=["POST"])
@login_limited
def login():
    if not _form_token_ok():
        return _login_page("The form expired: please sign in again.", 400)
    session = db()
    user = _user_from_form(session)
    if user is None:
        return _login_page("Wrong username or password.", 401)
    response = redirect(_local(request.form.get("next")) or HOME[user.role], 303)
    set_session_cookies(response, sign_in(session, user))
    response.delete_cookie(LOGIN_NONCE_COOKIE, path="/console/login", secure=cookie_secure(), httponly=True,
                           samesite="Strict")
    return response


@pages.route("/console/logout", methods=["POST"])
def logout():
    """End the sign-in session (as /auth/logout) and forget the cookies. The CSRF value is required: a form's
    `csrf_token` field or the X-CSRF-TOKEN header."""
    try:
        verify_jwt_in_request(locations=["cookies"])
        end_session(db())
    except (JWTExtendedException, PyJWTError):
        pass  # no usable access cookie: nothing to end here; the cookies go all the same
    response = redirect(url_for("pages.login_form"), 303)
    clear_session_cookies(response)
    return response


@pages.route("/console/refresh", methods=["POST"])
def refresh():
    """Spend the refresh cookie (X-CSRF-TOKEN: the refresh CSRF cookie's value) for new cookies: 204, or 401."""
    try:
        verify_jwt_in_request(refresh=True, locations=["cookies"])
    except (JWTExtendedException, PyJWTError):
        raise ApiError(401, "unauthorized", "Sign in again") from None
    tokens = refreshed_tokens(db())
    if tokens is None:
        raise ApiError(401, "token_revoked", "Sign in again")
    response = make_response("", 204)
    set_session_cookies(response, tokens)
    return response


def _signed_in() -> tuple[User | None, dict | None]:
    """The user of the access cookie; else of the refresh cookie, spent for new tokens (returned, for the answer's
    cookies); else (None, None)."""
    try:
        verify_jwt_in_request(locations=["cookies"])
        return db().get(User, uuid.UUID(get_jwt_identity())), None
    except (JWTExtendedException, PyJWTError):
        pass
    try:
        verify_jwt_in_request(refresh=True, locations=["cookies"])
    except (JWTExtendedException, PyJWTError):
        return None, None
    tokens = refreshed_tokens(db())
    return (db().get(User, tokens["user_id"]), tokens) if tokens else (None, None)


def _page(role: str, template: str, **context):
    user, tokens = _signed_in()
    if user is None:
        return redirect(url_for("pages.login_form", next=request.full_path.rstrip("?")), 303)
    if user.role != role:
        response = make_response(render_template("message.html", title="Not for this account", message=(
            f"This page is for a {role}; you are signed in as a {user.role}.")), 403)
    else:
        response = make_response(render_template(template, user=user, events=json.dumps(STREAM_EVENTS), **context))
    if tokens:
        set_session_cookies(response, tokens)
    return response


# --- the pages ---------------------------------------------------------------------------------------------------

@pages.route("/console", methods=["GET"])
def console():
    return _page("model", "console.html")


@pages.route("/fan", methods=["GET"])
def fan_page():
    """A model's menus with Buy buttons: `?model=<id>` (ours or the platform's)."""
    ref = request.args.get("model", "")
    model_id = find_user_id(db(), ref[:128]) if ref else None
    model = db().get(User, model_id) if model_id else None
    if model is not None and model.role != "model":
        model = None
    return _page("fan", "fan.html", model=model, model_ref=ref)


@pages.route("/overlay/<key>", methods=["GET"])
def overlay(key):
    if model_for_overlay_key(db(), key) is None:
        abort(404)
    return render_template("overlay.html", key=key, events=json.dumps(STREAM_EVENTS))


def _overlay_model(key) -> uuid.UUID:
    model_id = model_for_overlay_key(db(), key) if isinstance(key, str) else None
    if model_id is None:
        raise ApiError(404, "not_found", "No such overlay: the URL was replaced or revoked")
    return model_id


@pages.route("/overlay/state", methods=["GET"])
def overlay_state():
    """What the overlay shows (public by key, sent as X-Overlay-Key): never fan ids, notes or anonymous names."""
    return overlay_view(db(), _overlay_model(request.headers.get("X-Overlay-Key", "")))


@pages.route("/overlay/ticket", methods=["POST"])
def overlay_ticket():
    """A stream ticket for the overlay (the key in the JSON body, not the URL): its stream says only which kind of
    event happened (web/events.py, role "overlay")."""
    body = request.get_json(silent=True)
    key = body.get("key") if isinstance(body, dict) else None
    return issue_ticket(_overlay_model(key), "overlay", overlay_key=key), 201


def overlay_view(session, model_id) -> dict:
    show = open_show(session, model_id)
    live = show is not None and show.status == "live"
    menus = session.scalars(
        select(Menu).where(Menu.model_id == model_id, Menu.is_active, Menu.visibility == "public")
        .order_by(Menu.display_order, Menu.created_at).options(selectinload(Menu.items))).all()
    entries = open_entries(session, model_id)
    public = [p.fan_id for p in entries if not p.anonymous]
    names = dict(session.execute(select(User.id, User.display_name).where(User.id.in_(public))).all())

    def entry(p):  # the fan's display name only when they did not buy anonymously
        return {"item_name": p.item_name, "fan_display_name": None if p.anonymous else names.get(p.fan_id)}

    performing = entries[0] if entries and entries[0].status == "in_progress" else None
    playing = next((s for s in timeline(session, model_id) if s["status"] == "playing"), None)
    return {
        "live": live,
        "menus": [{"name": m.name, "queue_mode": m.queue_mode,
                   "items": [{"name": i.name, "token_value": i.token_value} for i in m.items if i.is_active]}
                  for m in menus if shown(m, owner_view=False, live=live)],
        "now_performing": entry(performing) if performing else None,
        "next": [entry(p) for p in entries if p.status == "queued"][:NEXT_ENTRIES],
        "toy": {"item_name": playing["item_name"], "ends_at": playing["ends_at"].isoformat()} if playing else None,
    }


# --- the model's overlay URL (API) -------------------------------------------------------------------------------

class OverlayLinkOut(Schema):
    active = fields.Boolean(required=True)
    created_at = fields.DateTime(allow_none=True)
    url = fields.String(metadata={"description": "only when just issued: the key is kept as a hash"})


LINK_EXAMPLE = {"active": True, "created_at": "2026-11-26T12:00:00+00:00"}


@blp.route("", methods=["GET"])
@role_required("model")
@blp.response(200, OverlayLinkOut, example=LINK_EXAMPLE)
def get_overlay_link():
    """Whether the caller has an overlay URL, and since when (the URL itself is shown only when issued)."""
    link = db().get(OverlayLink, current_user_id())
    return {"active": link is not None, "created_at": link.created_at if link else None}


@blp.route("", methods=["POST"])
@role_required("model")
@blp.response(201, OverlayLinkOut, example={**LINK_EXAMPLE, "url": "http://127.0.0.1:8000/overlay/Zm9vYmFy..."})
def rotate_overlay_link():
    """A new secret overlay URL for an OBS browser source; the previous one stops working."""
    session = db()
    model_id = current_user_id()
    key = issue_overlay_key(session, model_id)
    audit(session, "overlay.issued", model_id, model_id)
    session.commit()
    link = session.get(OverlayLink, model_id)
    return {"active": True, "created_at": link.created_at, "url": f"{request.host_url}overlay/{key}"}, 201


@blp.route("", methods=["DELETE"])
@role_required("model")
@blp.response(204)
def revoke_overlay_link():
    """Revoke the overlay URL: the page and its stream stop (the stream within a minute)."""
    session = db()
    model_id = current_user_id()
    revoke_overlay_key(session, model_id)
    audit(session, "overlay.revoked", model_id, model_id)
    session.commit()
    return "", 204


def register(app, api) -> None:
    app.register_blueprint(pages)
    api.register_blueprint(blp)
