"""Auth matrix: every route of the app x {no token, expired token, forged token, deactivated user, signed-out
(revoked) session, wrong role, another user's object} -> 401 / 401 / 401 / 401 / 401 / 403 / 404, with the error
envelope; once with perfmenu's own tokens and once with the host platform's (RS256, a platform id per user; the
platform ends its own sessions, so that run has no revoked column).

The routes come from `app.url_map`, so a new route cannot escape: a route without an entry in ROUTES fails
`test_every_route_has_an_entry` and its own parametrized case. Public routes are an explicit allow-list."""
from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import timedelta

import time

import jwt
import pytest
from conftest import SETTINGS, get_purchase, make_settings, new_session
from fake_platform import AUDIENCE, ISSUER, new_key, public_pem
from flask_jwt_extended import create_access_token, create_refresh_token

from models.auth_sessions import AuthSession, open_session
from models.users import User
from models.purchases import Purchase
from models.types import utcnow
from web import create_app
from web.queue_routes import REJECT_REASONS
from worker.tasks import settle

ANY = frozenset({"fan", "model", "admin"})
IGNORED_METHODS = {"HEAD", "OPTIONS"}
IGNORED_ENDPOINTS = {"static"}
# The HTML pages and their by-key overlay plumbing (web/pages.py): sign-in by cookie and overlay key, covered by
# tests/test_console.py; the API routes they call are in ROUTES.
IGNORED_BLUEPRINTS = ("pages.",)


@dataclass(frozen=True)
class Route:
    roles: frozenset = ANY  # roles allowed to call it; others get 403
    token: str = "access"  # "access", "refresh" or "any" (either of ours)
    # Path parameters naming an object that belongs to someone: any other non-admin caller gets 404.
    owned: tuple = ()
    body: dict = field(default_factory=dict)  # a minimal valid JSON body (built from the world if callable)


PUBLIC = None

MODEL, FAN, ADMIN = frozenset({"model"}), frozenset({"fan"}), frozenset({"admin"})
MENU_OWNED = Route(roles=MODEL, owned=("menu_id",))

# (method, rule) -> expectation. Add every new route here (the tests fail until you do).
ROUTES: dict[tuple[str, str], Route | None] = {
    ("POST", "/auth/login"): PUBLIC,
    ("GET", "/healthz"): PUBLIC,
    ("GET", "/readyz"): PUBLIC,
    ("GET", "/metrics"): PUBLIC,
    ("GET", "/openapi.json"): PUBLIC,
    ("GET", "/docs"): PUBLIC,
    ("GET", "/docs/assets/<name>"): PUBLIC,  # Swagger UI's own files
    ("POST", "/lovense/callback"): PUBLIC,  # Lovense's server calls it; verified by the utoken it carries
    ("POST", "/auth/refresh"): Route(token="refresh"),
    ("POST", "/auth/logout"): Route(token="any"),
    ("POST", "/admin/users/<user_ref>/deactivate"): Route(roles=ADMIN),
    ("POST", "/admin/users/<user_ref>/activate"): Route(roles=ADMIN),
    # Menus are shared objects: visibility (403 for hidden menus) is tested in test_access_and_limits.
    ("GET", "/menu/<uuid:menu_id>"): Route(),
    ("GET", "/menu/model/<model_id>"): Route(),
    ("POST", "/menu"): Route(roles=MODEL),
    ("PATCH", "/menu/<uuid:menu_id>"): MENU_OWNED,
    ("POST", "/menu/<uuid:menu_id>/activate"): MENU_OWNED,
    ("POST", "/menu/<uuid:menu_id>/deactivate"): MENU_OWNED,
    ("POST", "/menu/<uuid:menu_id>/duplicate"): MENU_OWNED,
    ("POST", "/menu/<uuid:menu_id>/items"): Route(roles=MODEL, owned=("menu_id",),
                                                  body={"name": "Wink", "token_value": 5}),
    ("PATCH", "/menu/<uuid:menu_id>/items/<uuid:item_id>"): MENU_OWNED,
    ("POST", "/menu/<uuid:menu_id>/items/<uuid:item_id>/activate"): MENU_OWNED,
    ("POST", "/menu/<uuid:menu_id>/items/<uuid:item_id>/deactivate"): MENU_OWNED,
    ("PUT", "/menu/<uuid:menu_id>/items/order"): Route(roles=MODEL, owned=("menu_id",),
                                                       body={"item_ids": ["{item_id}"]}),
    ("GET", "/menu/<uuid:menu_id>/whitelist"): MENU_OWNED,
    ("PUT", "/menu/<uuid:menu_id>/whitelist/<uuid:fan_id>"): MENU_OWNED,
    ("DELETE", "/menu/<uuid:menu_id>/whitelist/<uuid:fan_id>"): MENU_OWNED,
    ("POST", "/menu/purchase"): Route(roles=FAN, body={"menu_id": "{menu_id}", "item_id": "{item_id}"}),
    ("GET", "/menu/purchase/history"): Route(),
    ("GET", "/menu/purchase/<uuid:purchase_id>/status"): Route(owned=("purchase_id",)),
    ("GET", "/queue"): Route(roles=MODEL),
    ("POST", "/queue/<uuid:purchase_id>/start"): Route(roles=MODEL, owned=("purchase_id",)),
    ("POST", "/queue/<uuid:purchase_id>/complete"): Route(roles=MODEL, owned=("purchase_id",)),
    ("POST", "/queue/<uuid:purchase_id>/reject"): Route(roles=MODEL, owned=("purchase_id",),
                                                        body={"reason": sorted(REJECT_REASONS)[0]}),
    ("POST", "/queue/<uuid:purchase_id>/cancel"): Route(roles=FAN, owned=("purchase_id",)),
    ("POST", "/queue/pause"): Route(roles=MODEL),
    ("POST", "/queue/resume"): Route(roles=MODEL),
    ("GET", "/show"): Route(roles=MODEL),
    ("POST", "/show/start"): Route(roles=MODEL),
    ("POST", "/show/pause"): Route(roles=MODEL),
    ("POST", "/show/end"): Route(roles=MODEL),
    ("GET", "/wallet"): Route(),
    ("POST", "/admin/users"): Route(roles=ADMIN),
    ("POST", "/admin/users/<fan_ref>/top-up"): Route(roles=ADMIN),
    ("PUT", "/admin/subscriptions/<uuid:fan_id>/<uuid:model_id>"): Route(roles=ADMIN),
    ("DELETE", "/admin/subscriptions/<uuid:fan_id>/<uuid:model_id>"): Route(roles=ADMIN),
    ("POST", "/admin/purchases/<uuid:purchase_id>/refund"): Route(roles=ADMIN),
    ("GET", "/admin/purchases"): Route(roles=ADMIN),
    ("GET", "/admin/books"): Route(roles=ADMIN),
    ("POST", "/lovense/qr-code"): Route(roles=MODEL),
    ("GET", "/lovense/link"): Route(roles=MODEL),
    ("DELETE", "/lovense/link"): Route(roles=MODEL),
    ("GET", "/lovense/activations"): Route(roles=ADMIN),
    ("GET", "/lovense/timeline"): Route(roles=MODEL),
    ("GET", "/earnings"): Route(roles=MODEL),
    ("GET", "/admin/models/<model_ref>/earnings"): Route(roles=ADMIN),
    ("GET", "/admin/models/<model_ref>/commission"): Route(roles=ADMIN),
    ("PUT", "/admin/models/<model_ref>/commission"): Route(roles=ADMIN, body={"bps": 100}),
    ("POST", "/admin/models/<model_ref>/payouts"): Route(roles=ADMIN),
    ("GET", "/admin/revenue"): Route(roles=ADMIN),
    ("GET", "/admin/payables"): Route(roles=ADMIN),
    ("POST", "/lovense/activations/<uuid:purchase_id>/resend"): Route(roles=ADMIN),
    ("POST", "/events/ticket"): Route(),
    ("GET", "/events/stream"): Route(),  # or with a ticket instead of the token (test_events.py)
    ("GET", "/overlay-link"): Route(roles=MODEL),
    ("POST", "/overlay-link"): Route(roles=MODEL),
    ("DELETE", "/overlay-link"): Route(roles=MODEL),
    ("POST", "/admin/webhooks"): Route(roles=ADMIN),
    ("GET", "/admin/webhooks"): Route(roles=ADMIN),
    ("GET", "/admin/webhooks/<uuid:endpoint_id>"): Route(roles=ADMIN),
    ("POST", "/admin/webhooks/<uuid:endpoint_id>/disable"): Route(roles=ADMIN),
    ("POST", "/admin/webhooks/<uuid:endpoint_id>/enable"): Route(roles=ADMIN),
    ("POST", "/admin/webhooks/<uuid:endpoint_id>/rotate-secret"): Route(roles=ADMIN),
    ("POST", "/admin/webhooks/<uuid:endpoint_id>/replay"): Route(roles=ADMIN),
    ("GET", "/admin/webhooks/<uuid:endpoint_id>/deliveries"): Route(roles=ADMIN),
}


def app_routes(app) -> list[tuple[str, str]]:
    found = set()
    for rule in app.url_map.iter_rules():
        if rule.endpoint in IGNORED_ENDPOINTS or rule.endpoint.startswith(IGNORED_BLUEPRINTS):
            continue
        for method in rule.methods - IGNORED_METHODS:
            found.add((method, rule.rule))
    return sorted(found)


_APP = create_app(SETTINGS)
ALL_ROUTES = app_routes(_APP)
PROTECTED = [r for r in ALL_ROUTES if ROUTES.get(r, "missing") is not PUBLIC]


def test_every_route_has_an_entry():
    missing = [r for r in ALL_ROUTES if r not in ROUTES]
    assert missing == [], f"routes without an auth-matrix entry in tests/test_auth_matrix.py: {missing}"


def test_public_allow_list_is_small():
    public = {r for r in ALL_ROUTES if r in ROUTES and ROUTES[r] is PUBLIC}
    assert {path for _m, path in public} <= {"/auth/login", "/healthz", "/readyz", "/openapi.json", "/docs",
                                             "/docs/assets/<name>", "/metrics"} | {p for _m, p in public if p.startswith("/lovense/")}


class World:
    """Real objects owned by a fan and a model; the callers are other users."""

    def __init__(self, factory):
        self.factory = factory
        self.owner_fan = factory.user("fan", tokens=100)
        self.owner_model = factory.user("model")
        self.menu = factory.menu(self.owner_model, items=[{"name": "Kiss", "token_value": 10}], queue_mode="ON")
        self.item = self.menu.created_items[0]
        s = new_session()
        try:
            now = utcnow()
            p = Purchase(fan_id=self.owner_fan.id, model_id=self.owner_model.id, menu_id=self.menu.id,
                         item_id=self.item.id, item_name="Kiss", token_value=10, loyalty_points=0,
                         transaction_type="queued", purchase_day=now.date(), created_at=now)
            s.add(p)
            s.commit()
            self.purchase_id = p.id
        finally:
            s.close()
        settle([self.purchase_id])  # the worker's settlement, in process: a real queued entry in escrow
        assert get_purchase(self.purchase_id).status == "queued"
        self.callers = {role: factory.user(role) for role in ANY}

    def params(self) -> dict[str, uuid.UUID]:
        return {
            "menu_id": self.menu.id,
            "item_id": self.item.id,
            "model_id": self.owner_model.id,
            "fan_id": self.owner_fan.id,
            "fan_ref": self.owner_fan.id,
            "user_id": self.owner_fan.id,
            "user_ref": self.owner_fan.id,
            "model_ref": self.owner_model.id,
            "purchase_id": self.purchase_id,
            "endpoint_id": uuid.uuid4(),
        }


def build_path(rule: str, params: dict) -> str:
    out = rule
    for part in rule.split("<")[1:]:
        spec = part.split(">")[0]
        name = spec.split(":")[-1]
        assert name in params, f"the auth matrix does not know how to build path parameter {name!r} of {rule}"
        out = out.replace(f"<{spec}>", str(params[name]))
    return out


def token_for(app, user, kind="access", expires=None, session_id=None) -> str:
    """A token as login issues it, in a sign-in session of its own (or `session_id`'s)."""
    s = new_session()
    try:
        row = s.get(AuthSession, session_id) if session_id else open_session(s, user.id, timedelta(days=1))
        s.commit()
        claims = {"role": user.role, "sid": str(row.id)}
        if kind == "refresh":
            claims["jti"] = row.refresh_jti
    finally:
        s.close()
    make = create_refresh_token if kind == "refresh" else create_access_token
    with app.app_context():
        return make(identity=str(user.id), additional_claims=claims, expires_delta=expires)


def set_active(user, active: bool) -> None:
    s = new_session()
    try:
        s.get(User, user.id).is_active = active
        s.commit()
    finally:
        s.close()


def sign_out(app, user, kind) -> str:
    """A token of a session that has been signed out (POST /auth/logout)."""
    token = token_for(app, user, kind)
    r = app.test_client().post("/auth/logout", headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 204, r.get_json()
    return token


def assert_code(r, status, code):
    assert_error(r, status)
    assert r.get_json()["error"]["code"] == code, r.get_json()


def call(client, method, path, route: Route, params, token=None):
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    def fill(v):
        if isinstance(v, list):
            return [fill(x) for x in v]
        return v.format(**params) if isinstance(v, str) else v

    body = {k: fill(v) for k, v in route.body.items()}
    return client.open(path, method=method, headers=headers, json=body if method in ("POST", "PUT", "PATCH") else None)


def assert_error(r, status):
    assert r.status_code == status, (r.status_code, r.get_json())
    body = r.get_json()
    assert set(body["error"]) >= {"code", "message"}, body


@pytest.mark.parametrize("method,rule", PROTECTED, ids=[f"{m} {p}" for m, p in PROTECTED])
def test_route_refuses_missing_expired_forged_tokens_wrong_roles_and_others_objects(app, client, factory, method,
                                                                                       rule):
    assert (method, rule) in ROUTES, f"add {method} {rule} to ROUTES in tests/test_auth_matrix.py"
    route = ROUTES[(method, rule)]
    world = World(factory)
    params = world.params()
    path = build_path(rule, params)
    some_caller = world.callers[sorted(route.roles)[0]]

    assert_error(call(client, method, path, route, params), 401)
    expired = token_for(app, some_caller, route.token, expires=timedelta(seconds=-30))
    assert_error(call(client, method, path, route, params, expired), 401)
    forged = token_for(app, some_caller, route.token)[:-4] + "AAAA"
    assert_error(call(client, method, path, route, params, forged), 401)
    if route.token == "refresh":  # an access token where a refresh token is required
        assert_error(call(client, method, path, route, params, token_for(app, some_caller)), 401)
    elif route.token == "access":  # a refresh token is not an access token
        assert_error(call(client, method, path, route, params, token_for(app, some_caller, "refresh")), 401)
    # Deactivated: the token they already hold is refused on the next request; signed out: the same.
    inactive = world.factory.user(sorted(route.roles)[0])
    token = token_for(app, inactive, route.token)
    set_active(inactive, False)
    assert_code(call(client, method, path, route, params, token), 401, "account_inactive")
    revoked = sign_out(app, world.factory.user(sorted(route.roles)[0]), route.token)
    assert_code(call(client, method, path, route, params, revoked), 401, "token_revoked")

    assert_roles_and_owners(client, method, path, route, params, world,
                             lambda user: token_for(app, user, route.token))


def assert_roles_and_owners(client, method, path, route, params, world, token_of):
    """Other roles get 403, other users of the role 404 for an owned object; the owner or an allowed caller gets
    past auth (the positive control)."""
    for role in ANY - route.roles:
        assert_error(call(client, method, path, route, params, token_of(world.callers[role])), 403)
    if route.owned:
        for role in route.roles - {"admin"}:
            assert_error(call(client, method, path, route, params, token_of(world.callers[role])), 404)
        owner = world.owner_fan if "fan" in route.roles else world.owner_model
        r = call(client, method, path, route, params, token_of(owner))
        assert r.status_code not in (401, 403, 404), (r.status_code, r.get_json())
    else:
        r = call(client, method, path, route, params, token_of(world.callers[sorted(route.roles)[0]]))
        assert r.status_code not in (401, 403), (r.status_code, r.get_json())


def test_token_of_a_deactivated_user_cannot_refresh(app, client, factory):
    fan = factory.user("fan")
    token = token_for(app, fan, "refresh")
    set_active(fan, False)
    assert_code(client.post("/auth/refresh", headers={"Authorization": f"Bearer {token}"}), 401, "account_inactive")


def test_a_token_without_a_sign_in_session_is_refused(app, client, factory):
    """Tokens from before sessions existed (no `sid`) are refused: signing in again gives one that works."""
    fan = factory.user("fan")
    with app.app_context():
        old = create_access_token(identity=str(fan.id), additional_claims={"role": "fan"})
    assert_code(client.get("/wallet", headers={"Authorization": f"Bearer {old}"}), 401, "token_revoked")
    assert client.get("/wallet", headers=factory.headers(fan)).status_code == 200


PLATFORM_KEY, OTHER_KEY = new_key(), new_key()


def platform_token(user, expires_in=300, key=PLATFORM_KEY) -> str:
    """The platform's token for `user`, who is given a platform id (its own, ObjectId-like) first."""
    external_id = user.id.hex[:24]
    s = new_session()
    try:
        s.get(User, user.id).external_id = external_id
        s.commit()
    finally:
        s.close()
    claims = {"iss": ISSUER, "aud": AUDIENCE, "sub": external_id, "role": user.role,
              "exp": int(time.time()) + expires_in}
    return jwt.encode(claims, key, algorithm="RS256")


@pytest.mark.parametrize("method,rule", PROTECTED, ids=[f"{m} {p}" for m, p in PROTECTED])
def test_route_refuses_the_platforms_expired_and_forged_tokens_wrong_roles_and_others_objects(factory, method,
                                                                                           rule):
    client = create_app(make_settings(platform_jwt_public_key=public_pem(PLATFORM_KEY), platform_jwt_issuer=ISSUER,
                                      platform_jwt_audience=AUDIENCE)).test_client()
    route = ROUTES[(method, rule)]
    world = World(factory)
    params = world.params()
    path = build_path(rule, params)
    some_caller = world.callers[sorted(route.roles)[0]]

    assert_error(call(client, method, path, route, params, platform_token(some_caller, expires_in=-30)), 401)
    assert_error(call(client, method, path, route, params, platform_token(some_caller, key=OTHER_KEY)), 401)
    inactive = world.factory.user(sorted(route.roles)[0])
    token = platform_token(inactive)
    set_active(inactive, False)
    expected = "invalid_token" if route.token == "refresh" else "account_inactive"
    assert_code(call(client, method, path, route, params, token), 401, expected)
    if route.token == "refresh":  # the platform's tokens are never perfmenu's refresh tokens
        assert_error(call(client, method, path, route, params, platform_token(some_caller)), 401)
        return
    assert_roles_and_owners(client, method, path, route, params, world, platform_token)
