"""The embedded default (no DATABASE_URL, no REDIS_URL: a SQLite file, the Redis stand-in, tasks inline) buys end to
end: intake's statements run through SQLAlchemy on SQLite there (models/db.py, HotStatement), not on psycopg. In a
child process in a scratch folder, so its app and Celery binding never meet this run's."""
from __future__ import annotations

import json
import os
import subprocess
import sys

from conftest import ROOT

SCRIPT = r"""
import json, re
from models.schema import upgrade_head
from models.settings import Settings
from web import create_app

settings = Settings.from_env({})
assert settings.embedded
upgrade_head(settings.database_url)
app = create_app(settings)
printed = app.test_cli_runner().invoke(args=["demo"]).output
password = re.search(r"^fan\s+demo-fan\s+password\s+(\S+)", printed, re.M).group(1)
menus = dict((name, menu_id) for menu_id, name in re.findall(r"^menu\s+(\S+)\s+(.+?) \(", printed, re.M))
client = app.test_client()
token = client.post("/auth/login", json={"username": "demo-fan", "password": password}).json["access_token"]
headers = {"Authorization": "Bearer " + token}

def first_item(menu_id):
    return client.get(f"/menu/{menu_id}", headers=headers).json["items"][0]["id"]

def buy(menu_id, item_id, key=None):
    r = client.post("/menu/purchase", json={"menu_id": menu_id, "menu_item_id": item_id},
                    headers={**headers, **({"Idempotency-Key": key} if key else {})})
    return {"status": r.status_code, "body": r.json}

off, on = menus["Quick Fun Menu"], menus["Private Energy Menu"]
out = {"off": buy(off, first_item(off), "k-1"), "replay": buy(off, first_item(off), "k-1"),
       "on": buy(on, first_item(on)), "missing": buy(off, "no-such-item"),
       "wallet": client.get("/wallet", headers=headers).json}
print("RESULT " + json.dumps(out))
"""


def test_the_embedded_default_buys_queue_off_and_queue_on_items(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL", "JWT_SECRET_KEY")}
    env["PYTHONPATH"] = ROOT
    done = subprocess.run([sys.executable, "-c", SCRIPT], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.split("RESULT ", 1)[1])

    assert out["off"]["status"] == 200 and out["off"]["body"]["status"] == "completed", out["off"]
    price = out["off"]["body"]["token_value"]
    assert out["replay"]["status"] == 200 and out["replay"]["body"]["purchase_id"] == out["off"]["body"]["purchase_id"]
    assert out["on"]["status"] == 200 and out["on"]["body"]["status"] == "queued", out["on"]
    assert out["on"]["body"]["queue_position"] == 1 and out["on"]["body"]["escrow_deadline"]
    assert out["missing"]["status"] == 404 and out["missing"]["body"]["error"]["code"] == "not_found"
    # The demo's 5,000 tokens, less the completed purchase and the Queue ON purchase held in escrow; once each.
    assert out["wallet"]["token_balance"] == 5000 - price - out["on"]["body"]["token_value"]
