"""The floor: purchase intake's essential work and nothing else, served by the product's gunicorn line
(`bench.floor_app:app`). Check the bearer token, read the body, one SQL round trip that reads the item, its menu
and model and the fan's balance and inserts the `pending` purchase, one Redis round trip (the rate limit and the
worker's wake-up), answer 202. What intake's figure is judged against: no framework, ORM or driver layer above the
minimum. Its keys live under perfmenu:floor: so nothing of the product reacts; bench/run.py deletes its rows."""
import json
import os
import threading
import time
import uuid

import jwt
import psycopg
import redis
from flask import Flask, Response, request

SECRET = os.environ["JWT_SECRET_KEY"]
DATABASE_URL = os.environ["DATABASE_URL"].replace("postgresql+psycopg://", "postgresql://", 1)
TIME_ZONE = os.environ.get("PERFMENU_TIME_ZONE") or "UTC"
# "N per minute", as the bench sets it for the product (whose limiter must not refuse either).
RATE_LIMIT = int(os.environ.get("RATE_LIMIT_PURCHASE", "30 per minute").split()[0])
RATE_WINDOW = 60
WAKE_KEY = "perfmenu:floor:wake"

# One statement: the item on that menu (both active), its model, the fan's wallet, and the insert when the
# balance covers the price; no row back means refused. The trigger on purchases writes the accepted event, as
# for the product's rows.
INTAKE_SQL = """
WITH item AS (
    SELECT i.id, i.menu_id, i.name, i.token_value, i.bonus_loyalty_points, i.estimated_duration_minutes,
           m.model_id, m.queue_mode
    FROM menu_items i JOIN menus m ON m.id = i.menu_id
    WHERE i.id = %(item)s AND m.id = %(menu)s AND i.is_active AND m.is_active
), wallet AS (
    SELECT balance FROM accounts WHERE owner_id = %(fan)s AND kind = 'wallet'
)
INSERT INTO purchases (id, fan_id, model_id, menu_id, item_id, item_name, token_value, loyalty_points,
                       estimated_duration_minutes, transaction_type, queue_priority, status, idempotency_key,
                       anonymous, purchase_day, created_at, updated_at)
SELECT gen_random_uuid(), %(fan)s, item.model_id, item.menu_id, item.id, item.name, item.token_value,
       item.bonus_loyalty_points, item.estimated_duration_minutes,
       CASE item.queue_mode WHEN 'ON' THEN 'queued' ELSE 'immediate' END, 0, 'pending', %(key)s, false,
       CAST(now() AT TIME ZONE %(tz)s AS date), now(), now()
FROM item JOIN wallet ON wallet.balance >= item.token_value
RETURNING id
"""

# The limiter's counter and the settler's wake-up in one round trip (the product's intake takes two).
LUA = """
local n = redis.call('INCR', KEYS[1])
if n == 1 then redis.call('EXPIRE', KEYS[1], ARGV[1]) end
redis.call('RPUSH', KEYS[2], '1')
redis.call('EXPIRE', KEYS[2], ARGV[1])
return n
"""

app = Flask(__name__)
_redis = redis.Redis.from_url(os.environ["REDIS_URL"])
_script = _redis.register_script(LUA)  # EVALSHA (EVAL once, if the server lacks it)
_verified = {}  # whole token -> (fan id, exp): a signature is checked once per token
_local = threading.local()


def _answer(body: dict, status: int) -> Response:
    return Response(json.dumps(body), status=status, mimetype="application/json")


def _fan_id(header: str):
    token = header.removeprefix("Bearer ").strip()
    known = _verified.get(token)
    if known is None:
        try:
            claims = jwt.decode(token, SECRET, algorithms=["HS256"])
            known = (uuid.UUID(claims["sub"]), claims["exp"])
        except (jwt.PyJWTError, KeyError, ValueError):
            return None
        if len(_verified) >= 10_000:
            _verified.clear()
        _verified[token] = known
    return known[0] if known[1] > time.time() else None  # expiry checked on every use


def _connection() -> psycopg.Connection:
    conn = getattr(_local, "conn", None)
    if conn is None or conn.closed:
        conn = _local.conn = psycopg.connect(DATABASE_URL, autocommit=True)
    return conn


@app.route("/menu/purchase", methods=["POST"])
def purchase():
    fan_id = _fan_id(request.headers.get("Authorization", ""))
    if fan_id is None:
        return _answer({"error": "unauthorized"}, 401)
    body = request.get_json(silent=True) or {}
    try:
        menu_id, item_id = uuid.UUID(body["menu_id"]), uuid.UUID(body["item_id"])
    except (KeyError, TypeError, ValueError):
        return _answer({"error": "invalid_request"}, 422)
    key = request.headers.get("Idempotency-Key")
    # The limiter before the write, as in the product; the wake-up rides along (nothing listens to it here, so
    # its place before the INSERT changes nothing but the order).
    if _script(keys=[f"perfmenu:floor:rate:{fan_id}", WAKE_KEY], args=[RATE_WINDOW]) > RATE_LIMIT:
        return _answer({"error": "rate_limited"}, 429)
    row = _connection().execute(INTAKE_SQL, {"item": item_id, "menu": menu_id, "fan": fan_id, "key": key,
                                             "tz": TIME_ZONE}, prepare=True).fetchone()
    if row is None:
        return _answer({"error": "refused"}, 409)
    return _answer({"purchase_id": str(row[0]), "status": "pending"}, 202)
