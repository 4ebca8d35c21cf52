"""One guard for every JSON body, in the parser every route uses (flask-smorest's arguments, through
web/blueprint.py): nesting deeper than MAX_DEPTH (Python's parser would recurse until it fails) and strings
holding a lone surrogate such as "\\ud800" (valid JSON, but no UTF-8 text: the database and the logs cannot
take it) are refused as an invalid body, 400, before any view runs."""
from __future__ import annotations

import json
from functools import wraps

import flask_smorest
from flask import request
from marshmallow import ValidationError
from webargs import core
from webargs.flaskparser import FlaskParser, is_json_request

MAX_DEPTH = 32  # our bodies nest three levels at most


def loads(raw: bytes | str):
    """json.loads, refusing what no route accepts (raises json.JSONDecodeError, which webargs answers as 400)."""
    text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
    try:
        value = json.loads(text)
    except RecursionError:
        raise json.JSONDecodeError("nested too deeply", text, 0) from None
    _check(value, text)
    return value


def _check(value, text: str) -> None:
    pending = [(value, 1)]
    while pending:
        item, depth = pending.pop()
        if isinstance(item, (dict, list)):
            if depth > MAX_DEPTH:
                raise json.JSONDecodeError(f"nested deeper than {MAX_DEPTH}", text, 0)
            children = [*item.keys(), *item.values()] if isinstance(item, dict) else item
            pending.extend((child, depth + 1) for child in children)
        elif isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                raise json.JSONDecodeError("a string is not valid Unicode text", text, 0) from None


class GuardedParser(FlaskParser):
    def _raw_load_json(self, req):
        if not is_json_request(req):
            return core.missing
        return loads(req.get_data(cache=True))


class Blueprint(flask_smorest.Blueprint):
    """flask-smorest's blueprint, parsing JSON bodies with the guard above: every area of the API uses it."""

    ARGUMENTS_PARSER = GuardedParser()

    def arguments(self, schema, **kwargs):
        """flask-smorest's `arguments` (the OpenAPI document, webargs's parsing and error answers), with a JSON
        body that parses and validates loaded directly by the schema: webargs's machinery cost ~0.1 ms a request
        (bench/layers.py). Anything else (another location or content type, bad JSON, a validation error) goes
        through webargs, so every error answer stays webargs's own."""
        schema = schema() if isinstance(schema, type) else schema  # given a class, webargs builds one per request
        documented = super().arguments(schema, **kwargs)
        if kwargs.get("location", "json") != "json":
            return documented

        def decorator(func):
            through_webargs = documented(func)

            @wraps(through_webargs)
            def wrapper(*args, **kw):
                if request.mimetype == "application/json":
                    try:
                        data = schema.load(loads(request.get_data(cache=True)))
                    except (ValueError, ValidationError):  # JSONDecodeError is a ValueError
                        return through_webargs(*args, **kw)
                    return func(*args, data, **kw)  # webargs adds the parsed body after the view's arguments
                return through_webargs(*args, **kw)

            return wrapper

        return decorator
