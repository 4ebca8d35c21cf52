"""The bank test's driver (in the spirit of Jepsen's bank test).

Starts a real gunicorn and real Celery worker processes against a PostgreSQL cluster and a Redis server of
its own (the cluster made with initdb in a temp dir, both on free ports, so restarting, stopping or pausing
them disturbs nobody: the shared PostgreSQL and Redis are never touched), drives purchases on Queue OFF and
Queue ON menus from several client threads with random idempotency-key reuse, while a fault injector SIGKILLs
Celery processes in the middle of work (and restarts them), restarts Redis, pauses it (SIGSTOP for ~10 s: a
partition, the server neither answers nor refuses), terminates the database's backends, restarts PostgreSQL
(fast, or stopped for ~10 s) and makes the fake Lovense fail or hang. The platform takes its commission (a
default rate and some models' own) and an admin records payouts. Afterwards, and after a quiet period in
which beat's jobs are called, it checks the books, every purchase (its ledger rows, its fee) and the earnings
rollup. `run(...)` returns a Report;
tests/test_bank.py asserts that it has no anomaly.

The driver only talks HTTP to the service and reads the database (plus calling beat's pending sweep)."""
from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from datetime import datetime, timezone
from dataclasses import dataclass, field
from pathlib import Path

import requests
from conftest import subprocess_env
from fake_lovense import FakeLovense, hang, http_status
from fake_webhook_receiver import FakeWebhookReceiver
from processes import ROOT, PostgresCluster, ProcessGroup, children_of, free_port, wait_http, wait_port
from sqlalchemy import func, select, text
from sqlalchemy.orm import sessionmaker

from models.db import make_engine
from models.ledger import TOKEN_KINDS, Account, LedgerEntry, books_differences, top_up
from models.lovense import LovenseActivation, LovenseLink
from models.menus import Menu, MenuItem
from models.outbox import OutboxEvent
from models.purchases import Purchase
from models.revenue import CommissionRate, EarningsDay
from models.shows import Show
from models.schema import upgrade_head
from models.users import create_user
from models.webhooks import WebhookDelivery

PASSWORD = "bank-pw"
SETTLED_STATES = {"completed", "failed", "queued", "in_progress", "refunded"}
# Ledger rows each final state must have (loyalty_award too when the item gives points).
ROWS_FOR = {
    ("immediate", "completed"): {"purchase"},
    ("immediate", "failed"): set(),
    ("queued", "failed"): set(),
    ("queued", "queued"): {"escrow_hold"},
    ("queued", "in_progress"): {"escrow_hold"},
    ("queued", "completed"): {"escrow_hold", "escrow_release"},
    ("queued", "refunded"): {"escrow_hold", "escrow_refund"},
}


TOY = {"enabled": True, "device_type": "vibrator", "intensity": 5, "duration_ms": 500, "timing_offset": 0,
       "pattern": "steady"}


@dataclass
class Config:
    purchases: int = 1000
    fans: int = 30
    models: int = 6
    clients: int = 6
    worker_kills: int = 4
    redis_restarts: int = 1
    redis_pauses: int = 1  # SIGSTOP for redis_pause_seconds, then SIGCONT
    db_kills: int = 2
    pg_restarts: int = 1  # PostgreSQL restarted fast
    pg_stops: int = 1  # PostgreSQL stopped for pg_stop_seconds, then started
    lovense_faults: int = 2
    webhook_kills: int = 1  # the webhook worker SIGKILLed while the receiver holds a delivery's answer
    receiver_delay: float = 0.0  # each webhook answer this late (deliveries are in flight at every fault)
    queue_actions: float = 0.4  # chance a purchase is followed by a start, complete, reject or cancel
    payouts: float = 0.03  # chance a purchase is followed by an admin's payout (its key sometimes replayed)
    show_ends: float = 0.02  # chance a purchase is followed by a model ending their show (keep or refund_all)
    fee_bps: int = 1500  # the platform's commission (PLATFORM_FEE_BPS); some models have a rate of their own
    key_reuse: float = 0.15  # chance a purchase replays an earlier key of the same fan (same or other item)
    quiet_seconds: float = 60
    redis_pause_seconds: float = 10
    pg_stop_seconds: float = 10
    web_workers: int = 2
    celery_workers: int = 2
    seed: int = 7


@dataclass
class Report:
    purchases: int = 0  # logical purchase requests sent (replays not counted)
    accepted: int = 0  # purchase rows in the database
    faults: Counter = field(default_factory=Counter)
    statuses: Counter = field(default_factory=Counter)
    responses: Counter = field(default_factory=Counter)
    anomalies: list = field(default_factory=list)
    activations: Counter = field(default_factory=Counter)
    plays: int = 0  # buzzes the fake toy played
    webhooks: int = 0  # events the webhook receiver processed (once each)
    webhook_duplicates: int = 0  # deliveries it received again and skipped by their webhook-id
    worker_exits: int = 0  # Celery workers that exited on their own (a broker restart can do that: README)
    lags_max: dict = field(default_factory=dict)  # the most overdue webhook delivery and toy slot, during the run
    lags_end: dict = field(default_factory=dict)  # the same after the quiet period: 0 when everything is done
    seconds: float = 0.0

    def line(self) -> str:
        return f"purchases: {self.purchases} faults: {sum(self.faults.values())} anomalies: {len(self.anomalies)}"

    def details(self) -> str:
        return (f"accepted rows: {self.accepted}; states: {dict(self.statuses)}; "
                f"toy activations: {dict(self.activations)}, toy plays: {self.plays}; webhooks: {self.webhooks} events, "
                f"{self.webhook_duplicates} duplicates skipped; workers that exited on their own: {self.worker_exits}; "
                f"backlog lags (s) at most {self.lags_max}, at the end {self.lags_end}; responses: {dict(self.responses)}; "
                f"faults: {dict(self.faults)}; {self.seconds:.0f} s")


class Cluster:
    """gunicorn + Celery workers on a private PostgreSQL cluster and a private redis-server. The driver reads
    the database through its own engine (`new_session`)."""

    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.lovense = FakeLovense()
        self.receiver = FakeWebhookReceiver()  # the platform's webhook endpoint (every event type)
        self.receiver.script(default=(200, cfg.receiver_delay))
        # A second endpoint, slow (0.5 s an answer) and for shows only: it must hold back nothing of the first.
        self.slow_receiver = FakeWebhookReceiver()
        self.slow_receiver.script(default=(200, 0.5))
        self.log_dir = tempfile.mkdtemp(prefix="perfmenu-bank-")
        self.postgres = PostgresCluster(log_path=os.path.join(self.log_dir, "postgres.log"))
        self.database_url = self.postgres.url("perfmenu_bank")
        self.engine = self._sessions = None  # once the database exists (start)
        self.redis_port, self.web_port = free_port(), free_port()
        self.redis = self._process("redis", [shutil.which("redis-server"), "--port", str(self.redis_port), "--bind",
                                             "127.0.0.1", "--save", "", "--appendonly", "no"], dict(os.environ))
        env = subprocess_env(
            DATABASE_URL=self.database_url,
            REDIS_URL=f"redis://127.0.0.1:{self.redis_port}/0",
            CELERY_BROKER_URL=f"redis://127.0.0.1:{self.redis_port}/1",
            LOVENSE_API_URL=self.lovense.url,
            PURCHASE_WAIT_SECONDS="1",
            BROKER_VISIBILITY_TIMEOUT="20",  # a killed worker's unacknowledged tasks come back soon
            QUEUE_CAPACITY="100000",
            LOVENSE_ENABLED="true",
            LOVENSE_DEVELOPER_TOKEN="bank-developer-token",
            LOVENSE_CONNECT_TIMEOUT="1",
            LOVENSE_READ_TIMEOUT="1.5",  # the fake's hang outlasts it
            LOVENSE_BACKOFF_SECONDS="0.2",
            LOVENSE_BACKOFF_MAX_SECONDS="1",
            LOVENSE_RATE_LIMIT="100000",
            PLATFORM_FEE_BPS=str(cfg.fee_bps),
            WEBHOOK_ALLOWED_NETWORKS="127.0.0.1",
            WEBHOOK_TIMEOUT_SECONDS="2",
            WEBHOOK_BACKOFF_SECONDS="0.2",
        )
        self.env = env
        self.web = self._process("web", [sys.executable, "-m", "gunicorn", "--bind", f"127.0.0.1:{self.web_port}",
                                         "--workers", str(cfg.web_workers), "--threads", "4", "--worker-class",
                                         "gthread", "--graceful-timeout", "5", "web.wsgi:app"], env)
        self.workers = [self._worker(i) for i in range(cfg.celery_workers)]
        self.webhook_worker = self._process("webhooks", [  # the Procfile's `webhooks` line
            sys.executable, "-m", "celery", "-A", "worker.main", "worker", "-Q", "webhooks", "--concurrency", "2", "--loglevel", "INFO", "-n", f"bank-webhooks-{uuid.uuid4().hex[:6]}@%h",
            "--without-gossip", "--without-mingle"], env)
        self.beat = self._process("beat", [  # the Procfile's `beat` line: sweeps, relay and dispatch on its clock
            sys.executable, "-m", "celery", "-A", "worker.main", "beat", "--loglevel", "WARNING", "--schedule",
            os.path.join(self.log_dir, "celerybeat-schedule")], env)
        self.base_url = f"http://127.0.0.1:{self.web_port}"

    def _process(self, name, argv, env) -> ProcessGroup:
        return ProcessGroup(name, argv, env, os.path.join(self.log_dir, f"{name}.log"))

    def _worker(self, i):
        return self._process(f"worker{i}", [sys.executable, "-m", "celery", "-A", "worker.main", "worker",
                                            "--loglevel", "WARNING", "--concurrency", "2",
                                            "-n", f"bank{i}-{uuid.uuid4().hex[:6]}@%h",
                                            "--without-gossip", "--without-mingle"], self.env)

    def start(self):
        self.lovense.start()  # first: stop() waits for its thread
        self.receiver.start()
        self.slow_receiver.start()
        self.postgres.start()
        self.postgres.create_database("perfmenu_bank")
        upgrade_head(self.database_url)
        self.engine = make_engine(self.database_url)
        self._sessions = sessionmaker(bind=self.engine, expire_on_commit=False)
        self.redis.start()
        wait_port(self.redis_port)
        self.web.start()
        for w in self.celery_processes():
            w.start()
        try:
            wait_http(self.base_url + "/healthz", 120, self.web)
        except RuntimeError as exc:
            raise RuntimeError(f"web did not come up ({exc}); logs in {self.log_dir}") from None
        return self

    def new_session(self):
        return self._sessions()

    def celery_processes(self) -> list[ProcessGroup]:
        return [*self.workers, self.webhook_worker, self.beat]

    def lags(self) -> dict[str, float]:
        """The operator's backlog figures from /metrics: how overdue the most overdue webhook delivery and toy
        slot are (docs/architecture.md, "Liveness"); empty if the scrape failed (a fault)."""
        try:
            text = requests.get(self.base_url + "/metrics", timeout=10).text
        except requests.RequestException:
            return {}
        wanted = {"perfmenu_webhook_lag_seconds": "webhooks", "perfmenu_lovense_timeline_lag_seconds": "toys"}
        return {wanted[name]: float(v) for name, v in (line.split(" ", 1) for line in text.splitlines()
                                                        if line.split(" ", 1)[0] in wanted)}

    def stop(self):
        """Stop everything; the PostgreSQL cluster's dir goes too (its log is kept in the log dir)."""
        try:
            if self.redis.alive():
                os.killpg(self.redis.pid, signal.SIGCONT)  # a paused server could not shut down
            for p in [self.web, *self.celery_processes(), self.redis]:
                p.stop()
            self.lovense.stop()
            self.receiver.stop()
            self.slow_receiver.stop()
            if self.engine is not None:
                self.engine.dispose()
        finally:
            self.postgres.destroy()

    # --- faults -------------------------------------------------------------------------------------------
    def kill_worker(self, rng) -> str:
        worker = rng.choice(self.workers)
        if not worker.alive():
            worker.start()
            return "worker_restart"
        pool = children_of(worker.proc.pid)
        if pool and rng.random() < 0.6:
            os.kill(rng.choice(pool), signal.SIGKILL)  # a pool process, in the middle of a task or not
            return "worker_kill"
        worker.kill()  # the whole worker: its unacknowledged tasks are redelivered
        worker.start()
        return "worker_kill"

    def kill_webhook_worker(self) -> str:
        """SIGKILL the webhook worker while the receiver holds an answer: the receiver processed the event, the
        worker never recorded it, so it comes again (the receiver skips it by its webhook-id)."""
        seen = len(self.receiver.requests)
        self.receiver.script((200, 1.5), default=(200, self.cfg.receiver_delay))
        self.receiver.wait_for(lambda: len(self.receiver.requests) > seen, 10)
        self.webhook_worker.kill()
        self.webhook_worker.start()
        return "webhook_kill"

    def restart_redis(self) -> str:
        self.redis.kill()
        time.sleep(0.5)
        self.redis.start()
        wait_port(self.redis_port)
        return "redis_restart"

    def pause_redis(self) -> str:
        """A partition: connections stay open, nothing answers (unlike a restart, which refuses them)."""
        os.killpg(self.redis.pid, signal.SIGSTOP)
        try:
            time.sleep(self.cfg.redis_pause_seconds)
        finally:
            os.killpg(self.redis.pid, signal.SIGCONT)
        return "redis_pause"

    def restart_postgres(self) -> str:
        self.postgres.restart()
        return "pg_restart"

    def stop_postgres(self) -> str:
        """PostgreSQL down for a while: every connection refused, then a server that lost every session."""
        self.postgres.stop()
        try:
            time.sleep(self.cfg.pg_stop_seconds)
        finally:
            self.postgres.start()
        return "pg_stop"

    def break_lovense(self, rng) -> str:
        path = "/api/lan/v2/command"
        if rng.random() < 0.5:
            self.lovense.script(path, *[http_status(500)] * 15)
            return "lovense_fail"
        self.lovense.script(path, *[hang(3)] * 4)
        return "lovense_hang"

    def kill_db_backends(self) -> str:
        with self.engine.connect() as conn:
            conn.execute(text(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = current_database() "
                "AND pid <> pg_backend_pid() AND backend_type = 'client backend'"))
            conn.commit()
        return "db_kill"


@dataclass
class Shop:
    fans: list  # (id, username)
    models: list  # (id, username)
    items: list  # (menu_id, item_id, queue_mode, token_value)
    issued: int
    admin: tuple  # (id, username)
    rates: dict  # model id -> the commission its sales are made at


def build_shop(cluster: Cluster, cfg: Config, rng: random.Random) -> Shop:
    s = cluster.new_session()
    try:
        fans, models, items, issued, rates = [], [], [], 0, {}
        admin = create_user(s, f"bank-admin-{uuid.uuid4().hex[:8]}", PASSWORD, "admin")
        for i in range(cfg.models):
            model = create_user(s, f"bank-model-{uuid.uuid4().hex[:8]}", PASSWORD, "model")
            models.append((model.id, model.username))
            s.flush()
            own_rate = rng.choice([None, None, 0, 500, 3333, 9999])
            if own_rate is not None:
                s.add(CommissionRate(model_id=model.id, bps=own_rate))
            rates[model.id] = cfg.fee_bps if own_rate is None else own_rate
            s.add(LovenseLink(model_id=model.id, uid=str(model.id), toys={}))
            s.add(Show(model_id=model.id))  # live: Queue OFF items need a show (the clients end and restart it)
            for mode in ("OFF", "ON"):
                menu = Menu(model_id=model.id, name=f"{mode} menu", queue_mode=mode,
                            queue_order=rng.choice(["priority", "fifo"]))
                s.add(menu)
                s.flush()
                for j in range(3):
                    price = rng.choice([5, 10, 25, 50, 100])
                    item = MenuItem(menu_id=menu.id, name=f"item {j}", token_value=price,
                                    bonus_loyalty_points=rng.choice([0, 0, 3, 10]), display_order=j,
                                    max_daily_purchases=rng.choice([None, None, None, 40]),
                                    lovense_activation=TOY if rng.random() < 0.5 else None)
                    s.add(item)
                    s.flush()
                    items.append((menu.id, item.id, mode, price))
        for i in range(cfg.fans):
            fan = create_user(s, f"bank-fan-{uuid.uuid4().hex[:8]}", PASSWORD, "fan")
            amount = rng.randint(200, 3000)  # some fans run dry: insufficient_balance is an outcome too
            s.flush()
            top_up(s, fan.id, amount, external_ref=f"bank-{fan.id}")
            issued += amount
            fans.append((fan.id, fan.username))
        s.commit()
        return Shop(fans, models, items, issued, (admin.id, admin.username), rates)
    finally:
        s.close()


class Client:
    """One client thread: logs in, buys, replays keys, retries like a careful client (same key on errors)."""

    def __init__(self, base_url, shop: Shop, rng: random.Random, record, key_reuse: float):
        self.base_url, self.shop, self.rng, self.record = base_url, shop, rng, record
        self.key_reuse = key_reuse
        self.http = requests.Session()
        self.tokens = {}

    def token(self, user):
        fan_id, username = user
        deadline = time.monotonic() + 120
        while fan_id not in self.tokens:
            if time.monotonic() > deadline:
                raise RuntimeError(f"user {fan_id} cannot log in")
            try:
                r = self.http.post(self.base_url + "/auth/login", json={"username": username, "password": PASSWORD},
                                   timeout=30)
                if r.status_code == 200:
                    self.tokens[fan_id] = r.json()["access_token"]
                    break
            except requests.RequestException:
                pass
            time.sleep(0.2)
        return self.tokens[fan_id]

    def post(self, fan, body, key):
        headers = {"Authorization": f"Bearer {self.token(fan)}"}
        if key:
            headers["Idempotency-Key"] = key
        try:
            r = self.http.post(self.base_url + "/menu/purchase", json=body, headers=headers, timeout=60)
        except requests.RequestException as exc:
            return None, type(exc).__name__
        try:
            data = r.json()
        except ValueError:
            data = None
        return r.status_code, data

    def buy(self, used_keys: dict):
        fan = self.rng.choice(self.shop.fans)
        menu_id, item_id, _mode, _price = self.rng.choice(self.shop.items)
        keys = used_keys.setdefault(fan[0], [])
        replay = bool(keys) and self.rng.random() < self.key_reuse
        if replay:
            key, menu_id, item_id = self.rng.choice(keys)
            if self.rng.random() < 0.3:  # same key, another item: must be refused, never a second purchase
                _m, other_item, _mo, _p = self.rng.choice(self.shop.items)
                if other_item != item_id:
                    body = {"menu_id": str(_m), "item_id": str(other_item)}
                    status, data = self.post(fan, body, key)
                    self.record(fan, key, body, status, data, replay="mismatch")
                    return False
        else:
            key = uuid.uuid4().hex if self.rng.random() < 0.85 else None  # some purchases carry no key
            if key:
                keys.append((key, menu_id, item_id))
        body = {"menu_id": str(menu_id), "item_id": str(item_id), "token_value": 1}  # a client price: ignored
        for attempt in range(6):
            status, data = self.post(fan, body, key)
            self.record(fan, key, body, status, data, replay="same" if (replay or attempt) else None)
            if status is not None and status < 500:
                break
            if not key:  # without a key a retry could buy twice: a careful client does not retry
                break
            time.sleep(0.3 * (attempt + 1))
        return not replay


    def act(self, path, user, body=None):
        try:
            r = self.http.post(self.base_url + path, json=body or {}, timeout=60,
                               headers={"Authorization": f"Bearer {self.token(user)}"})
            return r.status_code, r.json()
        except (requests.RequestException, ValueError) as exc:
            return None, type(exc).__name__

    def queue_action(self, recorder):
        """A model starts, completes or rejects an entry of its queue, or a fan cancels one of theirs."""
        if self.rng.random() < 0.7:
            model = self.rng.choice(self.shop.models)
            try:
                r = self.http.get(self.base_url + "/queue", timeout=60,
                                  headers={"Authorization": f"Bearer {self.token(model)}"})
            except requests.RequestException:
                return
            if r.status_code != 200:
                recorder.action("queue", r.status_code, r.json() if r.content else None)
                return
            entries = r.json()["entries"]
            if not entries:
                return
            busy = [e for e in entries if e["status"] == "in_progress"]
            if busy:
                action = "complete" if self.rng.random() < 0.8 else "reject"
                entry = busy[0]
            else:
                action = "start" if self.rng.random() < 0.7 else "reject"
                entry = entries[0] if action == "start" else self.rng.choice(entries)
            body = {"reason": self.rng.choice(["cannot_deliver", "unavailable", "other"])} if action == "reject" else {}
            status, data = self.act(f"/queue/{entry['purchase_id']}/{action}", model, body)
        else:
            mine = recorder.queued_sample(self.rng)
            if mine is None:
                return
            pid, fan = mine
            action = "cancel"
            status, data = self.act(f"/queue/{pid}/cancel", fan)
        recorder.action(action, status, data)

    def show_end(self, recorder):
        """A model ends their show, keeping or refunding every queued entry, then goes live again. A careful
        console sends an end that did not answer again: a refund_all cut short by a fault is finished then."""
        model = self.rng.choice(self.shop.models)
        mode = self.rng.choice(["keep", "refund_all"])
        for attempt in range(6):
            status, data = self.act("/show/end", model, {"open_entries": mode})
            if status is not None and status < 500:
                break
            time.sleep(0.3 * (attempt + 1))
        recorder.show(f"show end {mode}", status, data)
        if status == 200 and mode == "refund_all":
            with recorder.lock:
                recorder.refund_all_ends.append((model[0], data["show"]["ended_at"]))
        for attempt in range(6):
            status, data = self.act("/show/start", model)
            if status == 200:
                break
            time.sleep(0.3 * (attempt + 1))
        recorder.show("show start", status, data)

    def payout(self, recorder, used: list):
        """An admin pays a model out (a new key, or an earlier one replayed with its amount)."""
        if used and self.rng.random() < 0.3:
            model_id, amount, key = self.rng.choice(used)
        else:
            model_id, amount, key = self.rng.choice(self.shop.models)[0], self.rng.randint(1, 300), uuid.uuid4().hex
            used.append((model_id, amount, key))
        status, data = self.act(f"/admin/models/{model_id}/payouts", self.shop.admin,
                                {"amount": amount, "idempotency_key": key})
        recorder.payout(status, data)


def error_code(data) -> str | None:
    return data.get("error", {}).get("code") if isinstance(data, dict) and "error" in data else None


class Recorder:
    def __init__(self):
        self.lock = threading.Lock()
        self.responses = Counter()
        self.by_key = {}  # (fan_id, key) -> set of purchase ids answered
        self.answered = {}  # purchase id -> last status the client was told
        self.anomalies = []
        self.queued = {}  # purchase id -> fan, for cancellations
        self.refund_all_ends = []  # (model id, ended_at) of each show ended with refund_all

    def queued_sample(self, rng):
        with self.lock:
            if not self.queued:
                return None
            pid = rng.choice(list(self.queued))
            return pid, self.queued.pop(pid)

    def action(self, name, status, data):
        with self.lock:
            code = error_code(data)
            self.responses[f"{name} {status}{':' + code if code else ''}"] += 1
            if status is None or status == 503 or status == 409:  # a fault, or the entry moved meanwhile
                return
            if status != 200:
                self.anomalies.append(f"{name} answered {status} {code}")
                return
            self.answered[str(data["purchase_id"])] = data["status"]

    def show(self, name, status, data):
        with self.lock:
            code = error_code(data)
            self.responses[f"{name} {status}{':' + code if code else ''}"] += 1
            # Done, no open show (another client ended it first), or a fault that outlasted the retries.
            if status not in (None, 200, 503) and code != "no_open_show":
                self.anomalies.append(f"{name} answered {status} {code}")

    def payout(self, status, data):
        with self.lock:
            code = error_code(data)
            self.responses[f"payout {status}{':' + code if code else ''}"] += 1
            # Paid (201), the same key again (200), more than is unpaid (422), or a fault.
            if status not in (None, 200, 201, 503) and code != "insufficient_earnings":
                self.anomalies.append(f"payout answered {status} {code}")

    def __call__(self, fan, key, body, status, data, replay=None):
        with self.lock:
            code = error_code(data)
            self.responses[f"{status}{':' + code if code else ''}"] += 1
            if isinstance(status, int) and status >= 500 and status != 503:
                self.anomalies.append(f"HTTP {status} {code} for a purchase")
            if isinstance(status, int) and status >= 400 and not (isinstance(data, dict) and "error" in data):
                self.anomalies.append(f"HTTP {status} without the error envelope")
            pid = data.get("purchase_id") if isinstance(data, dict) else None
            if replay == "mismatch" and (fan[0], key) in self.by_key:
                # The key already made a purchase: another item under it must be refused, nothing else.
                if status is not None and status < 500 and code != "idempotency_mismatch":
                    self.anomalies.append(f"key reused for another item answered {status} {code}")
                return
            if pid:
                self.answered[pid] = data.get("status")
                if data.get("status") == "queued":
                    self.queued[pid] = fan
                if key:
                    self.by_key.setdefault((fan[0], key), set()).add(pid)


class FaultInjector(threading.Thread):
    """Spreads the planned faults evenly over the run (by purchases sent)."""

    def __init__(self, cluster: Cluster, cfg: Config, progress, rng):
        super().__init__(daemon=True)
        self.cluster, self.cfg, self.progress, self.rng = cluster, cfg, progress, rng
        plan = (["worker"] * cfg.worker_kills + ["redis"] * cfg.redis_restarts + ["db"] * cfg.db_kills
                + ["lovense"] * cfg.lovense_faults + ["redis_pause"] * cfg.redis_pauses
                + ["pg_restart"] * cfg.pg_restarts + ["pg_stop"] * cfg.pg_stops + ["webhook"] * cfg.webhook_kills)
        rng.shuffle(plan)
        self.plan = [(int(cfg.purchases * (i + 1) / (len(plan) + 1)), f) for i, f in enumerate(plan)]
        self.done = Counter()
        self.errors = []
        self.stop_event = threading.Event()

    def run(self):
        for at, fault in self.plan:
            while self.progress() < at and not self.stop_event.is_set():
                time.sleep(0.05)
            if self.stop_event.is_set():
                return
            try:
                if fault == "worker":
                    self.done[self.cluster.kill_worker(self.rng)] += 1
                elif fault == "lovense":
                    self.done[self.cluster.break_lovense(self.rng)] += 1
                elif fault == "redis":
                    self.done[self.cluster.restart_redis()] += 1
                elif fault == "redis_pause":
                    self.done[self.cluster.pause_redis()] += 1
                elif fault == "pg_restart":
                    self.done[self.cluster.restart_postgres()] += 1
                elif fault == "pg_stop":
                    self.done[self.cluster.stop_postgres()] += 1
                elif fault == "webhook":
                    self.done[self.cluster.kill_webhook_worker()] += 1
                else:
                    self.done[self.cluster.kill_db_backends()] += 1
            except Exception as exc:  # noqa: BLE001 - a failed injection is reported, not fatal
                self.errors.append(f"{fault}: {exc!r}")


def run(cfg: Config, log=print) -> Report:
    """Start the cluster, build the shop, drive the load under faults, quiesce, check."""
    rng = random.Random(cfg.seed)
    cluster = Cluster(cfg)
    report = Report()
    recorder = Recorder()
    started = time.monotonic()
    sent = [0]
    lock = threading.Lock()

    def take() -> bool:
        with lock:
            if sent[0] >= cfg.purchases:
                return False
            sent[0] += 1
            return True

    def client_loop(i):
        client = Client(cluster.base_url, shop, random.Random(cfg.seed * 1000 + i), recorder, cfg.key_reuse)
        used_keys, payout_keys = {}, []
        while take():
            if not client.buy(used_keys):
                with lock:
                    sent[0] -= 1  # a replay is not a new purchase
            if client.rng.random() < cfg.queue_actions:
                client.queue_action(recorder)
            if client.rng.random() < cfg.payouts:
                client.payout(recorder, payout_keys)
            if client.rng.random() < cfg.show_ends:
                client.show_end(recorder)
            report.purchases = sent[0]

    threads = [threading.Thread(target=client_loop, args=(i,), daemon=True) for i in range(cfg.clients)]
    try:
        cluster.start()
        shop = build_shop(cluster, cfg, rng)
        cluster.receiver.secret = register_webhook(cluster, shop, cluster.receiver.url)
        cluster.slow_receiver.secret = register_webhook(cluster, shop, cluster.slow_receiver.url,
                                                        event_types=SLOW_TYPES)
        injector = FaultInjector(cluster, cfg, lambda: sent[0], rng)
        injector.start()
        sampling = threading.Event()
        threading.Thread(target=_sample_lags, args=(cluster, report, sampling), daemon=True).start()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        injector.stop_event.set()
        injector.join(60)
        report.purchases = sent[0]
        report.faults = injector.done
        for err in injector.errors:
            log(f"fault injection error: {err}")
        log(f"load done in {time.monotonic() - started:.0f} s; quiet period")
        _quiesce(cluster, cfg, log)
        sampling.set()
        report.lags_end = cluster.lags()
        if set(report.lags_end) != {"webhooks", "toys"} or any(report.lags_end.values()):
            report.anomalies.append(f"backlog lags after the quiet period: {report.lags_end}")
        _check(cluster, report, shop, recorder)
        report.anomalies.extend(webhook_differences(cluster, report))
        report.worker_exits = worker_exits(cluster)
        report.anomalies.extend(queue_differences(cluster))
    finally:
        cluster.stop()
        report.seconds = time.monotonic() - started
    if not report.anomalies:
        shutil.rmtree(cluster.log_dir, ignore_errors=True)
    else:
        log(f"process logs kept in {cluster.log_dir}")
    return report


def _sample_lags(cluster: Cluster, report: Report, stop: threading.Event) -> None:
    while not stop.wait(2):
        for name, lag in cluster.lags().items():
            report.lags_max[name] = max(report.lags_max.get(name, 0.0), round(lag, 1))


def _left(cluster: Cluster) -> dict:
    """What is not done yet: purchases not settled, toy activations pending (due now, and later with the end of
    the last waiting slot), events not numbered, webhook deliveries not made."""
    now = datetime.now(tz=timezone.utc)
    s = cluster.new_session()
    try:
        pending = LovenseActivation.status == "pending"
        toys, later, last_end = s.execute(select(
            func.count(), func.count().filter(LovenseActivation.starts_at > now), func.max(LovenseActivation.ends_at)
        ).where(pending)).one()
        return {
            "purchases": s.scalar(select(func.count()).select_from(Purchase).where(Purchase.status == "pending")),
            "toys due": toys - later,
            "toys later": later,
            "last slot ends": last_end,
            "events": s.scalar(select(func.count()).select_from(OutboxEvent).where(OutboxEvent.seq.is_(None))),
            "webhooks": s.scalar(select(func.count()).select_from(WebhookDelivery)
                                 .where(WebhookDelivery.status == "pending")),
        }
    finally:
        s.close()


BEAT_JOBS = ("from datetime import timedelta; from models.types import utcnow; import worker.main; "
             "from worker.tasks import settle, sweep_deadlines, reconcile, sweep_activations, relay, "
             "dispatch_webhooks; from worker.celery_app import runtime; "
             "print('swept', settle(), 'refunded', sweep_deadlines(), 'queues', reconcile(), "
             "'relayed', relay(runtime()), 'webhooks', dispatch_webhooks(), "
             "'toys asked again', sweep_activations(utcnow() + timedelta(minutes=1)))")
QUIET_CAP_SECONDS = 600  # however much is due, the quiet period ends by then
SLOT_GRACE_SECONDS = 30  # after the last waiting toy slot's end, its own follow-ups and sweeps have this long


def beat_jobs(cluster: Cluster) -> str:
    """Beat's jobs once, at once (the beat process runs them on its own clock): the pending sweep, escrow
    deadlines, queue reconciliation, the relay, webhook dispatch, and the toy sweep with its clock a minute
    ahead (every pending activation is asked for again, not only the ones past their grace)."""
    out = subprocess.run([sys.executable, "-c", BEAT_JOBS], cwd=ROOT, env=cluster.env, capture_output=True,
                         text=True, timeout=300)
    if out.returncode:
        raise RuntimeError(f"beat jobs failed: {out.stderr[-2000:]}")
    return out.stdout.strip()


def _nothing_left(left: dict) -> bool:
    return not any(v for k, v in left.items() if k != "last slot ends")


def _quiesce(cluster: Cluster, cfg: Config, log) -> None:
    """Every process back up, then wait until nothing is left to do, running beat's jobs every few seconds
    besides the beat process (a Redis restart empties the broker: the sweeps are the safety net for lost
    hand-offs and tasks). The wait is bounded: `quiet_seconds`, or longer while toy slots are still to play (a
    model's toy backlog plays in real time), until SLOT_GRACE_SECONDS after the last one ends; never past
    QUIET_CAP_SECONDS. Says what it waited for, and what was left if it gave up."""
    for w in cluster.celery_processes():
        if not w.alive():
            w.start()
    if not cluster.redis.alive():
        cluster.restart_redis()
    started = time.monotonic()
    while True:
        report = beat_jobs(cluster)
        asked_again = int(report.rsplit("toys asked again", 1)[1])
        left = _left(cluster)
        if _nothing_left(left) and not asked_again:
            log(f"quiet after {time.monotonic() - started:.0f} s")
            return
        elapsed, bound = time.monotonic() - started, cfg.quiet_seconds
        if left["last slot ends"] is not None:
            to_play = (left["last slot ends"] - datetime.now(tz=timezone.utc)).total_seconds()
            bound = max(bound, elapsed + to_play + SLOT_GRACE_SECONDS)
        # Nothing left but the sweep just asked for a toy: the next pass sees what that did.
        if elapsed > QUIET_CAP_SECONDS or (not _nothing_left(left) and elapsed > bound):
            log(f"gave up waiting after {elapsed:.0f} s; left: {left}, toys asked again: {asked_again}")
            return
        log(f"waiting for {left} (toys asked again: {asked_again}; beat: {report})")
        waited = time.monotonic() + 5
        while not _nothing_left(_left(cluster)) and time.monotonic() < waited:
            time.sleep(0.5)


def queue_differences(cluster: Cluster) -> list[str]:
    """Every model's Redis queue against its open entries in the database, member by member and in order."""
    import redis as redis_lib

    from models.services.performance_queue import KEY_PREFIX, member, open_entries

    r = redis_lib.Redis(port=cluster.redis_port, decode_responses=True)
    diffs = []
    s = cluster.new_session()
    try:
        model_ids = {str(m) for m in s.scalars(select(Purchase.model_id).distinct())}
        model_ids |= {k[len(KEY_PREFIX):].split(":", 1)[0] for k in r.scan_iter(match=KEY_PREFIX + "*")}
        for model_id in sorted(model_ids):
            wanted = [member(p) for p in open_entries(s, uuid.UUID(model_id))]
            actual = r.zrange(KEY_PREFIX + model_id, 0, -1)
            if actual != wanted:
                diffs.append(f"queue of model {model_id}: redis {len(actual)} entries, database {len(wanted)}"
                             f" (or another order)")
            durations = set(r.hkeys(f"{KEY_PREFIX}{model_id}:durations"))
            if durations != set(wanted):
                diffs.append(f"queue durations of model {model_id} differ from the database")
    finally:
        s.close()
        r.close()
    return diffs


def _fee_differences(pid, p, entries, rate: int) -> list[str]:
    """The commission of one purchase: sold at its model's rate, split at completion so that the model's part and
    the fee add up to the price, never taken on a refund (models/revenue.py)."""
    out = []
    if p.status != "failed" and p.fee_bps != rate:
        out.append(f"purchase {pid} sold at {p.fee_bps} bps, its model's rate is {rate}")
    fee = p.token_value * rate // 10000 if p.status == "completed" else 0
    if (p.platform_fee or 0) != fee:
        out.append(f"purchase {pid} ({p.status}) took a fee of {p.platform_fee}, wants {fee}")
    expected = {"purchase": p.token_value - fee, "escrow_release": p.token_value - fee, "platform_fee": fee,
                "escrow_hold": p.token_value, "escrow_refund": p.token_value}
    for e in entries:
        if e.kind in expected and e.amount != expected[e.kind]:
            out.append(f"purchase {pid}: {e.kind} of {e.amount}, wants {expected[e.kind]} (price {p.token_value})")
    return out


def _rollup_differences(s) -> list[str]:
    """The statements' rollup against the purchases it adds up, per model."""
    rolled = {m: (sales, gross, fee, refunds, refunded) for m, sales, gross, fee, refunds, refunded in s.execute(
        select(EarningsDay.model_id, func.sum(EarningsDay.sales), func.sum(EarningsDay.gross),
               func.sum(EarningsDay.fee), func.sum(EarningsDay.refunds), func.sum(EarningsDay.refunded))
        .group_by(EarningsDay.model_id))}
    done = Purchase.status == "completed"
    back = Purchase.status == "refunded"
    actual = {m: (sales, gross, fee, refunds, refunded) for m, sales, gross, fee, refunds, refunded in s.execute(
        select(Purchase.model_id, func.count().filter(done), func.coalesce(func.sum(Purchase.token_value).filter(done), 0),
               func.coalesce(func.sum(Purchase.platform_fee).filter(done), 0), func.count().filter(back),
               func.coalesce(func.sum(Purchase.token_value).filter(back), 0))
        .where(Purchase.status.in_(("completed", "refunded"))).group_by(Purchase.model_id))}
    return [f"earnings rollup of model {m}: {rolled.get(m)}, purchases say {actual.get(m)}"
            for m in set(rolled) | set(actual)
            if tuple(int(v) for v in rolled.get(m, (0,) * 5)) != tuple(int(v) for v in actual.get(m, (0,) * 5))]


PLAYED = ("sent", "stopped", "unconfirmed")
SLOT_SLACK_SECONDS = 0.05


def _toy_differences(lovense: FakeLovense, shop: Shop, rows, report: Report) -> list[str]:
    """Each model's toy (the fake Lovense; the uid is the model id) against the database: no buzz played twice (the
    toy played at least every sent and stopped one, at most those and the unconfirmed ones, whose outcome is
    unknown), none cut short by the next buzz (only by a Stop), and the slots of what played never overlap."""
    out = []
    by_model = {}
    for a in rows:
        by_model.setdefault(a.model_id, []).append(a)
    for model_id, _username in shop.models:
        mine = by_model.get(model_id, [])
        count = Counter(a.status for a in mine)
        plays = lovense.plays(model_id)
        report.plays += len(plays)
        confirmed = count["sent"] + count["stopped"]
        if not confirmed <= len(plays) <= confirmed + count["unconfirmed"]:
            out.append(f"toy of model {model_id} played {len(plays)} buzzes; sent or stopped: {confirmed}, "
                       f"unconfirmed: {count['unconfirmed']}")
        out.extend(f"toy of model {model_id}: a {p['command'].get('timeSec')} s buzz cut short after "
                   f"{p['seconds']:.2f} s by the next command" for p in plays if p["cut_by"] == "command")
        slots = sorted((a for a in mine if a.status in PLAYED), key=lambda a: (a.starts_at, a.id))
        for a, b in zip(slots, slots[1:]):
            if (a.ends_at - b.starts_at).total_seconds() > SLOT_SLACK_SECONDS:
                out.append(f"slots of model {model_id} overlap: {a.purchase_id} ({a.status}) ends {a.ends_at}, "
                           f"{b.purchase_id} ({b.status}) starts {b.starts_at}")
    return out


REFUND_BY_REASON = {"cancelled_by_fan": {"queue.entry.cancelled"}, "deadline_passed": {"queue.entry.refunded"},
                    "show_ended": {"queue.entry.refunded"}}


def _expected_events(p) -> list[set]:
    """The outbox events a purchase's committed changes wrote, in order (models/outbox.py): each a set of the
    types that may stand there (a refund's type depends on who made it)."""
    steps = [{"purchase.accepted"}]
    if p.transaction_type == "immediate" or p.status == "failed":
        return steps + ([{f"purchase.{p.status}"}] if p.status != "pending" else [])
    if p.status == "pending":
        return steps
    steps.append({"purchase.queued"})
    if p.started_at is not None:
        steps.append({"queue.entry.started"})
    if p.status == "completed":
        steps.append({"queue.entry.completed"})
    elif p.status == "refunded":
        steps.append(REFUND_BY_REASON.get(p.refund_reason, {"queue.entry.rejected", "queue.entry.refunded"}))
    return steps


def _event_differences(s, purchases, activations) -> list[str]:
    """Events equal the committed changes: every event numbered 1..N without gaps, each purchase's events exactly
    its changes in order, each toy activation's last event its final status."""
    from models.outbox import TOY_EVENTS, OutboxEvent

    out = []
    unnumbered = s.scalar(select(func.count()).select_from(OutboxEvent).where(OutboxEvent.seq.is_(None)))
    count, top = s.execute(select(func.count(OutboxEvent.seq), func.max(OutboxEvent.seq))).one()
    if unnumbered or count != (top or 0):
        out.append(f"outbox: {unnumbered} events not numbered; {count} numbered up to {top}")
    per_purchase, toys = {}, {}
    for pid, type_ in s.execute(select(OutboxEvent.purchase_id, OutboxEvent.type)
                                .where(OutboxEvent.purchase_id.is_not(None)).order_by(OutboxEvent.seq)):
        (toys if type_.startswith("toy.") else per_purchase).setdefault(str(pid), []).append(type_)
    for pid, p in purchases.items():
        got, expected = per_purchase.get(pid, []), _expected_events(p)
        if len(got) != len(expected) or any(t not in e for t, e in zip(got, expected)):
            out.append(f"purchase {pid} ({p.transaction_type}, {p.status}): events {got}, expected {expected}")
    for pid, a in activations.items():
        if a.status in TOY_EVENTS and (toys.get(pid) or [None])[-1] != TOY_EVENTS[a.status]:
            out.append(f"toy activation of {pid} is {a.status}; its events {toys.get(pid)}")
    return out


def _show_differences(s, purchases, recorder: Recorder) -> list[str]:
    """At most one open show per model; after a refund_all end that answered, no entry bought before that end is
    still queued; every show_ended refund is a queued entry of its model bought before one of its refund_all
    ends."""
    out = []
    open_shows = s.execute(select(Show.model_id, func.count()).where(Show.status != "ended")
                           .group_by(Show.model_id).having(func.count() > 1)).all()
    out.extend(f"model {m} has {n} open shows" for m, n in open_shows)
    ends = {}
    for model_id, ended_at in recorder.refund_all_ends:
        ends.setdefault(model_id, []).append(datetime.fromisoformat(ended_at))
    for pid, p in purchases.items():
        mine = ends.get(p.model_id, [])
        if p.status == "queued" and any(p.created_at <= end for end in mine):
            out.append(f"purchase {pid} bought before a refund_all end of its show is still queued")
        if p.refund_reason == "show_ended" and not any(p.created_at <= end for end in mine):
            # an end whose answer was lost to a fault is not in the recorder: look it up
            if s.scalar(select(func.count()).select_from(Show).where(
                    Show.model_id == p.model_id, Show.end_mode == "refund_all", Show.ended_at >= p.created_at)) == 0:
                out.append(f"purchase {pid} refunded as show_ended with no refund_all end after it")
    return out


def worker_exits(cluster: Cluster) -> int:
    """How often a Celery worker gave up on its own ("Unrecoverable error"); the quiet period started it again."""
    logs = [Path(cluster.log_dir, f"worker{i}.log") for i in range(len(cluster.workers))]
    return sum(log.read_text(errors="replace").count('"Unrecoverable error')
               for log in [*logs, Path(cluster.log_dir, "webhooks.log")] if log.exists())


def register_webhook(cluster: Cluster, shop: Shop, url: str, **fields) -> str:
    """The admin registers an endpoint (every event type unless `event_types`); returns its secret."""
    http = requests.Session()
    login = http.post(cluster.base_url + "/auth/login", json={"username": shop.admin[1], "password": PASSWORD},
                      timeout=30)
    r = http.post(cluster.base_url + "/admin/webhooks", json={"url": url, **fields}, timeout=30,
                  headers={"Authorization": f"Bearer {login.json()['access_token']}"})
    r.raise_for_status()
    return r.json()["secret"]


SLOW_TYPES = ["show.changed"]


def webhook_differences(cluster: Cluster, report: Report) -> list[str]:
    """Each receiver got every numbered event it wants at least once, each request signed (checked as it
    arrived, by the Standard Webhooks reference implementation) and carrying the event it names, and no delivery
    is left undone."""
    report.webhooks, report.webhook_duplicates = len(cluster.receiver.processed), len(cluster.receiver.duplicates)
    s = cluster.new_session()
    try:
        types = dict(s.execute(select(OutboxEvent.seq, OutboxEvent.type).where(OutboxEvent.seq.is_not(None))).all())
        undone = Counter(s.scalars(select(WebhookDelivery.status).where(WebhookDelivery.status != "delivered")))
    finally:
        s.close()
    out = [f"webhook deliveries not delivered: {dict(undone)}"] if undone else []
    for receiver, wanted in ((cluster.receiver, None), (cluster.slow_receiver, SLOW_TYPES)):
        expected = {seq for seq, kind in types.items() if wanted is None or kind in wanted}
        missing = expected - set(receiver.ids())
        if missing:
            out.append(f"{len(missing)} of {len(expected)} events never reached {receiver.url}, "
                       f"e.g. {sorted(missing)[:5]}")
        for request in receiver.requests:
            body, msg_id = request["json"] or {}, request["headers"].get("webhook-id")
            if not request.get("verified"):
                out.append(f"webhook {msg_id}: the signature does not verify")
            elif str(body.get("id")) != msg_id or types.get(body.get("id")) != body.get("type"):
                out.append(f"webhook {msg_id} carries event {body.get('id')} {body.get('type')}")
    return out


def _check(cluster: Cluster, report: Report, shop: Shop, recorder: Recorder) -> None:
    anomalies = report.anomalies
    anomalies.extend(recorder.anomalies)
    report.responses = recorder.responses
    s = cluster.new_session()
    try:
        purchases = {str(p.id): p for p in s.scalars(select(Purchase))}
        report.accepted = len(purchases)
        report.statuses = Counter(p.status for p in purchases.values())
        rows = {}
        for e in s.scalars(select(LedgerEntry).where(LedgerEntry.purchase_id.is_not(None))):
            rows.setdefault(str(e.purchase_id), []).append(e)
        for pid, p in purchases.items():
            if p.status not in SETTLED_STATES:
                anomalies.append(f"purchase {pid} left {p.status}")
                continue
            if p.status == "failed" and not p.failure_reason:
                anomalies.append(f"purchase {pid} failed without a reason")
            if p.status == "refunded" and not p.refund_reason:
                anomalies.append(f"purchase {pid} refunded without a reason")
            kinds = [e.kind for e in rows.get(pid, [])]
            if len(kinds) != len(set(kinds)):
                anomalies.append(f"purchase {pid} has a ledger row twice: {kinds}")
            want = set(ROWS_FOR.get((p.transaction_type, p.status), {"?"}))
            if p.status == "completed" and p.loyalty_points > 0:
                want.add("loyalty_award")
            if p.status == "completed" and p.token_value * shop.rates[p.model_id] // 10000:
                want.add("platform_fee")
            if set(kinds) != want:
                anomalies.append(f"purchase {pid} ({p.transaction_type}, {p.status}) has rows {kinds}, wants {want}")
            anomalies.extend(_fee_differences(pid, p, rows.get(pid, []), shop.rates[p.model_id]))
        for pid, told in recorder.answered.items():
            p = purchases.get(pid)
            if p is None:
                anomalies.append(f"client was given purchase {pid}, which does not exist")
            elif told in ("completed", "failed", "refunded") and told != p.status:
                anomalies.append(f"client was told {pid} is {told}, it is {p.status}")
        for (fan_id, key), pids in recorder.by_key.items():
            if len(pids) > 1:
                anomalies.append(f"one idempotency key of fan {fan_id} answered with {len(pids)} purchases")
        per_key = s.execute(
            select(Purchase.fan_id, Purchase.idempotency_key, func.count())
            .where(Purchase.idempotency_key.is_not(None))
            .group_by(Purchase.fan_id, Purchase.idempotency_key)
            .having(func.count() > 1)
        ).all()
        anomalies.extend(f"fan {f} key {k} made {n} purchases" for f, k, n in per_key)
        anomalies.extend(f"books: {d}" for d in books_differences(s))
        held = s.scalar(select(func.coalesce(func.sum(Account.balance), 0))
                        .where(Account.kind.in_(set(TOKEN_KINDS) - {"token_issuer"})))
        anomalies.extend(_rollup_differences(s))
        issued = s.scalar(select(func.coalesce(func.sum(LedgerEntry.amount), 0)).where(LedgerEntry.kind == "top_up"))
        if not (held == issued == shop.issued):
            anomalies.append(f"tokens held {held}, issued by the ledger {issued}, issued by the test {shop.issued}")
        activations = {str(a.purchase_id): a for a in s.scalars(select(LovenseActivation))}
        report.activations = Counter(a.status for a in activations.values())
        for pid, a in activations.items():
            if a.status == "pending":
                p = purchases.get(pid)
                anomalies.append(
                    f"activation of {pid} left pending: attempts {a.attempts}, last error {a.last_error}, slot "
                    f"{a.starts_at}..{a.ends_at} (planned {a.scheduled_at}), claimed {a.claim_token is not None} "
                    f"until {a.locked_until}; purchase {p.transaction_type if p else '?'} {p.status if p else '?'}")
            if a.status == "failed" and not a.last_error:
                anomalies.append(f"activation of {pid} failed without an error")
        anomalies.extend(_toy_differences(cluster.lovense, shop, activations.values(), report))
        anomalies.extend(_event_differences(s, purchases, activations))
        for pid, p in purchases.items():
            toy = isinstance(p.lovense_activation, dict) and p.lovense_activation.get("enabled") is True
            started = p.status == "completed" and (p.transaction_type == "immediate" or p.started_at is not None) \
                or p.started_at is not None
            if toy and started and pid not in activations:
                anomalies.append(f"purchase {pid} ({p.transaction_type}, {p.status}) never had its toy activation")
        anomalies.extend(_show_differences(s, purchases, recorder))
        negative = s.scalar(select(func.count()).select_from(Account)
                            .where(Account.balance < 0, Account.kind.not_in(("token_issuer", "points_issuer"))))
        if negative:
            anomalies.append(f"{negative} accounts below zero")
    finally:
        s.close()
