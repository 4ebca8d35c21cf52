"""The settings: one object per process, read from the environment once at the process's entry point and
passed on (the web keeps it on the Flask app, the worker on the Celery app: models/runtime.py).

No configuration at all is the *embedded default*: a SQLite file, an in-process Redis stand-in and Celery
tasks run inline, so the service can be tried without any server. DATABASE_URL / REDIS_URL select the real
deployment, and then secrets must come from the environment.
"""
from __future__ import annotations

import ipaddress
import os
import sys
from dataclasses import dataclass, field, fields
from zoneinfo import ZoneInfo

EMBEDDED_DATABASE_URL = "sqlite:///instance/perfmenu.db"
EMBEDDED_SECRET = "embedded-mode-only-this-is-not-a-secret"
MIN_SECRET_BYTES = 32  # HS256 keys shorter than the hash's 32 bytes are guessable
MAX_SETTLE_LINGER_SECONDS = 2.0
MAX_FEE_BPS = 9999  # the platform's commission stays below 100 %: a sale always pays the model a token


class ConfigError(RuntimeError):
    pass


def or_exit(read, *args):
    """`read(*args)` for a process's start: a bad setting ends the process with one line that names it (exit
    status 2), not a traceback."""
    try:
        return read(*args)
    except ConfigError as exc:
        print(f"perfmenu: configuration error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def settings_or_exit(env=None) -> "Settings":
    """Settings.from_env at a process's entry point (web/wsgi.py, worker/main.py, the CLI, gunicorn's config)."""
    return or_exit(Settings.from_env, env)


def _fee_bps(env) -> int:
    raw = env.get("PLATFORM_FEE_BPS") or "0"
    if not raw.isdigit() or int(raw) > MAX_FEE_BPS:
        raise ConfigError("PLATFORM_FEE_BPS must be a whole number of basis points from 0 to 9999 (100 = 1 %)")
    return int(raw)


def ensure_metrics_dir(path: str | None) -> None:
    """prometheus_client reads PROMETHEUS_MULTIPROC_DIR itself and opens a file there per process as soon as the
    metrics are made (models/infra/metrics.py, at import): the directory is made if missing and must be
    writable."""
    if not path:
        return
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"PROMETHEUS_MULTIPROC_DIR {path!r} cannot be created ({exc.strerror})") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise ConfigError(f"PROMETHEUS_MULTIPROC_DIR {path!r} is not writable")


def _number(env, name, default, cast=int):
    raw = env.get(name)
    if raw in (None, ""):
        return default
    try:
        return cast(raw)
    except ValueError as exc:
        raise ConfigError(f"{name} must be a {cast.__name__}") from exc


def _positive(env, name, default):
    value = _number(env, name, default)
    if value <= 0:
        raise ConfigError(f"{name} must be a positive integer")
    return value


def _rate(env, name, default):
    raw = (env.get(name) or default).strip()
    from limits import parse_many  # Flask-Limiter's notation

    try:
        parse_many(raw)
    except ValueError as exc:
        raise ConfigError(f"{name} must look like '10 per minute' (several separated by ';')") from exc
    return raw


def _strong(secret: str, name: str) -> None:
    if len(secret.encode()) < MIN_SECRET_BYTES or secret == EMBEDDED_SECRET:
        raise ConfigError(f"{name} must be at least {MIN_SECRET_BYTES} bytes and not the embedded mode's "
                          "(e.g. python3 -c 'import secrets; print(secrets.token_urlsafe(48))')")


def _bool(env, name, default):
    raw = env.get(name)
    if raw in (None, ""):
        return default
    return raw.strip().lower() in ("1", "true", "yes", "on")


def _events(env, d) -> dict:
    """Events out: the relay's safety net, webhooks, the live streams (docs/architecture.md, "Events out")."""
    networks = tuple(n.strip() for n in (env.get("WEBHOOK_ALLOWED_NETWORKS") or "").split(",") if n.strip())
    try:
        for network in networks:
            ipaddress.ip_network(network, strict=False)
    except ValueError:
        raise ConfigError("WEBHOOK_ALLOWED_NETWORKS is a comma-separated list of addresses or networks "
                          "(127.0.0.1, 10.0.0.0/8)") from None
    return {
        "outbox_relay_interval_seconds": _positive(env, "OUTBOX_RELAY_INTERVAL_SECONDS",
                                                   d["outbox_relay_interval_seconds"]),
        "webhook_allowed_networks": networks,
        "webhook_retry_hours": _positive_float(env, "WEBHOOK_RETRY_HOURS", d["webhook_retry_hours"]),
        "webhook_timeout_seconds": _positive_float(env, "WEBHOOK_TIMEOUT_SECONDS", d["webhook_timeout_seconds"]),
        "webhook_backoff_seconds": _positive_float(env, "WEBHOOK_BACKOFF_SECONDS", d["webhook_backoff_seconds"]),
        "stream_port": _positive(env, "STREAM_PORT", d["stream_port"]),
        "stream_url": env.get("STREAM_URL") or "",
        "stream_heartbeat_seconds": _positive_float(env, "STREAM_HEARTBEAT_SECONDS", d["stream_heartbeat_seconds"]),
        "streams_per_user": _positive(env, "STREAMS_PER_USER", d["streams_per_user"]),
        "stream_session_check_seconds": _positive_float(env, "STREAM_SESSION_CHECK_SECONDS",
                                                        d["stream_session_check_seconds"]),
    }


def _positive_float(env, name, default):
    value = _number(env, name, default, float)
    if value <= 0:
        raise ConfigError(f"{name} must be a positive number")
    return value


def _platform(env, d) -> dict:
    """PLATFORM_JWT_*: the host platform's tokens. A key source needs an issuer and an audience to check."""
    out = {
        "platform_jwt_jwks_url": env.get("PLATFORM_JWT_JWKS_URL") or "",
        "platform_jwt_public_key": (env.get("PLATFORM_JWT_PUBLIC_KEY") or "").replace("\\n", "\n"),
        "platform_jwt_issuer": env.get("PLATFORM_JWT_ISSUER") or "",
        "platform_jwt_audience": env.get("PLATFORM_JWT_AUDIENCE") or "",
        "platform_user_id_claim": env.get("PLATFORM_JWT_USER_ID_CLAIM") or d["platform_user_id_claim"],
        "platform_role_claim": env.get("PLATFORM_JWT_ROLE_CLAIM") or d["platform_role_claim"],
        "platform_name_claim": env.get("PLATFORM_JWT_NAME_CLAIM") or d["platform_name_claim"],
        "platform_jwks_cache_seconds": _positive(env, "PLATFORM_JWKS_CACHE_SECONDS", d["platform_jwks_cache_seconds"]),
    }
    algorithms = tuple(a.strip() for a in (env.get("PLATFORM_JWT_ALGORITHMS") or "").split(",") if a.strip())
    if algorithms and not set(algorithms) <= set(d["platform_jwt_algorithms"]):
        raise ConfigError("PLATFORM_JWT_ALGORITHMS may name RS256 and ES256 only")
    out["platform_jwt_algorithms"] = algorithms or d["platform_jwt_algorithms"]
    roles = env.get("PLATFORM_JWT_ROLES")  # "platform_role:our_role,..."
    if roles:
        pairs = tuple(tuple(p.strip() for p in pair.split(":", 1)) for pair in roles.split(",") if pair.strip())
        if any(len(pair) != 2 or pair[1] not in ("fan", "model", "admin") for pair in pairs):
            raise ConfigError("PLATFORM_JWT_ROLES looks like 'user:fan,performer:model,staff:admin'")
        out["platform_roles"] = pairs
    if (out["platform_jwt_jwks_url"] or out["platform_jwt_public_key"]) and not (
            out["platform_jwt_issuer"] and out["platform_jwt_audience"]):
        raise ConfigError("PLATFORM_JWT_ISSUER and PLATFORM_JWT_AUDIENCE are required with a platform key source")
    return out


@dataclass(frozen=True)
class Settings:
    database_url: str
    redis_url: str | None  # None: embedded mode, an in-process Redis stand-in
    broker_url: str | None
    jwt_secret_key: str = field(repr=False)
    access_token_minutes: int = 15
    refresh_token_days: int = 30
    day_time_zone: str = "UTC"
    purchase_wait_seconds: float = 1.5  # how long POST /menu/purchase waits for the worker's verdict
    settle_batch_size: int = 100
    settle_linger_seconds: float = 0.5  # how long an idle settle task waits for the next purchase
    queue_capacity: int = 50
    # Queue OFF items (for the live stream) are sold only while the model has a live show (models/shows.py).
    queue_off_needs_show: bool = True
    # The platform's commission in basis points (100 = 1 %) on every sale of a model with no rate of its own.
    platform_fee_bps: int = 0
    history_max_limit: int = 100
    broker_visibility_timeout: int = 300
    pending_sweep_after_seconds: int = 30
    lovense_api_url: str = "https://api.lovense-api.com"
    lovense_developer_token: str = field(default="", repr=False)
    lovense_enabled: bool = True
    lovense_callback_secret: str = field(default="", repr=False)
    lovense_connect_timeout: float = 3.05  # seconds to connect to the Lovense API
    lovense_read_timeout: float = 10.0  # seconds to wait for its reply
    lovense_max_attempts: int = 5  # sends of one activation before it is recorded as failed
    lovense_backoff_seconds: float = 1.0  # first retry delay; doubles each attempt, with jitter
    lovense_backoff_max_seconds: float = 60.0
    lovense_rate_limit: int = 20  # commands per model per window
    lovense_rate_window_seconds: int = 60
    lovense_freshness_seconds: float = 60.0  # a Queue OFF buzz this late for its slot expires instead of playing
    # Flask-Limiter rate limits ("N per second|minute|hour|day", several separated by ";").
    login_rate_limit: str = "10 per minute"
    purchase_rate_limit: str = "30 per minute"
    # Celery beat intervals, in seconds.
    pending_sweep_interval_seconds: int = 15
    escrow_sweep_interval_seconds: int = 60
    queue_reconcile_interval_seconds: int = 300
    activation_sweep_interval_seconds: int = 60
    timeline_sweep_interval_seconds: int = 5  # a toy timeline whose next task was lost waits at most about this
    # A worker whose queues hold messages while it has taken none for this long exits (worker/liveness.py); 0: off.
    worker_stall_seconds: int = 120
    # If set, GET /metrics requires `Authorization: Bearer <METRICS_TOKEN>`.
    metrics_token: str = field(default="", repr=False)
    log_level: str = "INFO"
    trusted_proxies: int = 0  # reverse proxies in front of gunicorn whose X-Forwarded-For is trusted
    web_bind: str = "127.0.0.1"  # where gunicorn listens (web/gunicorn_conf.py)
    web_port: int = 8000
    flower_port: int = 5555
    # The host platform's identity (web/platform_auth.py): its access tokens are trusted when a JWKS URL or a
    # public key is set.
    platform_jwt_jwks_url: str = ""
    platform_jwt_public_key: str = field(default="", repr=False)
    platform_jwt_issuer: str = ""
    platform_jwt_audience: str = ""
    platform_jwt_algorithms: tuple = ("RS256", "ES256")
    platform_user_id_claim: str = "sub"
    platform_role_claim: str = "role"
    platform_name_claim: str = "name"
    # The platform's role names -> ours (fan, model, admin).
    platform_roles: tuple = (("fan", "fan"), ("user", "fan"), ("model", "model"), ("performer", "model"),
                             ("admin", "admin"))
    platform_jwks_cache_seconds: int = 300
    # Events out (models/outbox.py, models/webhooks.py, web/events.py).
    outbox_relay_interval_seconds: int = 5  # beat's relay run: the safety net behind the wake after each commit
    # Webhook URLs may point at these addresses or networks although they are private or loopback.
    webhook_allowed_networks: tuple = ()
    webhook_retry_hours: float = 24.0  # a delivery still failing this long after its event is dead-lettered
    webhook_timeout_seconds: float = 5.0  # one attempt in all: connect, send, answer
    webhook_backoff_seconds: float = 5.0  # first retry delay; doubles each attempt (capped at an hour), jittered
    stream_port: int = 8001  # the stream process's port (Procfile `stream`)
    stream_url: str = ""  # where clients open the stream; default: http://<web_bind>:<stream_port>/events/stream
    stream_heartbeat_seconds: float = 15.0
    streams_per_user: int = 10  # open event streams of one user (an overlay counts as its model's) per stream process
    stream_session_check_seconds: float = 60.0  # an open stream checks its viewer's session (or account) this often

    @property
    def platform_identity(self) -> bool:
        return bool(self.platform_jwt_jwks_url or self.platform_jwt_public_key)

    @property
    def embedded(self) -> bool:
        return self.redis_url is None

    @property
    def base_url(self) -> str:
        """Where the API answers on this machine (what `make demo` and the `urls` command print)."""
        host = "127.0.0.1" if self.web_bind in ("0.0.0.0", "") else self.web_bind
        return f"http://{host}:{self.web_port}"

    @property
    def stream_base_url(self) -> str:
        """Where clients open the event stream: the stream process, or in embedded mode the web itself."""
        if self.stream_url:
            return self.stream_url
        if self.embedded:
            return f"{self.base_url}/events/stream"
        host = "127.0.0.1" if self.web_bind in ("0.0.0.0", "") else self.web_bind
        return f"http://{host}:{self.stream_port}/events/stream"

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.day_time_zone)

    @classmethod
    def from_env(cls, env=None) -> "Settings":
        """The settings of a process, read once at its entry point (web/wsgi.py, the CLI, worker/main.py)."""
        env = os.environ if env is None else env
        d = {f.name: f.default for f in fields(cls)}  # the defaults, written once above
        database_url = env.get("DATABASE_URL") or EMBEDDED_DATABASE_URL
        # Accept the common postgres:// spelling and pick the psycopg 3 driver.
        for prefix in ("postgres://", "postgresql://"):
            if database_url.startswith(prefix):
                database_url = "postgresql+psycopg://" + database_url[len(prefix):]
        redis_url = env.get("REDIS_URL") or None
        embedded = redis_url is None and database_url == EMBEDDED_DATABASE_URL
        secret = env.get("JWT_SECRET_KEY") or ""
        if not secret:
            if not embedded:
                raise ConfigError("JWT_SECRET_KEY is required when DATABASE_URL or REDIS_URL is set")
            secret = EMBEDDED_SECRET
        if redis_url is None and not embedded:
            raise ConfigError("REDIS_URL is required with DATABASE_URL (the worker needs a broker)")
        if not embedded:
            _strong(secret, "JWT_SECRET_KEY")
            if env.get("LOVENSE_DEVELOPER_TOKEN") and _bool(env, "LOVENSE_ENABLED", True):
                # Its own secret: a pairing utoken must not be something the JWT key also signs.
                _strong(env.get("LOVENSE_CALLBACK_SECRET") or "", "LOVENSE_CALLBACK_SECRET")
                if env["LOVENSE_CALLBACK_SECRET"] == secret:
                    raise ConfigError("LOVENSE_CALLBACK_SECRET must differ from JWT_SECRET_KEY")
        ensure_metrics_dir(env.get("PROMETHEUS_MULTIPROC_DIR"))
        tz = env.get("PERFMENU_TIME_ZONE") or d["day_time_zone"]
        try:
            ZoneInfo(tz)
        except Exception as exc:
            raise ConfigError(f"PERFMENU_TIME_ZONE {tz!r} is not a known time zone") from exc
        return cls(
            database_url=database_url,
            redis_url=redis_url,
            broker_url=env.get("CELERY_BROKER_URL") or redis_url,
            jwt_secret_key=secret,
            access_token_minutes=_number(env, "JWT_ACCESS_MINUTES", d["access_token_minutes"]),
            refresh_token_days=_number(env, "JWT_REFRESH_DAYS", d["refresh_token_days"]),
            day_time_zone=tz,
            purchase_wait_seconds=_number(env, "PURCHASE_WAIT_SECONDS", d["purchase_wait_seconds"], float),
            settle_batch_size=_number(env, "SETTLE_BATCH_SIZE", d["settle_batch_size"]),
            settle_linger_seconds=min(MAX_SETTLE_LINGER_SECONDS,
                                      _number(env, "SETTLE_LINGER_SECONDS", d["settle_linger_seconds"], float)),
            queue_capacity=_number(env, "QUEUE_CAPACITY", d["queue_capacity"]),
            queue_off_needs_show=_bool(env, "QUEUE_OFF_NEEDS_SHOW", d["queue_off_needs_show"]),
            platform_fee_bps=_fee_bps(env),
            history_max_limit=_number(env, "HISTORY_MAX_LIMIT", d["history_max_limit"]),
            broker_visibility_timeout=_number(env, "BROKER_VISIBILITY_TIMEOUT", d["broker_visibility_timeout"]),
            pending_sweep_after_seconds=_number(env, "PENDING_SWEEP_AFTER_SECONDS", d["pending_sweep_after_seconds"]),
            lovense_api_url=(env.get("LOVENSE_API_URL") or d["lovense_api_url"]).rstrip("/"),
            lovense_developer_token=env.get("LOVENSE_DEVELOPER_TOKEN") or "",
            lovense_enabled=_bool(env, "LOVENSE_ENABLED", d["lovense_enabled"]),
            lovense_callback_secret=env.get("LOVENSE_CALLBACK_SECRET") or secret,
            lovense_connect_timeout=_number(env, "LOVENSE_CONNECT_TIMEOUT", d["lovense_connect_timeout"], float),
            lovense_read_timeout=_number(env, "LOVENSE_READ_TIMEOUT", d["lovense_read_timeout"], float),
            lovense_max_attempts=max(1, _number(env, "LOVENSE_MAX_ATTEMPTS", d["lovense_max_attempts"])),
            lovense_backoff_seconds=_number(env, "LOVENSE_BACKOFF_SECONDS", d["lovense_backoff_seconds"], float),
            lovense_backoff_max_seconds=_number(env, "LOVENSE_BACKOFF_MAX_SECONDS", d["lovense_backoff_max_seconds"],
                                                float),
            lovense_rate_limit=max(1, _number(env, "LOVENSE_RATE_LIMIT", d["lovense_rate_limit"])),
            lovense_rate_window_seconds=max(1, _number(env, "LOVENSE_RATE_WINDOW_SECONDS",
                                                       d["lovense_rate_window_seconds"])),
            lovense_freshness_seconds=max(0.1, _number(env, "LOVENSE_FRESHNESS_SECONDS",
                                                       d["lovense_freshness_seconds"], float)),
            login_rate_limit=_rate(env, "RATE_LIMIT_LOGIN", d["login_rate_limit"]),
            purchase_rate_limit=_rate(env, "RATE_LIMIT_PURCHASE", d["purchase_rate_limit"]),
            pending_sweep_interval_seconds=_positive(env, "PENDING_SWEEP_INTERVAL_SECONDS",
                                                     d["pending_sweep_interval_seconds"]),
            escrow_sweep_interval_seconds=_positive(env, "ESCROW_SWEEP_INTERVAL_SECONDS",
                                                    d["escrow_sweep_interval_seconds"]),
            queue_reconcile_interval_seconds=_positive(env, "QUEUE_RECONCILE_INTERVAL_SECONDS",
                                                       d["queue_reconcile_interval_seconds"]),
            activation_sweep_interval_seconds=_positive(env, "ACTIVATION_SWEEP_INTERVAL_SECONDS",
                                                        d["activation_sweep_interval_seconds"]),
            timeline_sweep_interval_seconds=_positive(env, "TIMELINE_SWEEP_INTERVAL_SECONDS",
                                                      d["timeline_sweep_interval_seconds"]),
            worker_stall_seconds=_number(env, "WORKER_STALL_SECONDS", d["worker_stall_seconds"]),
            metrics_token=env.get("METRICS_TOKEN") or "",
            log_level=(env.get("LOG_LEVEL") or d["log_level"]).upper(),
            trusted_proxies=_number(env, "TRUSTED_PROXIES", d["trusted_proxies"]),
            web_bind=env.get("WEB_BIND") or d["web_bind"],
            web_port=_positive(env, "WEB_PORT", d["web_port"]),
            flower_port=_positive(env, "FLOWER_PORT", d["flower_port"]),
            **_platform(env, d),
            **_events(env, d),
        )
