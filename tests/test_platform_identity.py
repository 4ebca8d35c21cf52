"""Issue 13: perfmenu trusts the host platform's own access tokens (RS256/ES256), with the platform's keys
served as JWKS by a real HTTP server on 127.0.0.1 (tests/fake_platform.py)."""
from __future__ import annotations

import time
import uuid

import jwt
import pytest
from conftest import make_settings, new_session
from fake_platform import AUDIENCE, ISSUER, FakePlatform, new_key, public_pem
from sqlalchemy import select

from models.users import User
from web import create_app

FAN_OBJECT_ID = "65a1f0c2e4b0a1b2c3d4e5f6"
MODEL_OBJECT_ID = "65a1f0c2e4b0a1b2c3d4e5f7"
ADMIN_OBJECT_ID = "65a1f0c2e4b0a1b2c3d4e5f8"


@pytest.fixture
def platform():
    fake = FakePlatform()
    fake.add_key("k1")
    yield fake
    fake.stop()


@pytest.fixture
def platform_client(platform, database):
    app = create_app(make_settings(platform_jwt_jwks_url=platform.jwks_url, platform_jwt_issuer=ISSUER,
                                   platform_jwt_audience=AUDIENCE))
    return app.test_client()


def bearer(token) -> dict:
    return {"Authorization": f"Bearer {token}"}


def platform_user(external_id) -> User | None:
    s = new_session()
    try:
        return s.scalar(select(User).where(User.external_id == external_id))
    finally:
        s.close()


@pytest.mark.usefixtures("celery_worker")
def test_a_fan_known_only_from_a_platform_token_buys_and_it_settles(platform, platform_client, factory):
    fan_token = platform.token(FAN_OBJECT_ID, "user", "k1", name="Ana")
    model_token = platform.token(MODEL_OBJECT_ID, "performer", "k1")
    admin_token = platform.token(ADMIN_OBJECT_ID, "admin", "k1")

    # The platform's model creates a menu; fans find it under the platform's id of the model.
    r = platform_client.post("/menu", json={"name": "Live", "items": [{"name": "Dance", "token_value": 50,
                                                                       "bonus_loyalty_points": 5}]},
                             headers=bearer(model_token))
    assert r.status_code == 201, r.json
    menus = platform_client.get(f"/menu/model/{MODEL_OBJECT_ID}", headers=bearer(fan_token)).json
    assert [m["name"] for m in menus] == ["Live"]
    assert platform_client.post("/show/start", headers=bearer(model_token)).json["live"]  # Queue OFF: a show

    # The platform tops its fan up with its own admin token and its own id of the fan (created on first sight).
    r = platform_client.post(f"/admin/users/{FAN_OBJECT_ID}/top-up", json={"amount": 100},
                             headers={**bearer(admin_token), "Idempotency-Key": "signup-bonus"})
    assert r.status_code == 201, r.json
    fan = platform_user(FAN_OBJECT_ID)
    assert (fan.role, r.json["fan_id"], r.json["token_balance"]) == ("fan", str(fan.id), 100)

    r = platform_client.post("/menu/purchase", json={"menu_id": menus[0]["_id"],
                                                     "menu_item_id": menus[0]["menu_items"][0]["_id"],
                                                     "idempotency_key": "p-1"}, headers=bearer(fan_token))
    assert r.status_code == 200 and r.json["status"] == "completed", r.json
    assert r.json["user_id"] == str(fan.id)
    assert platform_client.get("/wallet", headers=bearer(fan_token)).json["token_balance"] == 50
    model = platform_user(MODEL_OBJECT_ID)
    assert (model.role, model.display_name) == ("model", None)
    assert fan.display_name == "Ana" and fan.username == f"platform:{FAN_OBJECT_ID}"
    # One user per platform id, however many requests.
    s = new_session()
    try:
        assert len(s.scalars(select(User).where(User.external_id.is_not(None))).all()) == 3
    finally:
        s.close()


def test_keys_are_cached_and_fetched_again_for_an_unknown_kid(platform, platform_client):
    wallet = lambda token: platform_client.get("/wallet", headers=bearer(token))  # noqa: E731
    assert wallet(platform.token(FAN_OBJECT_ID, "fan", "k1")).status_code == 200
    assert wallet(platform.token(FAN_OBJECT_ID, "fan", "k1", jti="another")).status_code == 200
    assert platform.fetches == 1  # cached

    # Rotation: the platform publishes k2 (an EC key) and drops k1. A token naming k2 makes us fetch again.
    platform.add_key("k2", "EC", publish=False)
    platform.published = ["k2"]
    time.sleep(1.1)  # unknown kids fetch the set again at most once a second (web/platform_auth.py)
    assert wallet(platform.token(FAN_OBJECT_ID, "fan", "k2")).status_code == 200
    assert platform.fetches == 2
    # k1 is gone from the set we hold now: its new tokens are refused, without fetching on every request.
    r = wallet(platform.token(FAN_OBJECT_ID, "fan", "k1", jti="after-rotation"))
    assert r.status_code == 401 and r.json["error"]["code"] == "invalid_token"
    for n in range(3):
        r = wallet(platform.token(FAN_OBJECT_ID, "fan", f"unknown-{n}", key=platform.keys["k2"]))
        assert r.status_code == 401
    assert platform.fetches == 2


def refusals(platform):
    other_key = new_key()
    return {
        "wrong issuer": platform.token(FAN_OBJECT_ID, "fan", "k1", iss="https://evil.example"),
        "wrong audience": platform.token(FAN_OBJECT_ID, "fan", "k1", aud="someone-else"),
        "no audience": platform.token(FAN_OBJECT_ID, "fan", "k1", aud=None),
        "forged signature": platform.token(FAN_OBJECT_ID, "fan", "k1", key=other_key),
        "RS512": platform.token(FAN_OBJECT_ID, "fan", "k1", alg="RS512"),
        "alg none": jwt.encode({"iss": ISSUER, "aud": AUDIENCE, "sub": FAN_OBJECT_ID, "role": "fan",
                                "exp": int(time.time()) + 60}, None, algorithm="none", headers={"kid": "k1"}),
        "HS256 keyed with the public key": jwt.encode(
            {"iss": ISSUER, "aud": AUDIENCE, "sub": FAN_OBJECT_ID, "role": "fan", "exp": int(time.time()) + 60},
            public_pem(platform.keys["k1"]).encode()[:64], algorithm="HS256", headers={"kid": "k1"}),
        "unknown role": platform.token(FAN_OBJECT_ID, "superuser", "k1"),
        "no user": platform.token(None, "fan", "k1"),
        "expired": platform.token(FAN_OBJECT_ID, "fan", "k1", expires_in=-30),
        "garbage": "not.a.token",
    }


def test_every_refusal_is_401_and_creates_nobody(platform, platform_client):
    for name, token in refusals(platform).items():
        r = platform_client.get("/wallet", headers=bearer(token))
        assert r.status_code == 401, (name, r.status_code, r.json)
        expected = "token_expired" if name == "expired" else "invalid_token"
        assert r.json["error"]["code"] == expected, (name, r.json)
    assert platform_user(FAN_OBJECT_ID) is None


def test_a_role_other_than_the_accounts_is_403(platform, platform_client):
    assert platform_client.get("/wallet", headers=bearer(platform.token(FAN_OBJECT_ID, "fan", "k1"))).status_code == 200
    r = platform_client.get("/wallet", headers=bearer(platform.token(FAN_OBJECT_ID, "model", "k1")))
    assert r.status_code == 403 and r.json["error"]["code"] == "role_mismatch"


def test_our_own_tokens_keep_working_beside_the_platforms(platform, platform_client, factory):
    fan = factory.user("fan", tokens=5)
    r = platform_client.post("/auth/login", json={"username": fan.username, "password": "pw"})
    assert r.status_code == 200
    assert platform_client.get("/wallet", headers=bearer(r.json["access_token"])).json["token_balance"] == 5


def test_unreachable_keys_answer_503_to_retry(platform, platform_client):
    platform.down = True
    r = platform_client.get("/wallet", headers=bearer(platform.token(FAN_OBJECT_ID, "fan", "k1")))
    assert r.status_code == 503 and r.headers["Retry-After"] == "1", r.json


def test_a_single_public_key_works_without_jwks(database):
    key = new_key("EC")
    app = create_app(make_settings(platform_jwt_public_key=public_pem(key), platform_jwt_issuer=ISSUER,
                                   platform_jwt_audience=AUDIENCE))
    token = jwt.encode({"iss": ISSUER, "aud": AUDIENCE, "sub": "42", "role": "fan", "exp": int(time.time()) + 60},
                       key, algorithm="ES256")
    r = app.test_client().get("/wallet", headers=bearer(token))
    assert r.status_code == 200 and r.json["role"] == "fan", r.json
    assert uuid.UUID(r.json["user_id"]) == platform_user("42").id


def test_without_platform_settings_a_platform_token_is_refused(platform, client):
    r = client.get("/wallet", headers=bearer(platform.token(FAN_OBJECT_ID, "fan", "k1")))
    assert r.status_code == 401
    assert platform_user(FAN_OBJECT_ID) is None


def test_a_hanging_key_server_costs_one_request_a_timeout_not_every_request(platform, database):
    """Issue 28, item 6: after a failed fetch with keys held, every request was "stale" and fetched again, one
    after the other under one lock with a 5 s timeout (10 requests took 5-25 s). Now one request fetches at a
    time, the others answer from the keys held, and a failed fetch is not tried again for 30 s."""
    from concurrent.futures import ThreadPoolExecutor

    app = create_app(make_settings(platform_jwt_jwks_url=platform.jwks_url, platform_jwt_issuer=ISSUER,
                                   platform_jwt_audience=AUDIENCE, platform_jwks_cache_seconds=1))
    tokens = [platform.token(FAN_OBJECT_ID, "fan", "k1", jti=str(n)) for n in range(20)]

    def timed_wallet(token):
        started = time.monotonic()
        status = app.test_client().get("/wallet", headers=bearer(token)).status_code
        return status, time.monotonic() - started

    assert timed_wallet(tokens[0])[0] == 200  # keys held
    platform.hang_seconds = 10  # longer than our read timeout: the fetch fails
    time.sleep(1.2)  # the keys are stale now
    with ThreadPoolExecutor(10) as pool:
        first_wave = list(pool.map(timed_wallet, tokens[1:11]))
        second_wave = list(pool.map(timed_wallet, tokens[11:]))
    assert all(status == 200 for status, _ in first_wave + second_wave)
    slow = [seconds for _, seconds in first_wave if seconds > 1]
    assert len(slow) <= 1 and max(seconds for _, seconds in first_wave) < 4, first_wave  # one fetch, cut at 3 s
    assert max(seconds for _, seconds in second_wave) < 1, second_wave  # no fetch again so soon
    assert platform.fetches == 2
