"""`make bench`: ceilings and our figures in one run, on the real process set, loopback only.

Starts gunicorn (the Procfile's `web` line), Celery workers (the Procfile's `worker` line) and the event stream
process (the `stream` line) on PostgreSQL (database perfmenu_bench, dropped and created here) and Redis (two
databases of its own, flushed here), drives them with bench/loadgen.py in a separate process (and, in the
streams phase, holds the streams open from bench/streams.py, another process), prints one table and writes
bench/last.json.

Settings: BENCH_DATABASE_URL, BENCH_REDIS_URL, BENCH_BROKER_URL, BENCH_PORT, BENCH_SECONDS (per load phase),
BENCH_CONNECTIONS (closed-loop clients), BENCH_RATE (offered purchases/s of the latency phase), BENCH_STREAMS
(open event streams in the streams phase, 1000).
"""
from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from select import select as wait_readable  # `select` is SQLAlchemy's here

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PY = sys.executable
DATABASE_URL = os.environ.get("BENCH_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/perfmenu_bench")
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/13")
BROKER_URL = os.environ.get("BENCH_BROKER_URL", "redis://127.0.0.1:6379/12")
PORT = int(os.environ.get("BENCH_PORT", "18089"))
SECONDS = float(os.environ.get("BENCH_SECONDS", "8"))
CONNECTIONS = int(os.environ.get("BENCH_CONNECTIONS", "32"))
RATE = float(os.environ.get("BENCH_RATE", "100"))
FANS = 200
QUEUE_ENTRIES = 10_000
STATEMENT_SALES = int(os.environ.get("BENCH_STATEMENT_SALES", "1000000"))
NOOP_TASKS = 2000
WORKER_CONCURRENCY = int(os.environ.get("WORKER_CONCURRENCY", "2"))
STREAMS = int(os.environ.get("BENCH_STREAMS", "1000"))
WITH_STREAMS = f"intake_rps_with_{STREAMS}_streams"
MODEL_STREAMS = 5  # per model (a dashboard, an overlay, ...); one admin stream; fans hold the rest

ENV = dict(
    os.environ,
    PYTHONPATH=ROOT,
    DATABASE_URL=DATABASE_URL,
    REDIS_URL=REDIS_URL,
    CELERY_BROKER_URL=BROKER_URL,
    JWT_SECRET_KEY="bench-only-secret-" + "x" * 32,
    JWT_ACCESS_MINUTES="30",
    QUEUE_CAPACITY=str(10 * QUEUE_ENTRIES),  # the queue-ON intake phase must not stop at the default 50
    # The limiter stays in the path (its Redis round trip is part of intake) but must not refuse: 200 fans
    # buy far more than the default 30 a minute each.
    RATE_LIMIT_PURCHASE="1000000 per minute",
    LOVENSE_ENABLED="false",
    WEB_PORT=str(PORT),
    WEB_BIND="127.0.0.1",
    WORKER_CONCURRENCY=str(WORKER_CONCURRENCY),
)
sys.path.insert(0, ROOT)

import redis  # noqa: E402
from sqlalchemy import create_engine, func, select, text  # noqa: E402
from sqlalchemy.engine import make_url  # noqa: E402

from models.runtime import Runtime  # noqa: E402
from models.settings import Settings  # noqa: E402
from tests.processes import ProcessGroup, children_of, free_port, wait_http  # noqa: E402
from tests.processes import recreate_database as recreate  # noqa: E402
from bench.seed import seed as bench_seed  # noqa: E402

STREAM_PORT = free_port()
ENV["STREAM_PORT"] = str(STREAM_PORT)  # the web's tickets name the stream process's address too

# This driver's own settings: the same as the processes it starts.
RUNTIME = Runtime(Settings.from_env(ENV))

LOGS = tempfile.mkdtemp(prefix="perfmenu-bench-")


def log(msg):
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ---------------------------------------------------------------- processes

def procfile_line(name: str) -> str:
    with open(os.path.join(ROOT, "Procfile")) as f:
        for line in f:
            if line.startswith(name + ":"):
                return line.split(":", 1)[1].strip()
    raise SystemExit(f"no {name} line in the Procfile")


def bin_path(cmd: str) -> str:
    """Run the Procfile's commands with this interpreter's venv."""
    first, rest = cmd.split(" ", 1)
    return os.path.join(os.path.dirname(PY), first) + " " + rest


def start_process(name: str, command: str, **env) -> ProcessGroup:
    return ProcessGroup(name, ["bash", "-c", "exec " + command], {**ENV, **env},
                        os.path.join(LOGS, f"{name}.log")).start()


def start_web(app_module: str | None = None, **env) -> ProcessGroup:
    """The Procfile's web line, serving the product or `app_module` (bench.echo_app:app, bench.floor_app:app...)."""
    cmd = bin_path(procfile_line("web"))
    if app_module:
        cmd = cmd.replace("web.wsgi:app", app_module)
    proc = start_process("web" if not app_module else app_module.split(":")[0].rsplit(".", 1)[-1], cmd, **env)
    try:
        return _wait_ready(proc, "/healthz" if not app_module else None)
    except BaseException:
        proc.stop()
        raise


def _wait_ready(proc: ProcessGroup, path: str | None) -> ProcessGroup:
    """Until `path` answers 200, or (None) until "/" answers at all: the one-route bench apps have nothing there
    to GET, and any answer means a worker has loaded the app."""
    try:
        if path:
            wait_http(f"http://127.0.0.1:{PORT}{path}", 30, proc)
        else:
            wait_answer(f"http://127.0.0.1:{PORT}/", 30, proc)
    except RuntimeError as exc:
        raise SystemExit(f"gunicorn: {exc}; see {LOGS}") from None
    return proc


def wait_answer(url: str, timeout: float, proc: ProcessGroup) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(url, timeout=2).close()
            return
        except urllib.error.HTTPError:
            return  # a 404 or 405 is an answer too
        except OSError:
            pass
        if not proc.alive():
            raise RuntimeError(f"{proc.name} exited before {url} answered")
        time.sleep(0.2)
    raise RuntimeError(f"{url} did not answer within {timeout} s")


def start_stream() -> ProcessGroup:
    proc = start_process("stream", bin_path(procfile_line("stream")))
    try:
        wait_http(f"http://127.0.0.1:{STREAM_PORT}/healthz", 30, proc)
    except RuntimeError as exc:
        proc.stop()
        raise SystemExit(f"stream process: {exc}; see {LOGS}") from None
    return proc


def start_worker(app, name: str) -> ProcessGroup:
    cmd = bin_path(procfile_line("worker"))
    if app.main != "perfmenu":
        cmd = cmd.replace("worker.main", "bench.noop_app")
    node = f"{name}-{uuid.uuid4().hex[:6]}"
    proc = start_process(name, cmd + f" -n {node}@%h --without-gossip --without-mingle")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if not proc.alive():
            raise SystemExit(f"celery worker exited; see {LOGS}")
        names = [n for reply in app.control.ping(timeout=0.5) for n in reply if node in n]
        if names:
            proc.node = names[0]
            return proc
    proc.stop()
    raise SystemExit("celery worker did not start")


PROFILE_DIR = os.environ.get("BENCH_PROFILE")  # a directory: py-spy records each phase's server processes there


def profile(name: str, proc: ProcessGroup, seconds: float) -> list:
    """With BENCH_PROFILE set, record the children of `proc` (gunicorn workers, the Celery pool) with py-spy,
    as collapsed stacks (`<name>-<pid>.txt`), for `seconds`."""
    if not PROFILE_DIR:
        return []
    os.makedirs(PROFILE_DIR, exist_ok=True)
    spy = os.path.join(os.path.dirname(PY), "py-spy")
    return [subprocess.Popen([spy, "record", "--format", "raw", "--gil", "-r", "100", "-d", str(int(seconds)),
                              "-o", os.path.join(PROFILE_DIR, f"{name}-{pid}.txt"), "-p", str(pid)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            for pid in children_of(proc.pid)]


def loadgen(spec) -> dict:
    out = subprocess.run([PY, "-m", "bench.loadgen", json.dumps(spec)], cwd=ROOT, env=ENV, capture_output=True,
                         text=True, timeout=SECONDS * 4 + 60)
    if out.returncode != 0:
        raise SystemExit(out.stderr)
    return json.loads(out.stdout)


# ---------------------------------------------------------------- data

def recreate_database():
    recreate(RUNTIME.settings.database_url, (REDIS_URL, BROKER_URL))


def seed() -> dict:
    """Two models (one Queue OFF menu, one Queue ON menu), FANS fans with plenty of tokens, their JWTs."""
    from web import create_app

    data = bench_seed(RUNTIME, create_app(RUNTIME.settings), ("OFF", "ON"), FANS, admins=1)
    return {**data, "admin_token": data["admin_tokens"][0]}


def pending_count() -> int:
    from models.purchases import Purchase

    s = RUNTIME.new_session()
    try:
        return s.scalar(select(func.count()).select_from(Purchase).where(Purchase.status == "pending"))
    finally:
        s.close()


# ---------------------------------------------------------------- ceilings

SQL_SETUP = """
DROP TABLE IF EXISTS bench_accounts, bench_entries;
CREATE TABLE bench_accounts (id int PRIMARY KEY, balance bigint NOT NULL);
CREATE TABLE bench_entries (id bigserial PRIMARY KEY, debit int, credit int, amount bigint, kind text,
                            created_at timestamptz DEFAULT now());
INSERT INTO bench_accounts SELECT g, 1000000000 FROM generate_series(1, 400) g;
"""


def sql_client(seconds: float, client: int) -> None:
    """One client of the settlement-shaped transaction: lock a wallet, two updates, two inserts, commit."""
    import random

    import psycopg

    url = make_url(DATABASE_URL).set(drivername="postgresql").render_as_string(hide_password=False)
    rnd = random.Random(client)
    done = 0
    with psycopg.connect(url) as conn:
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            wallet, earnings = rnd.randint(1, FANS), rnd.randint(FANS + 1, FANS + 2)
            with conn.transaction():
                conn.execute("SELECT balance FROM bench_accounts WHERE id = %s FOR UPDATE", (wallet,))
                conn.execute("UPDATE bench_accounts SET balance = balance - 10 WHERE id = %s", (wallet,))
                conn.execute("UPDATE bench_accounts SET balance = balance + 10 WHERE id = %s", (earnings,))
                conn.execute("INSERT INTO bench_entries (debit, credit, amount, kind) VALUES (%s, %s, 10, 'p')",
                             (wallet, earnings))
                conn.execute("INSERT INTO bench_entries (debit, credit, amount, kind) VALUES (%s, %s, 1, 'l')",
                             (earnings, wallet))
            done += 1
    print(done)


def sql_ceiling(clients: int) -> float:
    engine = create_engine(DATABASE_URL)
    with engine.begin() as conn:
        conn.exec_driver_sql(SQL_SETUP)
    engine.dispose()
    procs = [subprocess.Popen([PY, "-m", "bench.run", "sql-client", str(SECONDS), str(i)], cwd=ROOT, env=ENV,
                              stdout=subprocess.PIPE, text=True) for i in range(clients)]
    total = sum(int(p.communicate()[0].strip()) for p in procs)
    return round(total / SECONDS, 1)


def time_backlog(app, proc: ProcessGroup, queue: str, done, expected: int, timeout: float = 90) -> float:
    """Resume the worker's consumer on a prepared backlog and time it until `done()` reaches `expected`."""
    t0 = time.perf_counter()
    app.control.add_consumer(queue, destination=[proc.node], reply=True)
    deadline = t0 + timeout
    while time.perf_counter() < deadline:
        if done() >= expected:
            break
        time.sleep(0.01)
    elapsed = time.perf_counter() - t0
    return round(done() / elapsed, 1)


def celery_noop_ceiling() -> float:
    from bench import noop_app

    noop_app.configure(RUNTIME.settings)
    r = redis.Redis.from_url(REDIS_URL)
    r.delete(noop_app.COUNTER)
    worker = start_worker(noop_app.app, "noop")
    try:
        noop_app.app.control.cancel_consumer("bench_noop", destination=[worker.node], reply=True)
        for _ in range(NOOP_TASKS):
            noop_app.noop.apply_async()
        return time_backlog(noop_app.app, worker, "bench_noop", lambda: int(r.get(noop_app.COUNTER) or 0), NOOP_TASKS)
    finally:
        worker.stop()


# ---------------------------------------------------------------- queue lookups

def queue_lookup(lookups: int = 2000) -> tuple[dict, str]:
    """Position + wait lookups on a 10,000-entry queue through models/services/performance_queue.py, timed
    from this process as the web calls them (one Lua round trip each). The entries are written to Redis with
    the module's own `sync`."""
    import random
    from datetime import timedelta

    from models.purchases import Purchase
    from models.services import performance_queue
    from models.types import utcnow

    rnd = random.Random(8)
    model_id, start = uuid.uuid4(), utcnow()
    entries = [
        Purchase(id=uuid.uuid4(), model_id=model_id, transaction_type="queued", status="queued",
                 queue_priority=rnd.choice((0, 10, 25, 50, 100, 250)), estimated_duration_minutes=rnd.randint(1, 10),
                 created_at=start + timedelta(microseconds=i))
        for i in range(QUEUE_ENTRIES)
    ]
    entries[0].status = "in_progress"
    r = redis.Redis.from_url(REDIS_URL, decode_responses=True)
    for i in range(0, len(entries), 1000):
        performance_queue.sync(entries[i:i + 1000], redis=r)
    assert r.zcard(performance_queue._keys(model_id)[0]) == QUEUE_ENTRIES
    sample = [rnd.choice(entries) for _ in range(lookups)]
    times = []
    t_all = time.perf_counter()
    for p in sample:
        t0 = time.perf_counter()
        assert performance_queue.position(p, redis=r) is not None
        times.append(time.perf_counter() - t0)
    elapsed = time.perf_counter() - t_all
    times.sort()
    return {
        "queue_lookup_ms": round(sum(times) / len(times) * 1000, 3),
        "queue_lookup_p99_ms": round(times[int(0.99 * (len(times) - 1))] * 1000, 3),
        "queue_lookups_per_s": round(lookups / elapsed, 1),
    }, ""


# ---------------------------------------------------------------- statements

def statement_timing(requests: int = 30) -> dict:
    """A model with STATEMENT_SALES completed sales spread over the past year (10 items on 2 menus, 20 % fee),
    written by SQL with the rollup rows settlement would have kept; then the model's statement for the whole year,
    asked through the app in this process (`GET /admin/models/<id>/earnings`, first page of sales), and the same
    app's /healthz beside it."""
    from datetime import timedelta

    from models.ledger import create_accounts
    from models.menus import Menu, MenuItem
    from models.types import utcnow
    from models.users import User
    from web import create_app
    from web.auth import sign_in

    s = RUNTIME.new_session()
    model, fan, admin = (User(username=f"statement-{r}", role=r, password_hash="!") for r in ("model", "fan", "admin"))
    s.add_all([model, fan, admin])
    s.flush()
    for u in (model, fan):
        create_accounts(s, u)
    items = []
    for m in range(2):
        menu = Menu(model_id=model.id, name=f"Menu {m}")
        s.add(menu)
        s.flush()
        for i in range(5):
            item = MenuItem(menu_id=menu.id, name=f"Item {m}.{i}", token_value=10 * (i + 1))
            s.add(item)
            items.append(item)
    s.commit()
    values = ", ".join(f"({n}, '{it.id}'::uuid, '{it.menu_id}'::uuid, {it.token_value})" for n, it in enumerate(items))
    t0 = time.perf_counter()
    with RUNTIME.engine.begin() as conn:
        conn.execute(text(f"""
            WITH item(n, id, menu_id, price) AS (VALUES {values})
            INSERT INTO purchases (id, fan_id, model_id, menu_id, item_id, item_name, token_value, loyalty_points,
                                   estimated_duration_minutes, transaction_type, queue_priority, status, purchase_day,
                                   created_at, settled_at, completed_at, updated_at, fee_bps, platform_fee)
            SELECT gen_random_uuid(), :fan, :model, item.menu_id, item.id, 'Item', item.price, 0, 0, 'immediate', 0,
                   'completed', CAST(t AS date), t, t, t, t, 2000, item.price * 2000 / 10000
            FROM generate_series(1, :n) AS g
            JOIN item ON item.n = g % 10
            CROSS JOIN LATERAL (SELECT now() - (g * interval '365 days') / :n AS t) AS at"""),
            {"fan": fan.id, "model": model.id, "n": STATEMENT_SALES})
        conn.execute(text("""
            INSERT INTO earnings_days (model_id, day, item_id, menu_id, sales, gross, fee, refunds, refunded)
            SELECT model_id, CAST(completed_at AS date), item_id, menu_id, count(*), sum(token_value),
                   sum(platform_fee), 0, 0
            FROM purchases WHERE model_id = :model GROUP BY 1, 2, 3, 4"""), {"model": model.id})
        conn.execute(text("ANALYZE purchases; ANALYZE earnings_days"))
    log(f"statement data: {STATEMENT_SALES} sales in {time.perf_counter() - t0:.0f} s")
    app = create_app(RUNTIME.settings)
    with app.app_context():
        headers = {"Authorization": f"Bearer {sign_in(s, admin)['access_token']}"}
    s.close()
    client = app.test_client()
    today = utcnow().date()
    url = f"/admin/models/{model.id}/earnings?from={today - timedelta(days=365)}&to={today}"

    def timed(path) -> float:
        times = []
        for _ in range(requests):
            t = time.perf_counter()
            r = client.get(path, headers=headers)
            times.append((time.perf_counter() - t) * 1000)
            assert r.status_code == 200, r.get_data(as_text=True)[:300]
        return sorted(times)[len(times) // 2]

    timed(url)  # warm: statement caches, the pool
    body = client.get(url, headers=headers).get_json()
    assert body["totals"]["sales"] == STATEMENT_SALES, body["totals"]
    return {"statement_ms": round(timed(url), 1), "healthz_ms": round(timed("/healthz"), 2),
            "statement_sales": STATEMENT_SALES}


# ---------------------------------------------------------------- streams

def raise_fd_limit() -> None:
    """Each open stream is a socket in the stream process and one in bench/streams.py (both our children, which
    inherit this limit), plus the servers' own files."""
    need = 2 * STREAMS + 1024
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (need if hard == resource.RLIM_INFINITY else min(need, hard), hard))


def established(port: int) -> int:
    """TCP connections held open by whoever listens on 127.0.0.1:`port` (server side, from /proc/net/tcp)."""
    with open("/proc/net/tcp") as f:
        rows = [line.split() for line in f.readlines()[1:]]
    return sum(1 for row in rows if row[3] == "01" and int(row[1].split(":")[1], 16) == port)


def cpu_seconds(pid: int) -> float:
    """User + system CPU of `pid` and its descendants so far."""
    ticks = 0
    for p in [pid] + children_of(pid):
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            ticks += int(fields[11]) + int(fields[12])
        except (OSError, IndexError, ValueError):
            pass
    return ticks / os.sysconf("SC_CLK_TCK")


def postgres_cpu() -> dict[int, float]:
    """CPU seconds so far of each PostgreSQL server process (titled `postgres: ...`: backends, walwriter,
    checkpointer...), by pid: the children of the postmaster that runs this driver's own backend. Backends of other
    databases are left out: other runs share the server."""
    with RUNTIME.engine.connect() as conn:
        backend = conn.scalar(text("SELECT pg_backend_pid()"))
        others = set(conn.scalars(text("SELECT pid FROM pg_stat_activity "
                                       "WHERE datname IS NOT NULL AND datname <> current_database()")))
    with open(f"/proc/{backend}/stat") as f:
        postmaster = int(f.read().rsplit(")", 1)[1].split()[1])
    found = {}
    for pid in children_of(postmaster):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                title = f.read()
        except OSError:
            continue
        if title.startswith(b"postgres:") and pid not in others:
            found[pid] = cpu_seconds(pid)
    return found


def cpu_used(before: dict[int, float], after: dict[int, float]) -> float:
    """CPU between two postgres_cpu() readings: a process new since `before` counts from 0 (one that ended in
    between is lost; the pools' backends live through a phase)."""
    return sum(seconds - before.get(pid, 0.0) for pid, seconds in after.items())


def drain(timeout: float = 60) -> int:
    """Wait until nothing is pending and the relay has numbered every event; returns the last event number."""
    deadline = time.monotonic() + timeout
    while True:
        settled = pending_count() == 0  # first: settlement writes its events in the same transaction
        with RUNTIME.engine.connect() as conn:
            unnumbered = conn.scalar(text("SELECT count(*) FROM outbox_events WHERE seq IS NULL"))
            last = conn.scalar(text("SELECT coalesce(max(seq), 0) FROM outbox_events"))
        if settled and not unnumbered:
            return last
        if time.monotonic() > deadline:
            raise RuntimeError(f"not drained in {timeout} s: purchases pending or {unnumbered} events unnumbered")
        time.sleep(0.1)


def wait_idle(proc: ProcessGroup, timeout: float = 30) -> float:
    """Wait until `proc` (and its children) use under 10 % of a core; returns the seconds waited. A stream is
    reported open at its first line, before the server's per-stream setup (a fan's queue places) is done."""
    t0 = time.monotonic()
    before = cpu_seconds(proc.pid)
    while time.monotonic() - t0 < timeout:
        time.sleep(0.5)
        now = cpu_seconds(proc.pid)
        if now - before < 0.05:
            break
        before = now
    return round(time.monotonic() - t0, 1)


def worker_timeouts(name: str) -> int:
    """How often gunicorn killed a worker that stopped answering its master (a stalled gevent loop)."""
    with open(os.path.join(LOGS, f"{name}.log"), errors="replace") as f:
        return f.read().count("WORKER TIMEOUT")


def read_line(proc, timeout: float) -> dict:
    ready, _, _ = wait_readable([proc.stdout], [], [], timeout)
    line = proc.stdout.readline() if ready else ""
    if not line:
        raise RuntimeError(f"bench.streams gave no answer in {timeout} s (its log: {LOGS}/streams.log)")
    return json.loads(line)


def delivery_ms(timings: list, start: float, end: float) -> dict:
    """p50/p99/max of arrival - occurred_at (ms) for the events that occurred in [start, end)."""
    late = sorted((arrived - at) * 1000 for at, arrived in timings if start <= at < end)
    pick = lambda q: round(late[min(len(late) - 1, round(q * (len(late) - 1)))], 1) if late else None  # noqa: E731
    return {"p50": pick(0.5), "p99": pick(0.99), "max": pick(1), "events": len(late)}


STREAM_KEYS = ("intake_rps_no_streams", "intake_rps_no_streams_after", WITH_STREAMS, "intake_drop_with_streams_pct", "streams_open", "streams_failed",
               "streams_open_s", "streams_still_open", "stream_reconnects", "streams_lost", "stream_worker_timeouts",
               "stream_server_connections", "stream_rss_mb", "stream_cpu_s", "stream_clients_cpu_s",
               "stream_messages", "stream_events_expected", "stream_events_received", "stream_events_missing",
               "stream_purchases_accepted", "stream_delivery_p50_ms", "stream_delivery_p99_ms",
               "stream_delivery_max_ms", "stream_delivery_events", "stream_delivery_at_rate_p50_ms",
               "stream_delivery_at_rate_p99_ms", "stream_delivery_at_rate_max_ms", "stream_delivery_at_rate_events")


def no_streams_mean(res: dict):
    runs = [res[k] for k in ("intake_rps_no_streams", "intake_rps_no_streams_after") if res.get(k)]
    return sum(runs) / len(runs) if runs else None


def streams_phase(data: dict, purchase_url: str, stream: ProcessGroup, res: dict) -> None:
    """Intake (the Queue OFF measurement) twice on a fresh web, first without streams, then with STREAMS event
    streams open on the stream process; then, streams still open, purchases offered at RATE/s. Fills `res` as
    it goes (a failure leaves the rest None). Unlike the intake phase the worker consumes throughout, so the
    relay numbers and publishes events as they commit and the streams carry them while intake is measured. The
    admin stream times each purchase event's arrival against its occurred_at (stamped in the committing
    transaction) and must receive every event committed from the moment the streams open."""
    res.update(dict.fromkeys(STREAM_KEYS), streams_requested=STREAMS)
    spec = {"url": purchase_url, "duration": SECONDS, "connections": CONNECTIONS, "tokens": data["tokens"],
            "bodies": [{"menu_id": data["menus"]["OFF"]["menu_id"], "item_id": data["menus"]["OFF"]["item_id"]}],
            "idempotency": True}
    web = start_web(PURCHASE_WAIT_SECONDS="0")
    client = None

    def tell(command, timeout: float = 60) -> dict:
        client.stdin.write(f"{command}\n")
        client.stdin.flush()
        return read_line(client, timeout)

    try:
        loadgen({**spec, "duration": 1})  # warm up, as the intake phase does
        drain()
        r = loadgen(spec)
        res["intake_rps_no_streams"] = r["ok_per_s"]
        log(f"intake, no streams: {r}")
        first = drain()

        # Most streams are fans' (tickets, as a browser opens them; 200 fans, a few devices each), a few the
        # models' (bearer tokens), one the admin's: it resumes after `first`, so it must get every later event.
        # All are opened at once, as a crowd reconnecting after a restart of the stream process would.
        viewers = [{"role": "admin", "token": data["admin_token"], "last_event_id": first}]
        viewers += [{"role": "model", "token": t} for t in data["model_tokens"] for _ in range(MODEL_STREAMS)]
        viewers += [{"role": "fan", "token": data["tokens"][i % len(data["tokens"])], "ticket": True}
                    for i in range(STREAMS - len(viewers))]
        with open(os.path.join(LOGS, "streams.log"), "ab") as err:
            client = subprocess.Popen([PY, "-m", "bench.streams"], cwd=ROOT, env=ENV, stdin=subprocess.PIPE,
                                      stdout=subprocess.PIPE, stderr=err, text=True)
        opened = tell(json.dumps({"stream_url": f"http://127.0.0.1:{STREAM_PORT}/events/stream",
                                  "ticket_url": f"http://127.0.0.1:{PORT}/events/ticket", "viewers": viewers}),
                      timeout=120)
        held = established(STREAM_PORT)
        res.update(streams_open=opened["open"], streams_failed=opened["failed"], streams_open_s=opened["open_s"])
        log(f"streams: {opened}; the stream process holds {held} connections")
        if opened["open"] < STREAMS:
            raise RuntimeError(f"{opened['open']} of {STREAMS} streams opened (failed: {opened['failed']}, no "
                               f"answer: {opened['pending']}; WORKER TIMEOUT {worker_timeouts('stream')} times); "
                               f"see {LOGS}/stream.log")
        log(f"stream process idle after {wait_idle(stream)} s")

        cpu = cpu_seconds(stream.pid), cpu_seconds(client.pid)
        spies = profile("intake-streams", stream, SECONDS)
        windows = [time.time()]
        r = loadgen(spec)
        held = min(held, established(STREAM_PORT))  # counted again before any stream closes
        res["stream_cpu_s"], res["stream_clients_cpu_s"] = (
            round(cpu_seconds(p) - c, 2) for p, c in zip((stream.pid, client.pid), cpu))
        for spy in spies:
            spy.wait()
        res[WITH_STREAMS] = r["ok_per_s"]
        res.update(stream_server_connections=held, stream_rss_mb=stream.rss_mb())
        log(f"intake, {opened['open']} streams: {r}")
        log(f"admin stream after the drain: {tell(drain())}")

        # The same streams at the e2e phase's offered rate: delivery when the machine is not saturated.
        windows.append(time.time())
        r = loadgen({"url": purchase_url, "duration": SECONDS, "rate": RATE, "tokens": data["tokens"],
                     "bodies": spec["bodies"], "idempotency": True})
        last = drain()
        log(f"{RATE:g}/s with {opened['open']} streams: {r}; admin stream: {tell(last)}")
        windows.append(time.time())
        got = tell("end")
        with RUNTIME.engine.connect() as conn:
            expected = dict(conn.execute(text("SELECT seq, type FROM outbox_events WHERE seq > :a AND seq <= :b"),
                                         {"a": first, "b": last}).all())
        received = set(got["admin_ids"])
        res.update(
            streams_still_open=got["still_open"], stream_reconnects=got["reconnects"], streams_lost=got["lost"],
            stream_messages=got["messages"],
            stream_events_expected=len(expected), stream_events_received=len(received & expected.keys()),
            stream_events_missing=len(expected.keys() - received),
            stream_purchases_accepted=sum(1 for t in expected.values() if t == "purchase.accepted"))
        for prefix, (start, end) in (("stream_delivery", windows[0:2]), ("stream_delivery_at_rate", windows[1:3])):
            figures = delivery_ms(got["admin_timings"], start, end)
            res.update({f"{prefix}_p50_ms": figures["p50"], f"{prefix}_p99_ms": figures["p99"],
                        f"{prefix}_max_ms": figures["max"], f"{prefix}_events": figures["events"]})
        log(f"streams: still open {got['still_open']}, reconnects {got['reconnects']}, lost {got['lost']}, "
            f"messages {got['messages']}")

        # Intake without streams once more, now that they are closed: the drop is judged against the mean of the
        # runs before and after, so the database's growth and the machine's drift count on both sides.
        drain()
        r = loadgen(spec)
        res["intake_rps_no_streams_after"] = r["ok_per_s"]
        log(f"intake, streams closed: {r}")
        no = no_streams_mean(res)
        res["intake_drop_with_streams_pct"] = round((no - res[WITH_STREAMS]) / no * 100, 1)
    finally:
        res["stream_worker_timeouts"] = worker_timeouts("stream")  # must be 0: a stall drops every stream
        if client is not None and client.poll() is None:
            client.kill()
            client.wait()
        web.stop()


# ---------------------------------------------------------------- main

def main():
    t_start = time.perf_counter()
    load_before = os.getloadavg()[0]
    log(f"logs in {LOGS}")
    raise_fd_limit()
    recreate_database()
    data = seed()
    results, notes = {}, {}
    purchase_url = f"http://127.0.0.1:{PORT}/menu/purchase"

    def purchase_bodies(mode):
        m = data["menus"][mode]
        return [{"menu_id": m["menu_id"], "item_id": m["item_id"]}]

    # Ceiling 1: echo on the same gunicorn configuration, as a one-route Flask app (echo_rps, the ceiling the
    # intake target is judged against, as in the reference figure) and as a bare WSGI callable.
    for key, module in (("echo_rps", "bench.echo_app:flask_app"), ("echo_wsgi_rps", "bench.echo_app:app")):
        echo = start_web(module)
        try:
            loadgen({"url": f"http://127.0.0.1:{PORT}/", "duration": 1, "connections": CONNECTIONS})
            r = loadgen({"url": f"http://127.0.0.1:{PORT}/", "duration": SECONDS, "connections": CONNECTIONS,
                         "bodies": purchase_bodies("OFF"), "tokens": data["tokens"][:1]})
            results[key] = r["ok_per_s"]
            log(f"{module}: {r}")
        finally:
            echo.stop()

    # Beside the echo: the floor (intake's essential work and nothing else) and the peer (the in-request
    # design), the same line and load as intake; the Queue OFF item. No worker runs yet. The floor's pending rows
    # are deleted after its phase (the product's worker would settle them later, into the settle backlog), and
    # the events the purchases' trigger wrote for both (the relay would publish them during the product's phases).
    with RUNTIME.engine.connect() as conn:
        last_event = conn.scalar(text("SELECT coalesce(max(id), 0) FROM outbox_events"))
    for key, module in (("floor_rps", "bench.floor_app:app"), ("peer_rps", "bench.peer_app:app")):
        spec = {"url": purchase_url, "duration": SECONDS, "connections": CONNECTIONS,
                "bodies": purchase_bodies("OFF"), "tokens": data["tokens"], "idempotency": True}
        app_proc = start_web(module)
        try:
            loadgen({**spec, "duration": 1})
            r = loadgen(spec)
            results[key] = r["ok_per_s"]
            log(f"{module}: {r}")
        finally:
            app_proc.stop()
    with RUNTIME.engine.begin() as conn:
        floor_rows = conn.execute(text("DELETE FROM purchases WHERE status = 'pending'")).rowcount
        events = conn.execute(text("DELETE FROM outbox_events WHERE id > :id"), {"id": last_event}).rowcount
    log(f"deleted the floor's {floor_rows} pending purchases and {events} events of the floor and the peer")

    # Ceiling 2: the settlement-shaped transaction, one client per settling worker process.
    results["sql_ceiling_tps"] = sql_ceiling(WORKER_CONCURRENCY)
    log(f"sql ceiling: {results['sql_ceiling_tps']} TPS with {WORKER_CONCURRENCY} clients")

    # Ceiling 3: a no-op Celery task from a backlog.
    results["celery_noop_tps"] = celery_noop_ceiling()
    log(f"celery no-op: {results['celery_noop_tps']} tasks/s")

    # Ours: intake with the workers' consumers paused (the backlog they settle next), then settlement.
    from worker.celery_app import bind_runtime
    from worker.celery_app import celery as product_celery

    bind_runtime(RUNTIME)

    worker = start_worker(product_celery, "worker")
    stream = start_stream()  # the Procfile's process set: it idles (no streams) until the streams phase
    web = None
    try:
        web = start_web(PURCHASE_WAIT_SECONDS="0")
        product_celery.control.cancel_consumer("celery", destination=[worker.node], reply=True)
        loadgen({"url": purchase_url, "duration": 1, "connections": CONNECTIONS, "bodies": purchase_bodies("OFF"),
                 "tokens": data["tokens"], "idempotency": True})
        for mode in ("OFF", "ON"):
            spies = profile(f"intake-{mode}", web, SECONDS)
            r = loadgen({"url": purchase_url, "duration": SECONDS, "connections": CONNECTIONS,
                         "bodies": purchase_bodies(mode), "tokens": data["tokens"], "idempotency": True})
            results[f"intake_{mode.lower()}_rps"] = r["ok_per_s"]
            log(f"intake Queue {mode}: {r}")
            for spy in spies:
                spy.wait()
        results["intake_rps"] = min(results["intake_off_rps"], results["intake_on_rps"])
        results["web_rss_mb"] = web.rss_mb()
        backlog = pending_count()
        results["settle_backlog"] = backlog
        spies = profile("settle", worker, 10)
        results["settle_tps"] = time_backlog(product_celery, worker, "celery", lambda: backlog - pending_count(),
                                             backlog)
        results["worker_rss_mb"] = worker.rss_mb()
        for spy in spies:
            spy.send_signal(signal.SIGINT)  # py-spy writes its file on SIGINT
            spy.wait()
        log(f"settled a backlog of {backlog}: {results['settle_tps']} purchases/s")
        web.stop()
        web = None

        # Ours: purchase -> settled latency at a fixed offered rate, with the product's default wait.
        broker = redis.Redis.from_url(BROKER_URL)
        deadline = time.monotonic() + 60
        while broker.llen("celery") and time.monotonic() < deadline:
            time.sleep(0.1)
        web = start_web()
        # Warm up first (as the intake phase does): each gunicorn thread's first request opens its database
        # and Redis connections and fills the statement caches; steady-state latency is the figure.
        loadgen({"url": purchase_url, "duration": 2, "rate": RATE, "bodies": purchase_bodies("OFF"),
                 "tokens": data["tokens"], "idempotency": True})
        spies = profile("e2e-web", web, SECONDS) + profile("e2e-worker", worker, SECONDS)
        cpu = cpu_seconds(web.pid), cpu_seconds(worker.pid), postgres_cpu()
        r = loadgen({"url": purchase_url, "duration": SECONDS * 1.5, "rate": RATE, "bodies": purchase_bodies("OFF"),
                     "tokens": data["tokens"], "idempotency": True, "ok_status": [200, 202], "settled_only": True})
        # CPU per purchase answered, end to end: gunicorn (master and workers), Celery (main and pool),
        # PostgreSQL (this database's backends and the server's own processes).
        used = {"web": cpu_seconds(web.pid) - cpu[0], "worker": cpu_seconds(worker.pid) - cpu[1],
                "postgres": cpu_used(cpu[2], postgres_cpu())}
        used["total"] = sum(used.values())
        for spy in spies:
            spy.wait()
        log(f"e2e at {RATE}/s: {r}; CPU (s): { {k: round(v, 2) for k, v in used.items()} }")
        results.update(e2e_p50_ms=r["p50_ms"], e2e_p95_ms=r["p95_ms"], e2e_p99_ms=r["p99_ms"], e2e_late=r["late"],
                       e2e_requests=r["ok"])
        results.update({f"e2e_cpu_ms_per_purchase_{k}": round(v * 1000 / r["ok"], 2) if r["ok"] else None
                        for k, v in used.items()})
        results["web_rss_mb"] = max(results["web_rss_mb"], web.rss_mb())
        results["worker_rss_mb"] = max(results["worker_rss_mb"], worker.rss_mb())
        web.stop()
        web = None

        # Ours: intake without and with STREAMS open event streams, and commit -> stream delivery. A failure
        # there is a finding, not the end of the run: it goes into the notes.
        try:
            streams_phase(data, purchase_url, stream, results)
        except RuntimeError as exc:
            notes["streams"] = f"streams phase failed: {exc}"
            log(notes["streams"])
    finally:
        if web is not None:
            web.stop()
        stream.stop()
        worker.stop()

    results.update(statement_timing())
    log(f"statement over a year of {results['statement_sales']} sales: {results['statement_ms']} ms")
    lookup, notes["queue_lookup_ms"] = queue_lookup()
    results.update({"queue_lookup_ms": None, "queue_lookup_p99_ms": None, "queue_lookups_per_s": None, **lookup})
    log(f"queue lookups: {lookup or notes['queue_lookup_ms']}")
    from models.ledger import books_differences

    s = RUNTIME.new_session()
    results["books_differences"] = len(books_differences(s))
    s.close()
    results["elapsed_s"] = round(time.perf_counter() - t_start, 1)
    # The machine is shared: the 1-minute load average before and after says how much else was running.
    results["load_average"] = [round(load_before, 1), round(os.getloadavg()[0], 1)]
    results["notes"] = notes
    report(results)


def ratio(a, b):
    return None if a is None or not b else round(a / b, 3)


def report(res):
    rows = [
        ("intake Queue OFF (req/s)", res["intake_off_rps"], "Flask echo", res["echo_rps"], ">= 0.35"),
        ("intake Queue ON (req/s)", res["intake_on_rps"], "Flask echo", res["echo_rps"], ">= 0.35"),
        ("intake, the lower of the two (req/s)", res["intake_rps"], "bare WSGI echo", res["echo_wsgi_rps"],
         ""),
        ("intake / floor (req/s)", res["intake_rps"], "floor: the essential work", res["floor_rps"], ">= 0.6"),
        ("intake / peer (req/s)", res["intake_rps"], "peer: all in the request", res["peer_rps"], ">= 2"),
        ("intake / echo (req/s)", res["intake_rps"], "Flask echo", res["echo_rps"], ">= 0.35"),
        (f"settlement from backlog of {res['settle_backlog']} (/s)", res["settle_tps"], "SQL txn TPS",
         res["sql_ceiling_tps"], ">= 0.5"),
        ("settlement (/s)", res["settle_tps"], "Celery no-op tasks/s", res["celery_noop_tps"], ""),
        (f"e2e p50 at {RATE:g}/s (ms)", res["e2e_p50_ms"], "", None, "<= 15"),
        (f"e2e p95 at {RATE:g}/s (ms)", res["e2e_p95_ms"], "", None, ""),
        (f"e2e p99 at {RATE:g}/s (ms)", res["e2e_p99_ms"], "", None, "<= 60"),
        (f"earnings statement, a year of {res['statement_sales']:,} sales, p50 (ms)", res["statement_ms"],
         "GET /healthz, same app (ms)", res["healthz_ms"], "< 200 ms"),
        ("queue position+wait lookup, 10k entries, mean (ms)", res["queue_lookup_ms"], "", None, "< 2"),
        ("queue position+wait lookup, 10k entries, p99 (ms)", res["queue_lookup_p99_ms"], "", None, ""),
        ("queue position+wait lookups, one client (/s)", res["queue_lookups_per_s"], "", None, ""),
        ("web RSS, all gunicorn processes (MB)", res["web_rss_mb"], "", None, ""),
        ("worker RSS, Celery main + pool (MB)", res["worker_rss_mb"], "", None, ""),
        ("intake Queue OFF, worker consuming, no streams, before (req/s)", res["intake_rps_no_streams"], "", None,
         ""),
        ("intake, same, no streams, after (req/s)", res["intake_rps_no_streams_after"], "", None, ""),
        (f"intake, same, {STREAMS:,} streams open (req/s)", res[WITH_STREAMS], "no streams, mean",
         no_streams_mean(res), ">= 0.90"),
        ("commit -> stream delivery during that intake, p50 (ms)", res["stream_delivery_p50_ms"], "", None, ""),
        ("commit -> stream delivery during that intake, p99 (ms)", res["stream_delivery_p99_ms"], "", None, ""),
        (f"commit -> stream delivery at {RATE:g}/s, same streams, p50 (ms)", res["stream_delivery_at_rate_p50_ms"],
         "", None, ""),
        (f"commit -> stream delivery at {RATE:g}/s, same streams, p99 (ms)", res["stream_delivery_at_rate_p99_ms"],
         "", None, ""),
        (f"events missing on the admin stream, of {fmt(res['stream_events_expected'])}",
         res["stream_events_missing"], "", None, "0"),
        (f"stream process RSS, {STREAMS:,} streams (MB)", res["stream_rss_mb"], "", None, ""),
    ]
    lines = ["| figure | ours | ceiling | ceiling value | ratio | target |", "|---|---:|---|---:|---:|---|"]
    for name, ours, cname, ceil, target in rows:
        lines.append(f"| {name} | {fmt(ours)} | {cname} | {fmt(ceil)} | {fmt2(ratio(ours, ceil))} | {target} |")
    table = "\n".join(lines)
    print("\n" + table + "\n")
    print(f"e2e answers still pending after the wait: {res['e2e_late']} of {res['e2e_requests']}; "
          f"books differences: {res['books_differences']}; run took {res['elapsed_s']} s; "
          f"load average before/after: {res['load_average']}")
    print(f"e2e CPU per purchase at {RATE:g}/s (ms): web {res['e2e_cpu_ms_per_purchase_web']}, worker "
          f"{res['e2e_cpu_ms_per_purchase_worker']}, PostgreSQL {res['e2e_cpu_ms_per_purchase_postgres']}, total "
          f"{res['e2e_cpu_ms_per_purchase_total']}")
    print(f"intake_rps_no_streams: {res['intake_rps_no_streams']} before, {res['intake_rps_no_streams_after']} "
          f"after; {WITH_STREAMS}: {res[WITH_STREAMS]}; "
          f"drop: {res['intake_drop_with_streams_pct']} % (goal < 10 %)")
    print(f"streams open {res['streams_open']} of {res['streams_requested']} (failed: {res['streams_failed'] or 0}), "
          f"open at the end {res['streams_still_open']}, reconnects {res['stream_reconnects']}, lost "
          f"{res['streams_lost']}; stream worker timeouts {res['stream_worker_timeouts']}; held by the stream "
          f"process during the intake {res['stream_server_connections']}; CPU during the measurement: stream "
          f"process {res['stream_cpu_s']} s, stream clients {res['stream_clients_cpu_s']} s")
    print(f"admin stream: {res['stream_events_received']} of {res['stream_events_expected']} events "
          f"({res['stream_purchases_accepted']} purchases accepted), missing {res['stream_events_missing']}; "
          f"commit -> stream p50/p99/max during the intake {res['stream_delivery_p50_ms']}/"
          f"{res['stream_delivery_p99_ms']}/{res['stream_delivery_max_ms']} ms ({res['stream_delivery_events']} "
          f"purchase events), at {RATE:g}/s {res['stream_delivery_at_rate_p50_ms']}/"
          f"{res['stream_delivery_at_rate_p99_ms']}/{res['stream_delivery_at_rate_max_ms']} ms "
          f"({res['stream_delivery_at_rate_events']})")
    for key, note in res["notes"].items():
        if note:
            print(f"{key}: {note}")
    with open(os.path.join(ROOT, "bench", "last.json"), "w") as f:
        json.dump({**res, "table": table}, f, indent=2)


def fmt2(v):
    return "n/a" if v is None else f"{v:.2f}"


def fmt(v):
    return "n/a" if v is None else (f"{v:,.1f}" if isinstance(v, float) else f"{v:,}")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "sql-client":
        sql_client(float(sys.argv[2]), int(sys.argv[3]))
    else:
        main()
