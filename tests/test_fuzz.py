"""Fuzzing the OpenAPI document with schemathesis, signed in as each role: no 5xx, every response conforms to
the documented schema and status codes, every 4xx carries the error envelope. Bounded examples in the normal
run; more under `-m slow`. schemathesis draws only UTF-8 text and shallow bodies; hooks on our schema widen
that: strings with lone surrogates and control characters, JSON bodies nested thousands deep (tests/hostile.py).

Plus targeted hostile input: bad JSON, a body over MAX_CONTENT_LENGTH, wrong types, unknown fields, non-UUID
ids, negative and huge numbers -> a clear 4xx with the error envelope, and no row written."""
from __future__ import annotations

import logging
import os
from collections import Counter

import pytest
import schemathesis
from hostile import CONTROL_TEXT, DEEP_BODIES, WIDE_TEXT, assert_clear_answer, public_requests
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from schemathesis import checks
from sqlalchemy import func, select, text

from conftest import make_settings, new_session
from models.db import Base
from web import create_app

FAST_EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "10"))
SLOW_EXAMPLES = int(os.environ.get("FUZZ_SLOW_EXAMPLES", "400"))


# The document is read from an app built at import (conftest has set the environment); requests go to it too. An
# event stream never ends: schemathesis reads it for STREAM_SECONDS, which a heartbeat this often lets it check.
STREAM_SECONDS = 1
schema = schemathesis.openapi.from_wsgi("/openapi.json", create_app(make_settings(stream_heartbeat_seconds=0.2)))


def _widened(value):
    """The generated value, each string of it possibly swapped for wide text (and an object possibly given a
    wide key)."""
    if isinstance(value, str):
        return st.one_of(st.just(value), WIDE_TEXT)
    if isinstance(value, list):
        return st.tuples(*map(_widened, value)).map(list)
    if isinstance(value, dict):
        fields = st.fixed_dictionaries({key: _widened(item) for key, item in value.items()})
        extra = st.dictionaries(WIDE_TEXT, WIDE_TEXT, max_size=1)
        return st.tuples(fields, extra).map(lambda pair: {**pair[0], **pair[1]})
    return st.just(value)


@schema.hook
def flatmap_body(_context, body):
    # As generated, widened, or replaced by JSON nested thousands deep (bytes, sent as they are).
    return st.one_of(st.just(body), _widened(body), DEEP_BODIES)


@schema.hook
def flatmap_query(_context, query):
    return st.one_of(st.just(query), st.fixed_dictionaries(
        {name: st.one_of(st.just(value), CONTROL_TEXT) for name, value in (query or {}).items()}))


@pytest.fixture
def role_headers(factory):
    fan, model, admin = factory.user("fan", tokens=1000), factory.user("model"), factory.user("admin")
    factory.menu(model, items=[{"name": "Kiss", "token_value": 10}])
    return {"fan": factory.headers(fan), "model": factory.headers(model), "admin": factory.headers(admin)}


def row_counts() -> dict[str, int]:
    s = new_session()
    try:
        return {t.name: s.scalar(select(func.count()).select_from(t)) for t in Base.metadata.sorted_tables}
    finally:
        s.close()


# Left out: positive_data_acceptance (random ids answer 404, cross-field rules 422: both right) and
# negative_data_rejection (marshmallow accepts 0/1 for booleans and "12" for integers: lenient, not unsafe).
EXCLUDED_CHECKS = [checks.positive_data_acceptance, checks.negative_data_rejection]


TALLY = Counter()  # what the fuzz run sent and got, printed at the end (`make proof` shows it)


def _kind(body) -> str:
    if isinstance(body, bytes):
        return "deep"
    return "surrogate" if _has_surrogate(body) else "other"


def _has_surrogate(value) -> bool:
    if isinstance(value, str):
        return not value.isascii() and any(0xD800 <= ord(c) <= 0xDFFF for c in value)
    if isinstance(value, dict):
        return any(_has_surrogate(k) or _has_surrogate(v) for k, v in value.items())
    if isinstance(value, list):
        return any(map(_has_surrogate, value))
    return False


def _check(case, role_headers):
    for role in ("fan", "model", "admin"):
        response = case.call_and_validate(headers=role_headers[role], excluded_checks=EXCLUDED_CHECKS,
                                         timeout=STREAM_SECONDS)
        TALLY["requests"] += 1
        TALLY[f"{_kind(case.body)} bodies"] += 1
        TALLY["server errors"] += response.status_code >= 500
        assert_clear_answer(response.status_code, response.content, None, f"{role} {case.method} {case.path}")


@pytest.fixture(scope="module", autouse=True)
def fuzz_tally():
    yield
    if TALLY["requests"]:
        print(f"\nfuzz: {TALLY['requests']} requests ({TALLY['surrogate bodies']} with lone surrogates, "
              f"{TALLY['deep bodies']} nested thousands deep), server errors: {TALLY['server errors']}")


@schema.parametrize()
@settings(max_examples=FAST_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
def test_fuzz_api(case, role_headers):
    _check(case, role_headers)


@pytest.mark.slow
@schema.parametrize()
@settings(max_examples=SLOW_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
def test_fuzz_api_long(case, role_headers):
    _check(case, role_headers)


# --- targeted hostile input -------------------------------------------------------------------------------


@pytest.fixture
def shop(factory):
    fan, model = factory.user("fan", tokens=100), factory.user("model")
    menu = factory.menu(model, items=[{"name": "Kiss", "token_value": 10}])
    return {"headers": factory.headers(fan), "menu": menu, "item": menu.created_items[0]}


def assert_envelope(r, *statuses):
    assert r.status_code in statuses, (r.status_code, r.get_data(as_text=True)[:300])
    body = r.get_json()
    assert isinstance(body, dict) and isinstance(body.get("error"), dict), r.get_data(as_text=True)[:300]
    assert body["error"]["code"] and body["error"]["message"]


def post_raw(client, headers, data, content_type="application/json"):
    return client.post("/menu/purchase", data=data, headers={**headers, "Content-Type": content_type})


@pytest.mark.parametrize(
    "data,content_type,statuses",
    [
        ("{not json", "application/json", (400, 422)),
        ('{"menu_id": ', "application/json", (400, 422)),
        ("", "application/json", (400, 422)),
        ("null", "application/json", (400, 422)),
        ("[]", "application/json", (400, 422)),
        ('"a string"', "application/json", (400, 422)),
        ("12", "application/json", (400, 422)),
        ("\xff\xfe garbage", "application/json", (400, 422)),
        ('{"menu_id": "x"}', "text/plain", (400, 415, 422)),
        ("menu_id=1&item_id=2", "application/x-www-form-urlencoded", (400, 415, 422)),
    ],
)
def test_malformed_bodies_get_a_clear_4xx_and_write_nothing(client, shop, data, content_type, statuses):
    before = row_counts()
    assert_envelope(post_raw(client, shop["headers"], data, content_type), *statuses)
    assert row_counts() == before


def test_body_over_max_content_length_is_413(client, app, shop):
    before = row_counts()
    huge = '{"menu_id": "' + "a" * (app.config["MAX_CONTENT_LENGTH"] + 10) + '"}'
    assert_envelope(post_raw(client, shop["headers"], huge), 413)
    # Also on the public login route, before any authentication.
    r = client.post("/auth/login", data=huge, headers={"Content-Type": "application/json"})
    assert_envelope(r, 413)
    assert row_counts() == before


def _purchase_bodies(shop):
    menu, item = str(shop["menu"].id), str(shop["item"].id)
    return [
        {"menu_id": 123, "item_id": item},
        {"menu_id": menu, "item_id": None},
        {"menu_id": [menu], "item_id": item},
        {"menu_id": {"id": menu}, "item_id": item},
        {"menu_id": "not-a-uuid", "item_id": item},
        {"menu_id": menu, "item_id": "' OR 1=1 --"},
        {"menu_id": menu},
        {},
        {"menu_id": menu, "item_id": item, "idempotency_key": ""},
        {"menu_id": menu, "item_id": item, "idempotency_key": "k" * 129},
        {"menu_id": menu, "item_id": item, "idempotency_key": 12},
        {"menu_id": menu, "item_id": item, "idempotency_key": ["a"]},
        {"menu_id": "00000000-0000-0000-0000-000000000000", "item_id": item},
    ]


def test_wrong_types_and_bad_ids_in_a_purchase_get_4xx_and_write_nothing(client, shop):
    for body in _purchase_bodies(shop):
        before = row_counts()
        assert_envelope(client.post("/menu/purchase", json=body, headers=shop["headers"]), 400, 404, 422)
        assert row_counts() == before, body


def test_unknown_fields_and_client_prices_are_ignored(client, shop):
    body = {"menu_id": str(shop["menu"].id), "item_id": str(shop["item"].id), "token_value": -5, "price": 0,
            "amount": 10**30, "status": "completed", "fan_id": "00000000-0000-0000-0000-000000000000"}
    r = client.post("/menu/purchase", json=body, headers={**shop["headers"], "Idempotency-Key": "unknown-1"})
    assert r.status_code in (200, 202), r.get_json()
    assert r.get_json()["token_value"] == 10


@pytest.mark.parametrize(
    "path",
    [
        "/menu/not-a-uuid",
        "/menu/model/123",
        "/menu/purchase/not-a-uuid/status",
        "/menu/purchase/00000000-0000-0000-0000-000000000000/status",
        "/menu/%00/status",
        "/menu/" + "a" * 5000,
    ],
)
def test_non_uuid_and_unknown_ids_are_404_with_the_envelope(client, shop, path):
    assert_envelope(client.get(path, headers=shop["headers"]), 404)


@pytest.mark.parametrize(
    "query",
    ["limit=-1", "limit=0", "offset=-5", "limit=abc", "offset=1e9", "offset=99999999999999999999999", "limit=1.5", "limit=", "offset=%00"],
)
def test_bad_paging_numbers_are_422(client, shop, query):
    assert_envelope(client.get(f"/menu/purchase/history?{query}", headers=shop["headers"]), 400, 422)


def test_huge_limit_is_capped_not_refused(client, shop):
    r = client.get("/menu/purchase/history?limit=1000000", headers=shop["headers"])
    assert r.status_code == 200 and r.get_json()["limit"] == 100


def test_login_with_hostile_input(client, database):
    for body in ({"username": ["a"], "password": "x"}, {"username": "a" * 10000, "password": "x"},
                 {"username": "a\x00b", "password": "x"}, {"username": "a", "password": None}, {}):
        r = client.post("/auth/login", json=body)
        assert_envelope(r, 400, 401, 422)
    assert_envelope(client.post("/auth/login", data="nope", headers={"Content-Type": "application/json"}), 400, 422)


def test_no_table_is_left_locked_after_hostile_input(client, shop, database):
    test_wrong_types_and_bad_ids_in_a_purchase_get_4xx_and_write_nothing(client, shop)
    with database.connect() as conn:
        idle = conn.execute(text(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND state = 'idle in transaction'"
        )).scalar()
    assert idle == 0


# --- regressions for what the fuzzing found -----------------------------------------------------------------


def test_405_carries_the_allow_header(client, database):
    r = client.delete("/wallet")
    assert_envelope(r, 405)
    assert "GET" in r.headers["Allow"]


def test_openapi_documents_our_error_envelope(client, database):
    doc = client.get("/openapi.json").get_json()
    assert doc["components"]["responses"]["DEFAULT_ERROR"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/ErrorOut"}
    error = doc["components"]["schemas"]["ErrorOut"]
    assert "error" in error["properties"] and "fields" in error["properties"]
    assert error["additionalProperties"] is True


def test_nul_character_reaching_the_database_is_422_not_500(client, shop):
    before = row_counts()
    r = client.post("/menu/purchase", json={"menu_id": str(shop["menu"].id), "item_id": str(shop["item"].id),
                                            "idempotency_key": "a\x00b"}, headers=shop["headers"])
    assert_envelope(r, 422)
    assert row_counts() == before


def test_verdict_wait_longer_than_the_redis_socket_timeout_is_not_an_error(database):
    import uuid

    from conftest import RUNTIME

    from models.services.verdicts import wait_for_verdict

    # The client's socket timeout is 5 s: a longer BLPOP used to raise (a 500 for a committed purchase).
    assert wait_for_verdict(RUNTIME.redis, uuid.uuid4(), 6) is None


# Issue 20, items 1 and 2: a lone surrogate in a JSON string, and JSON nested thousands deep, answered 500.
SURROGATE = '"x\\ud800"'
DEEP = "[" * 30_000 + "]" * 30_000  # 60 KB: under MAX_CONTENT_LENGTH
HOSTILE_BODIES = {
    ("POST", "/auth/login", None): '{"username": %s, "password": "x"}',
    ("POST", "/lovense/callback", None): '{"uid": "u", "utoken": %s}',
    ("POST", "/menu/purchase", "fan"): '{"menu_id": "m", "menu_item_id": "i", "idempotency_key": %s}',
    ("POST", "/menu", "model"): '{"name": %s}',
    ("POST", "/admin/users", "admin"): '{"username": %s, "password": "long-enough", "role": "fan"}',
}


@pytest.mark.parametrize("route", list(HOSTILE_BODIES), ids=[f"{m} {p}" for m, p, _r in HOSTILE_BODIES])
@pytest.mark.parametrize("kind", ["surrogate", "deep"])
def test_lone_surrogates_and_deep_nesting_are_400_and_write_nothing(client, role_headers, route, kind):
    method, path, role = route
    body = HOSTILE_BODIES[route] % SURROGATE if kind == "surrogate" else DEEP
    before = row_counts()
    r = client.open(path, method=method, data=body.encode(),
                    headers={**(role_headers[role] if role else {}), "Content-Type": "application/json"})
    assert_envelope(r, 400)
    assert row_counts() == before


# Issue 20: every public route (no token), and /auth/refresh with bad tokens, under hostile input: lone
# surrogates and control characters in every string field and key, nesting 10,000-60,000 deep under 64 KiB,
# wrong content types, empty and non-UTF-8 bodies, hostile query strings. A clear answer, never a 5xx, no
# traceback logged. tests/test_http_bodies.py sends the same requests to a real gunicorn.
PUBLIC_REQUESTS = public_requests()
PUBLIC_ROUTES = sorted({(method, path.split("?")[0]) for _id, method, path, *_rest in PUBLIC_REQUESTS})


@pytest.mark.parametrize("route", PUBLIC_ROUTES, ids=" ".join)
def test_public_routes_answer_hostile_input_clearly(client, database, caplog, route):
    before = row_counts()
    with caplog.at_level(logging.WARNING):
        for case_id, method, path, headers, body, expected in PUBLIC_REQUESTS:
            if (method, path.split("?")[0]) == route:
                r = client.open(path, method=method, data=body, headers=headers)
                assert_clear_answer(r.status_code, r.get_data(), expected, case_id)
    assert not [rec for rec in caplog.records if rec.levelno >= logging.ERROR or rec.exc_info], caplog.text[-2000:]
    assert row_counts() == before


def test_the_hostile_requests_cover_every_public_route(client, database):
    # A public route added later (security: [] in the document) must be added to tests/hostile.py too.
    doc = client.get("/openapi.json").get_json()
    public = {(method.upper(), path) for path, operations in doc["paths"].items()
              for method, operation in operations.items() if method != "parameters" and operation.get("security") == []}
    assert public and public <= set(PUBLIC_ROUTES), public - set(PUBLIC_ROUTES)
