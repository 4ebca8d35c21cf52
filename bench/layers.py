"""`python -m bench.layers [N]`: where the CPU of one purchase goes, per layer, measured in-process.

No gunicorn, no client, no worker: the app built by `web.create_app(settings)` is called as a WSGI callable
from one thread, with a prebuilt gunicorn-like environ per request (POST /menu/purchase on a Queue OFF item, a
fresh Idempotency-Key each, 200 fans in turn), on its own PostgreSQL database (perfmenu_layers, dropped and
created here) and Redis databases 9 (app) and 10 (broker), flushed here. Settings as the bench's intake
phase: PURCHASE_WAIT_SECONDS=0, the limiter consulted but never refusing, Lovense off; purchases stay pending.

After a warm-up (200 requests), N requests: time.thread_time() over them / N is the CPU of one purchase (the
total), and a sampling profiler (Sampler: SIGPROF on this process's CPU time) files each sample under a layer
with RULES (below). A layer's µs = its share of the samples x the total.

    python -m bench.layers [N] [--detail] [--out FILE]     # table, and bench/layers.json (or FILE)
    python -m bench.layers --compare before.json after.json
    python -m bench.layers --check                         # the sampler against a loop of known CPU

Settings: LAYERS_DATABASE_URL, LAYERS_REDIS_URL, LAYERS_BROKER_URL.
"""
from __future__ import annotations

import ast
import collections
import functools
import gc
import io
import json
import linecache
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import sysconfig
import threading
import time
import uuid

# ---------------------------------------------------------------- the rules (data: extend them here)

# Each rule: (layer, frame pattern, ...). A frame pattern is (file regex, function regex or None[, line regex]);
# files are named relative to the project, to site-packages or to the standard library ("web/purchases.py",
# "sqlalchemy/pool/base.py", "logging/__init__.py"); the line is the source of the statement the frame is at
# (for an outer frame: the one making the call). A rule with several patterns matches when they appear in that
# order, outermost first (not necessarily adjacent), in the sample's stack. The FIRST rule that matches wins,
# so the order matters: logging and metrics called from anywhere (a request hook, the limiter) are logging and
# metrics; the pool is the pool whoever checks out; Redis is the limiter's or the hand-off's by who calls it. A
# sample no rule matches is "framework" (Flask, werkzeug, flask-smorest plumbing, and the view's own lines).
#
# A None function matches every function of the file except decorator wrappers (WRAPPERS): flask-limiter's,
# webargs' and our role_required's wrappers enclose the whole view, so a module-wide rule must not see them.
WRAPPERS = {"wrapper", "decorator", "decorated", "__inner", "inner", "wrapped", "view_function"}
PROJECT = r"^(web|models|worker)/"
INTAKE = r"(^|/)[^/]*intake[^/]*\.py$"  # web/intake.py, models/intake.py, ... (the coming refactor)


def words(*names):
    """A function name made of underscore-separated words, one of which is in `names` (read_context, but not
    thread_main; limit_and_hand_off, but not handle_purchase)."""
    return r"(^|_)(" + "|".join(names) + r")(_|$)"


RULES = [
    ("verdict wait", (r"^models/services/verdicts\.py$", None)),
    ("logging", (r"^logging/", None)),
    ("logging", (r"^models/infra/logs\.py$", None)),
    ("metrics", (r"^prometheus_client/", None)),
    ("metrics", (r"^models/infra/metrics\.py$", None)),
    # The pool (checkout with its pre-ping, check-in with its reset), the request's session or connection
    # opened and closed: `session.connection(...)`, and `with engine.connect() as conn:` (that line is both ends).
    ("pool checkout", (r"^sqlalchemy/pool/", None)),
    ("pool checkout", (r"^web/deps\.py$", r"^(db|close_db)$")),
    ("pool checkout", (PROJECT, None, r"\.connect(ion)?\(")),
    # Before the hand-off: one Lua call that limits and hands off (limit_and_hand_off) is the limiter's.
    ("limiter", (r"^flask_limiter/", None)),
    ("limiter", (r"^limits/", None)),
    ("limiter", (r"^web/limits\.py$", None)),
    ("limiter", (INTAKE, words("limit", "limits", "limiter"))),
    ("hand-off", (r"^worker/handoff\.py$", None)),
    ("hand-off", (r"^models/services/settle_signal\.py$", None)),
    ("hand-off", (INTAKE, words("hand", "handoff", "settlement"))),
    ("hand-off", (r"^(celery|kombu)/", None)),
    ("JWT", (r"^flask_jwt_extended/", None)),
    ("JWT", (r"^jwt/", None)),
    ("JWT", (r"^web/auth\.py$", None)),
    # Reads by name before the insert: a read's autoflush must not count as the insert.
    ("SQL: read", (r"^web/purchases\.py$", r"^load_for_intake$")),
    ("SQL: read", (PROJECT, r"^(load|read|fetch)_|^daily_count$")),
    ("SQL: read", (INTAKE, words("read", "load", "fetch", "context"))),
    # The purchase's row: built, added and committed by the view (or an insert_purchase of the refactor, or an
    # inline `conn.execute(_INSERT, ...)`).
    ("SQL: insert", (PROJECT, r"^create_purchase$"),
     (r"^sqlalchemy/orm/(session|state)\.py$", r"^(add|commit|flush|_initialize_instance)$")),
    ("SQL: insert", (PROJECT, words("insert"))),
    ("SQL: insert", (INTAKE, words("insert", "commit"))),
    ("SQL: insert", (PROJECT, None, r"(?i)insert|\.commit\(")),
    # Reads by line: an inline `conn.execute(...)` / `session.get(...)` of the view (after the insert's line),
    # in SQLAlchemy or psycopg (not a Redis pipeline's execute()).
    ("SQL: read", (PROJECT, None, r"\.(execute|scalars?|get)\("), (r"^(sqlalchemy|psycopg)/", None)),
    # The request body: webargs (and the marshmallow load it runs), our JSON guard, the ids' parsing.
    ("parsing and validation", (r"^webargs/", None)),
    ("parsing and validation", (r"^web/json_body\.py$", None)),
    ("parsing and validation", (r"^flask_smorest/arguments\.py$", None)),
    ("parsing and validation", (r"^models/users\.py$", r"^parse_uuid$")),
    ("parsing and validation", (INTAKE, words("parse", "validate", "body"))),
    # The answer: the view's dict, flask-smorest's dump and jsonify (marshmallow not under webargs is a dump).
    ("serialization", (r"^web/purchases\.py$", r"^(purchase_view|_settled_response|hidden_buyer)$")),
    ("serialization", (PROJECT, words("answer", "serialize", "view", "dump"))),
    ("serialization", (r"^flask_smorest/(response|utils)\.py$", None)),
    ("serialization", (r"^marshmallow/", None)),
    ("serialization", (r"^flask/json/", None)),
    ("serialization", (r"^json/", None)),
    ("request hooks", (r"^web/(ops|security)\.py$", None)),
    ("request hooks", (r"^web/request_body\.py$", r"^(_drain|_content_length|start|_close_connection)$")),
    # Any other query of the request is a read.
    ("SQL: read", (r"^sqlalchemy/orm/session\.py$", r"^(execute|scalar|scalars|get)$")),
]
LAYERS = ["verdict wait", "limiter", "hand-off", "logging", "metrics", "JWT", "SQL: read", "SQL: insert",
          "parsing and validation", "serialization", "request hooks", "pool checkout", "framework",
          "driver"]  # driver: this file's loop (start_response, reading the answer): not the app, shown apart

# ---------------------------------------------------------------- settings

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATABASE_URL = os.environ.get("LAYERS_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/perfmenu_layers")
REDIS_URL = os.environ.get("LAYERS_REDIS_URL", "redis://127.0.0.1:6379/9")
BROKER_URL = os.environ.get("LAYERS_BROKER_URL", "redis://127.0.0.1:6379/10")
FANS = 200
WARMUP = 200
INTERVAL = 0.0005  # CPU seconds between samples asked for (the kernel's tick caps it: 4 ms here)
ENV = dict(
    os.environ,
    DATABASE_URL=DATABASE_URL,
    REDIS_URL=REDIS_URL,
    CELERY_BROKER_URL=BROKER_URL,
    JWT_SECRET_KEY="layers-only-secret-" + "x" * 32,
    JWT_ACCESS_MINUTES="30",
    PURCHASE_WAIT_SECONDS="0",  # intake alone: no verdict wait (no worker runs)
    RATE_LIMIT_PURCHASE="1000000 per minute",  # consulted, never refusing
    LOVENSE_ENABLED="false",
)
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

# ---------------------------------------------------------------- classification

_STDLIB = sysconfig.get_paths()["stdlib"] + os.sep
_names: dict[str, str] = {}


def short_name(filename: str) -> str:
    """A frame's file relative to the project, site-packages or the standard library (cached)."""
    name = _names.get(filename)
    if name is None:
        path = os.path.normpath(filename)  # alembic's env.py imports web as migrations/../web
        if "site-packages/" in path:  # first: the venv may live inside the project
            name = path.rsplit("site-packages/", 1)[1]
        elif path.startswith(ROOT + os.sep):
            name = path[len(ROOT) + 1:]
        elif path.startswith(_STDLIB):
            name = path[len(_STDLIB):]
        else:
            name = path
        _names[filename] = name
    return name


# (file, function, line) regexes per pattern; None: any (a None function: any but WRAPPERS)
_COMPILED = [(layer, [tuple(re.compile(p) if p else None for p in (*pattern, None)[:3]) for pattern in patterns])
             for layer, *patterns in RULES]


@functools.lru_cache(maxsize=None)
def _statements(filename: str) -> dict[int, str]:
    """Line number -> source of the statement on that line (of a compound statement, its header only): a call
    spread over lines (`conn.execute(...)` then `.one()` below) reports the line of its last part."""
    lines = linecache.getlines(filename)
    try:
        tree = ast.parse("".join(lines))
    except (SyntaxError, ValueError):
        return {}
    spans = {}
    for node in ast.walk(tree):  # outer statements first: an inner one takes its lines over
        if isinstance(node, ast.stmt):
            body = getattr(node, "body", None)
            end = body[0].lineno - 1 if isinstance(body, list) and body else node.end_lineno
            for line in range(node.lineno, max(end, node.lineno) + 1):
                spans[line] = (node.lineno, max(end, node.lineno))
    return {line: "".join(lines[start - 1:end]) for line, (start, end) in spans.items()}


class Frame(tuple):
    """(file, function, code, line number); the statement's source is read only when a rule asks for it."""

    @property
    def line(self) -> str:
        filename, number = self[2].co_filename, self[3]
        return _statements(filename).get(number) or linecache.getline(filename, number)


def _frame_matches(pattern, frame) -> bool:
    file_re, func_re, line_re = pattern
    if not file_re.search(frame[0]):
        return False
    if not (func_re.search(frame[1]) if func_re else frame[1] not in WRAPPERS):
        return False
    return line_re is None or line_re.search(frame.line) is not None


def classify(frames) -> str:
    """The layer of one sample; `frames`: Frame, outermost first."""
    if frames and frames[-1][0] == "bench/layers.py":
        return "driver"
    for layer, patterns in _COMPILED:
        i = 0
        for frame in frames:
            if _frame_matches(patterns[i], frame):
                i += 1
                if i == len(patterns):
                    return layer
    return "framework"


# ---------------------------------------------------------------- the sampler

class Sampler:
    """While active: on SIGPROF, the stack where the main thread was interrupted ((code, line) pairs,
    innermost first). ITIMER_PROF counts this process's CPU time, so the samples fall on the CPU the thread
    spends, not on its waits for PostgreSQL or Redis; the kernel sends at most one per scheduler tick (~250 a
    CPU second here).

    Not a thread reading sys._current_frames(): such a thread sees the main thread's stack only when it gets
    the GIL, and on this machine it got it mostly where the main thread let go of it for a socket call: in the
    loop of --check, such a thread put 33-40 % of the samples on Redis calls that took 17 % of the CPU, where
    SIGPROF's samples are within noise of the truth. Python runs the handler in the main thread between
    bytecodes, or after the C call it was in; the socket and psycopg calls retry after it (PEP 475)."""

    def __init__(self):
        self.samples: list[tuple] = []

    def _take(self, _signum, frame):
        stack = []
        while frame is not None:
            stack.append((frame.f_code, frame.f_lineno))
            frame = frame.f_back
        self.samples.append(tuple(stack))

    def __enter__(self):
        self.previous = signal.signal(signal.SIGPROF, self._take)
        signal.setitimer(signal.ITIMER_PROF, INTERVAL, INTERVAL)
        return self

    def __exit__(self, *exc):
        signal.setitimer(signal.ITIMER_PROF, 0, 0)
        signal.signal(signal.SIGPROF, self.previous)


def layer_counts(samples, detail=None) -> collections.Counter:
    """Samples per layer; with `detail` (a dict), each layer's innermost frames too."""
    cache: dict[tuple, str] = {}
    counts = collections.Counter()
    for stack in samples:
        layer = cache.get(stack)
        if layer is None:
            layer = cache[stack] = classify([Frame((short_name(c.co_filename), c.co_name, c, line))
                                             for c, line in reversed(stack)])
        counts[layer] += 1
        if detail is not None and stack:
            # the innermost frame, and the innermost of the project's (what the app was doing there)
            code, line = next(((c, n) for c, n in stack if re.search(PROJECT, short_name(c.co_filename))),
                              (None, 0))
            where = f"{short_name(stack[0][0].co_filename)}:{stack[0][0].co_name}"
            if code is not None:
                where += f" < {short_name(code.co_filename)}:{code.co_name}:{line}"
            detail.setdefault(layer, collections.Counter())[where] += 1
    return counts


# ---------------------------------------------------------------- database, seed, app

def recreate_database():
    from tests.processes import recreate_database as recreate

    recreate(DATABASE_URL, (REDIS_URL, BROKER_URL))


def seed(runtime, app) -> dict:
    """bench/run.py's shop, the Queue OFF half: one live model with a Queue OFF menu and item, FANS fans."""
    from bench.seed import seed as bench_seed

    data = bench_seed(runtime, app, ("OFF",), FANS, prefix="layers")
    return {**data["menus"]["OFF"], "tokens": data["tokens"]}


def build_app():
    """The app as web/wsgi.py builds it for gunicorn: the same settings object, the same JSON log lines (to
    /dev/null here: formatting them is the cost, not the terminal)."""
    from models.infra.logs import configure_logging
    from models.settings import Settings
    from web import create_app

    settings = Settings.from_env(ENV)
    configure_logging(settings.log_level)
    logging.getLogger().handlers[0].setStream(open(os.devnull, "w"))
    return create_app(settings)


# ---------------------------------------------------------------- requests

_SOCKET = socket.socket()  # gunicorn.socket: web/request_body.py sets its timeout to drain the body


def environ_for(body: bytes, token: str) -> dict:
    """What gunicorn's gthread worker passes for this request (gunicorn/http/wsgi.py: create)."""
    return {
        "REQUEST_METHOD": "POST", "SCRIPT_NAME": "", "PATH_INFO": "/menu/purchase", "QUERY_STRING": "",
        "RAW_URI": "/menu/purchase", "SERVER_PROTOCOL": "HTTP/1.1", "SERVER_NAME": "127.0.0.1",
        "SERVER_PORT": "18089", "SERVER_SOFTWARE": "gunicorn", "REMOTE_ADDR": "127.0.0.1", "REMOTE_PORT": "50000",
        "CONTENT_TYPE": "application/json", "CONTENT_LENGTH": str(len(body)),
        "HTTP_HOST": "127.0.0.1:18089", "HTTP_ACCEPT": "*/*", "HTTP_ACCEPT_ENCODING": "gzip, deflate",
        "HTTP_USER_AGENT": "Python/3.11 aiohttp/3", "HTTP_AUTHORIZATION": f"Bearer {token}",
        "HTTP_IDEMPOTENCY_KEY": uuid.uuid4().hex,
        "wsgi.input": io.BytesIO(body), "wsgi.errors": sys.stderr, "wsgi.version": (1, 0),
        "wsgi.url_scheme": "http", "wsgi.multithread": True, "wsgi.multiprocess": True, "wsgi.run_once": False,
        "wsgi.input_terminated": True, "gunicorn.socket": _SOCKET,
    }


def environs(data, n: int, start: int) -> list[dict]:
    """Built before a pass, so building them is not in its CPU."""
    body = json.dumps({"menu_id": data["menu_id"], "item_id": data["item_id"]}).encode()
    tokens = data["tokens"]
    return [environ_for(body, tokens[(start + i) % len(tokens)]) for i in range(n)]


def drive(app, envs, parts: int = 10) -> list[float]:
    """Call the app once per environ, as gunicorn does; the thread's CPU seconds for each tenth of them (how
    steady the machine was shows in how much they differ)."""
    statuses = []

    def start_response(status, headers, exc_info=None):
        statuses.append(status)

    cpu = []
    for part in range(parts):
        t0 = time.thread_time()
        for environ in envs[part * len(envs) // parts:(part + 1) * len(envs) // parts]:
            answer = app(environ, start_response)
            body = b"".join(answer)
            if hasattr(answer, "close"):
                answer.close()
            if not statuses[-1].startswith(("200", "202")):
                raise SystemExit(f"POST /menu/purchase answered {statuses[-1]}: {body[:500]!r}")
        cpu.append(time.thread_time() - t0)
    return cpu


# ---------------------------------------------------------------- main

def measure(n: int, detail: bool = False) -> dict:
    recreate_database()
    app = build_app()
    import web

    if not os.path.normpath(web.__file__).startswith(ROOT + os.sep):  # the editable install must not win
        raise SystemExit(f"web imported from {web.__file__}, not {ROOT}: run with PYTHONPATH={ROOT}")
    data = seed(app.extensions["perfmenu"], app)
    drive(app, environs(data, WARMUP, 0))  # connections, caches, every fan's token verified once
    if threading.active_count() > 1:  # ITIMER_PROF counts every thread's CPU: the samples would not be ours
        print(f"warning: {threading.active_count()} threads", file=sys.stderr)

    envs = environs(data, n, WARMUP)
    # The startup heap and the prebuilt environs set aside: a full collection over them, due whenever enough
    # objects have piled up, costs ~140 ms here and fell in some runs and not others (±5 % on the total).
    # A steady gunicorn worker seldom runs one; the collections of what the requests allocate still count.
    gc.collect()
    gc.freeze()
    collections_before = [g["collections"] for g in gc.get_stats()]
    with Sampler() as sampler:
        cpu = drive(app, envs)
    gc_runs = [g["collections"] - b for g, b in zip(gc.get_stats(), collections_before)]
    gc.unfreeze()
    total_us = sum(cpu) / n * 1e6
    tenths_us = sorted(round(c / (n / len(cpu)) * 1e6, 1) for c in cpu)
    per_layer = {} if detail else None
    counts = layer_counts(sampler.samples, per_layer)
    samples = len(sampler.samples)
    layers = {name: {"us": round(total_us * counts[name] / samples, 1), "share": round(counts[name] / samples, 4),
                     "samples": counts[name]} for name in LAYERS}
    result = {
        "n": n, "total_us": round(total_us, 1), "layers": layers, "samples": samples,
        "total_us_by_tenth": {"min": tenths_us[0], "median": tenths_us[len(tenths_us) // 2], "max": tenths_us[-1]},
        "gc_collections_by_generation": gc_runs,
        # one standard error of a layer holding 10 % of the samples, in µs per purchase
        "error_us_at_10pct": round(total_us * (0.1 * 0.9 / samples) ** 0.5, 1),
        "commit": git_commit(), "load_average": [round(x, 1) for x in os.getloadavg()],
        "when": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    if detail:
        result["detail"] = {layer: per_layer[layer].most_common(12) for layer in LAYERS if layer in per_layer}
    return result


def postgres_cpu_seconds() -> float:
    """CPU of every PostgreSQL server process of this machine so far (user + system)."""
    ticks = 0
    for pid in os.listdir("/proc"):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if not f.read().startswith(b"postgres"):
                    continue
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            ticks += int(fields[11]) + int(fields[12])
        except (OSError, IndexError, ValueError):
            pass
    return ticks / os.sysconf("SC_CLK_TCK")


def settlement_costs(n: int) -> dict:
    """`--settlement`: per purchase, intake's PostgreSQL CPU and WAL, then settlement's worker CPU (this thread),
    PostgreSQL CPU and WAL in batches of SETTLE_BATCH_SIZE (n pending purchases, one settle() and relay()), and the
    worker CPU of settling one purchase at a time (docs/capacity.md)."""
    from sqlalchemy import text

    from worker import tasks
    from worker.celery_app import bind_runtime

    recreate_database()
    app = build_app()
    runtime = app.extensions["perfmenu"]
    bind_runtime(runtime)
    data = seed(runtime, app)
    drive(app, environs(data, WARMUP, 0))
    tasks.settle()
    tasks.relay(runtime)

    def wal() -> int:
        with runtime.engine.connect() as conn:
            return int(conn.execute(text("SELECT pg_current_wal_lsn() - '0/0'::pg_lsn")).scalar())

    def step(run) -> tuple[float, float, int]:
        w, p, t = wal(), postgres_cpu_seconds(), time.thread_time()
        run()
        return time.thread_time() - t, postgres_cpu_seconds() - p, wal() - w

    def settle_all():
        tasks.settle()
        tasks.relay(runtime)

    intake = step(lambda: drive(app, environs(data, n, WARMUP)))
    batches = step(settle_all)
    singles = 300
    envs = environs(data, singles, WARMUP + n)

    def one_at_a_time():
        for env in envs:
            drive(app, [env])
            settle_all()

    alone = step(one_at_a_time)
    ms = lambda seconds, count: round(1000 * seconds / count, 2)  # noqa: E731
    return {"n": n, "intake_pg_cpu_ms": ms(intake[1], n), "intake_wal_bytes": intake[2] // n,
            "batch_worker_cpu_ms": ms(batches[0], n), "batch_pg_cpu_ms": ms(batches[1], n),
            "batch_wal_bytes": batches[2] // n, "batch_size": runtime.settings.settle_batch_size,
            "one_at_a_time_worker_and_intake_cpu_ms": ms(alone[0], singles),
            "one_at_a_time_pg_cpu_ms": ms(alone[1], singles), "commit": git_commit()}


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "web", "models", "worker"], cwd=ROOT,
                               capture_output=True, text=True).stdout.strip()
        return out.stdout.strip() + ("+uncommitted" if dirty else "") if out.returncode == 0 else None
    except OSError:
        return None


def table(result: dict) -> str:
    lines = ["| layer | µs / purchase | share |", "|---|---:|---:|"]
    for name in LAYERS:
        row = result["layers"].get(name, {"us": 0.0, "share": 0.0})
        lines.append(f"| {name} | {row['us']:,.1f} | {100 * row['share']:.1f} % |")
    lines.append(f"| **total** (thread CPU / purchase) | **{result['total_us']:,.1f}** | 100 % |")
    return "\n".join(lines)


def compare(before: dict, after: dict) -> str:
    lines = ["| layer | before µs | after µs |", "|---|---:|---:|"]
    names = LAYERS + [n for n in {**before["layers"], **after["layers"]} if n not in LAYERS]
    for name in names:
        b, a = (r["layers"].get(name, {}).get("us", 0.0) for r in (before, after))
        lines.append(f"| {name} | {b:,.1f} | {a:,.1f} |")
    lines.append(f"| **total** | **{before['total_us']:,.1f}** | **{after['total_us']:,.1f}** |")
    return "\n".join(lines)


def check(rounds: int = 15000) -> None:
    """The sampler on a loop whose CPU per step is known (thread_time around each): Python work and Redis
    round trips, as a purchase has. The sampled shares should be the true ones, within a point or two."""
    import redis

    client = redis.Redis.from_url(REDIS_URL)

    def burn(us):
        end = time.thread_time() + us / 1e6
        while time.thread_time() < end:
            pass

    def python_150us():
        burn(150)

    def redis_ping():
        client.ping()

    def python_50us():
        burn(50)

    def redis_set():
        client.set("perfmenu:layers:check", "1")

    steps = (python_150us, redis_ping, python_50us, redis_set)
    cpu = collections.Counter()
    with Sampler() as sampler:
        for _ in range(rounds):
            for step in steps:
                t0 = time.thread_time()
                step()
                cpu[step.__name__] += time.thread_time() - t0
    names = {step.__code__: step.__name__ for step in steps}
    sampled = collections.Counter(next((names[c] for c, _ in stack if c in names), "loop")
                                  for stack in sampler.samples)
    print("| step | CPU share (thread_time) | sampled share |\n|---|---:|---:|")
    for step in steps:
        name = step.__name__
        print(f"| {name} | {100 * cpu[name] / sum(cpu.values()):.1f} % | "
              f"{100 * sampled[name] / len(sampler.samples):.1f} % |")
    print(f"{len(sampler.samples)} samples ({sampled['loop']} in the loop itself)")


def main(argv):
    if argv[:1] == ["--check"]:
        check()
        return
    if argv[:1] == ["--compare"]:
        if len(argv) != 3:
            raise SystemExit("usage: python -m bench.layers --compare before.json after.json")
        with open(argv[1]) as f, open(argv[2]) as g:
            print(compare(json.load(f), json.load(g)))
        return
    if argv[:1] == ["--settlement"]:
        print(json.dumps(settlement_costs(int(argv[1]) if len(argv) > 1 else 3000), indent=2))
        return
    detail = "--detail" in argv
    out = os.path.join(ROOT, "bench", "layers.json")
    if "--out" in argv:
        out = argv[argv.index("--out") + 1]
        del argv[argv.index("--out"):argv.index("--out") + 2]
    args = [a for a in argv if not a.startswith("--")]
    n = int(args[0]) if args else 3000
    result = measure(n, detail)
    print(table(result))
    print(f"\n{n} purchases after {WARMUP} of warm-up, one thread, commit {result['commit']}; "
          f"{result['samples']} samples (a layer near 10 % is ± {result['error_us_at_10pct']} µs); "
          f"CPU / purchase by tenth of the run {result['total_us_by_tenth']}; "
          f"load average {result['load_average']}")
    if detail:
        for layer, frames in result["detail"].items():
            print(f"\n{layer}: " + ", ".join(f"{where} {count}" for where, count in frames))
    with open(out, "w") as f:
        json.dump(result, f, indent=2)
        f.write("\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main(sys.argv[1:])
