"""Hostile input shared by the fuzz run (tests/test_fuzz.py, in-process) and the server tests
(tests/test_http_bodies.py, over the wire): strings with lone surrogates and control characters, JSON nested
far deeper than any body of ours, and the public routes' requests built from them.

A lone surrogate is no UTF-8 text, so no client can send it raw: JSON carries it as the escape "\\ud800"
(json.dumps with ensure_ascii=True, the default, writes it so)."""
from __future__ import annotations

import json

from hypothesis import strategies as st

SURROGATES = ["\ud800", "x\udfff", "\ud83d"]  # a lone high one, a lone low one, half of an emoji's pair
CONTROLS = "\x00\x01\x07\x08\x0b\x0c\x1b\x7f\x85\u2028\u2029"

# schemathesis draws text encodable as UTF-8 only; this adds surrogates (Cs) and controls (Cc) to it. Joined
# from a list: st.text() leaves surrogates out whatever its alphabet.
WIDE_TEXT = st.lists(st.one_of(st.characters(categories=["Cs", "Cc"]), st.characters()),
                     max_size=40).map("".join)
# For query strings and paths, which travel percent-encoded UTF-8: controls, no surrogates.
CONTROL_TEXT = st.text(st.one_of(st.characters(categories=["Cc"]), st.characters(codec="utf-8")), max_size=40)


def deep(depth: int, kind: str = "list") -> bytes:
    """JSON nested `depth` deep, without recursion: a list of lists, or objects {"a": {"a": ...}}."""
    if kind == "list":
        return b"[" * depth + b"]" * depth
    return b'{"a":' * depth + b"1" + b"}" * depth


# Deeper than the guard's 32 and than Python's parser recursion, kept under MAX_CONTENT_LENGTH (64 KiB).
DEEP_BODIES = st.one_of(st.integers(33, 30_000).map(deep),
                        st.integers(33, 10_000).map(lambda n: deep(n, "object")))

# --- the public routes (no token) ---------------------------------------------------------------------------

MODEL_ID = "7e6d5c4b-3a29-4181-9f0e-1d2c3b4a5f6e"
BODY_ROUTES = {  # a valid body of each public route that takes one
    "/auth/login": {"username": "fan1", "password": "pw"},
    "/lovense/callback": {"uid": MODEL_ID, "utoken": "not-our-utoken", "toys": {"a1b2": {"name": "lush"}}},
}
GET_ROUTES = ["/healthz", "/readyz", "/metrics", "/openapi.json", "/docs"]
JSON = "application/json"


def _string_paths(value, path=()):
    """Where the strings of a body are: (path to a value, or to a key) for each."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield (*path, ("key", key))
            yield from _string_paths(item, (*path, key))
    elif isinstance(value, str):
        yield path


def _replace(value, path, new):
    if not path:
        return new
    head, *rest = path
    if isinstance(head, tuple):  # a key
        return {(new if k == head[1] else k): v for k, v in value.items()}
    return {**value, head: _replace(value[head], rest, new)}


def hostile_bodies(template: dict):
    """(name, body bytes, Content-Type or None, expected statuses) for one route's body."""
    for path in _string_paths(template):
        where = "/".join(str(p[1]) if isinstance(p, tuple) else p for p in path)
        for i, text in enumerate(SURROGATES):
            yield f"surrogate{i}@{where}", json.dumps(_replace(template, path, text)).encode(), JSON, (400,)
        yield f"controls@{where}", json.dumps(_replace(template, path, "a" + CONTROLS)).encode(), JSON, None
        if not isinstance(path[-1], tuple):  # a value, not a key: put a deep list there
            marked = json.dumps(_replace(template, path, "@deep@")).encode()
            yield f"deep-value@{where}", marked.replace(b'"@deep@"', deep(20_000)), JSON, (400,)
    yield "deep-list-30000", deep(30_000), JSON, (400,)
    yield "deep-object-10000", deep(10_000, "object"), JSON, (400,)
    yield "deep-mixed", b'[{"a":' * 5_000 + b"1" + b"}]" * 5_000, JSON, (400,)
    yield "deep-unclosed", b"[" * 60_000, JSON, (400,)
    valid = json.dumps(template).encode()
    yield "empty", b"", JSON, (422,)
    yield "null", b"null", JSON, (422,)
    yield "not-utf8", b'{"username": "\xff\xfe", "password": "x"}', JSON, (400,)
    yield "utf8-bom", b"\xef\xbb\xbf" + valid, JSON, None
    yield "utf16", json.dumps(template).encode("utf-16"), JSON, None
    yield "raw-control-bytes", valid.replace(b'"', b'"\x01', 1), JSON, (400,)
    for content_type in (None, "text/plain", "application/x-www-form-urlencoded", "multipart/form-data",
                         "application/xml", "application/json; charset=latin-1"):
        yield f"content-type:{content_type!r}", valid, content_type, None


def public_requests():
    """(id, method, path, headers, body, expected statuses or None for any clear answer) for every public
    route, plus /auth/refresh with bad tokens."""
    cases = []
    for path, template in BODY_ROUTES.items():
        for name, body, content_type, expected in hostile_bodies(template):
            headers = {"Content-Type": content_type} if content_type is not None else {}
            cases.append((f"POST {path} {name}", "POST", path, headers, body, expected))
    for name, body, content_type, _expected in hostile_bodies({"refresh_token": "x"}):
        headers = {"Authorization": "Bearer not-a-jwt"}
        if content_type:
            headers["Content-Type"] = content_type
        cases.append((f"POST /auth/refresh {name}", "POST", "/auth/refresh", headers, body, (401,)))
    for token in ("", "Bearer", "Bearer ", "Basic Zm9vOmJhcg==", "Bearer a\tb", "Bearer " + "a" * 4000,
                  "Bearer a.b.c", "Bearer \xe9t\xe9"):
        cases.append((f"POST /auth/refresh token={token[:20]!r}", "POST", "/auth/refresh",
                      {"Authorization": token}, b"", (401,)))
    for path in GET_ROUTES:
        for query in ("", "?a=%ED%A0%80", "?a=%00%01%7F", "?a=%FF%FE", "?" + "%5B" * 1_000):
            cases.append((f"GET {path}{query[:20]}", "GET", path + query, {}, b"", None))
        for name, body, content_type in (("deep", deep(30_000), JSON), ("surrogate", b'"\\ud800"', JSON),
                                         ("garbage", b"\xff\x00", "text/plain")):
            cases.append((f"GET {path} body:{name}", "GET", path, {"Content-Type": content_type}, body, None))
    return cases


def assert_clear_answer(status: int, body: bytes, expected, case_id: str) -> None:
    """Never a 5xx; a 4xx carries the error envelope; the status is the expected one, where one is."""
    assert status < 500, (case_id, status, body[:300])
    if expected is not None:
        assert status in expected, (case_id, status, body[:300])
    if status >= 400:
        error = json.loads(body)["error"]
        assert error["code"] and error["message"], (case_id, body[:300])
