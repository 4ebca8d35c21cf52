"""The JSON guard every route's body goes through (web/json_body.py)."""
import json

import pytest

from web.json_body import MAX_DEPTH, loads


@pytest.mark.parametrize("body", [
    '{"username": "\\ud800", "password": "x"}',  # a lone surrogate: valid JSON, not text
    '{"\\udfff": 1}',  # in a key too
    '{"a": [' + '"x\\ud83d"' + "]}",  # half of a pair
    "[" * (MAX_DEPTH + 1) + "]" * (MAX_DEPTH + 1),
    '{"a":' * 20_000 + "1" + "}" * 20_000,  # deeper than Python's parser can recurse
])
def test_hostile_bodies_are_invalid_json(body):
    with pytest.raises(json.JSONDecodeError):
        loads(body.encode())


def test_ordinary_bodies_and_real_emoji_pass():
    assert loads('{"metadata": {"note": "\\ud83d\\ude00 ok", "n": [1, [2, [3]]]}}'.encode()) == {
        "metadata": {"note": "\U0001F600 ok", "n": [1, [2, [3]]]}}
    assert loads(("[" * MAX_DEPTH + "]" * MAX_DEPTH).encode()) is not None
