"""Reading the settings from an environment mapping (models/settings.py `Settings.from_env`); never os.environ."""
import pytest

from models.settings import (
    EMBEDDED_DATABASE_URL,
    EMBEDDED_SECRET,
    MAX_SETTLE_LINGER_SECONDS,
    ConfigError,
    Settings,
)

STRONG = "s3cret-" + "x" * 32
DEPLOYED = {"DATABASE_URL": "postgresql://u:p@db/perfmenu", "REDIS_URL": "redis://cache:6379/0",
            "JWT_SECRET_KEY": STRONG}


def settings(**env):
    return Settings.from_env({**DEPLOYED, **env})


def test_empty_environment_is_the_embedded_default():
    """No configuration: SQLite file, no Redis (the in-process stand-in), the built-in secret, the defaults."""
    s = Settings.from_env({})
    assert s.embedded
    assert s.database_url == EMBEDDED_DATABASE_URL
    assert s.redis_url is None and s.broker_url is None
    assert s.jwt_secret_key == EMBEDDED_SECRET
    assert s.lovense_callback_secret == EMBEDDED_SECRET
    assert s.queue_capacity == 50 and s.day_time_zone == "UTC" and s.settle_linger_seconds == 0.5


def test_deployed_settings():
    """DATABASE_URL and REDIS_URL select the real deployment; the broker defaults to REDIS_URL."""
    s = settings()
    assert not s.embedded
    assert s.redis_url == s.broker_url == "redis://cache:6379/0"
    assert s.jwt_secret_key == STRONG
    assert settings(CELERY_BROKER_URL="redis://broker/1").broker_url == "redis://broker/1"


@pytest.mark.parametrize("url,expected", [
    ("postgres://u@h:5432/db", "postgresql+psycopg://u@h:5432/db"),
    ("postgresql://u@h/db", "postgresql+psycopg://u@h/db"),
    ("postgresql+psycopg://u@h/db", "postgresql+psycopg://u@h/db"),
])
def test_postgres_urls_use_psycopg3(url, expected):
    """The common postgres:// spellings are rewritten to the psycopg 3 driver."""
    assert settings(DATABASE_URL=url).database_url == expected


def test_secret_is_required_outside_embedded_mode():
    """With DATABASE_URL (or REDIS_URL) set, a missing JWT secret is a ConfigError, not the built-in one."""
    with pytest.raises(ConfigError, match="JWT_SECRET_KEY"):
        settings(JWT_SECRET_KEY="")
    with pytest.raises(ConfigError, match="JWT_SECRET_KEY"):
        Settings.from_env({"REDIS_URL": "redis://cache/0"})


def test_redis_is_required_with_a_database():
    """A real database without REDIS_URL is refused: the worker needs a broker."""
    with pytest.raises(ConfigError, match="REDIS_URL"):
        Settings.from_env({"DATABASE_URL": "postgres://u@h/db", "JWT_SECRET_KEY": STRONG})


def test_time_zone():
    """A known zone is kept; an unknown one is a ConfigError."""
    assert settings(PERFMENU_TIME_ZONE="Europe/Paris").tz.key == "Europe/Paris"
    with pytest.raises(ConfigError, match="PERFMENU_TIME_ZONE"):
        settings(PERFMENU_TIME_ZONE="Mars/Olympus_Mons")


@pytest.mark.parametrize("name,value", [("QUEUE_CAPACITY", "many"), ("JWT_ACCESS_MINUTES", "1.5"),
                                        ("PURCHASE_WAIT_SECONDS", "soon"), ("ESCROW_SWEEP_INTERVAL_SECONDS", "0"),
                                        ("PENDING_SWEEP_INTERVAL_SECONDS", "-5")])
def test_bad_numbers(name, value):
    """A value that is not a number of the right kind (or not positive where required) is a ConfigError."""
    with pytest.raises(ConfigError, match=name):
        settings(**{name: value})


def test_numbers_are_parsed():
    """Numbers from the environment are converted; an empty value keeps the default."""
    s = settings(QUEUE_CAPACITY="7", PURCHASE_WAIT_SECONDS="2.5", HISTORY_MAX_LIMIT="")
    assert (s.queue_capacity, s.purchase_wait_seconds, s.history_max_limit) == (7, 2.5, 100)


@pytest.mark.parametrize("name", ["RATE_LIMIT_LOGIN", "RATE_LIMIT_PURCHASE"])
def test_bad_rate_string(name):
    """A rate limit not in Flask-Limiter's notation is a ConfigError."""
    with pytest.raises(ConfigError, match=name):
        settings(**{name: "lots per fortnight"})


def test_good_rate_strings_are_kept():
    """Several limits separated by ';' are accepted as written."""
    assert settings(RATE_LIMIT_LOGIN="5 per minute; 100 per day").login_rate_limit == "5 per minute; 100 per day"


@pytest.mark.parametrize("raw,expected", [("0.2", 0.2), ("2", 2.0), ("30", MAX_SETTLE_LINGER_SECONDS)])
def test_settle_linger_is_capped(raw, expected):
    """SETTLE_LINGER_SECONDS is taken as given up to MAX_SETTLE_LINGER_SECONDS (2 s), and capped above."""
    assert MAX_SETTLE_LINGER_SECONDS == 2.0
    assert settings(SETTLE_LINGER_SECONDS=raw).settle_linger_seconds == expected


def test_secrets_stay_out_of_repr():
    """The JWT secret, developer token and metrics token never appear in the settings' repr."""
    text = repr(settings(LOVENSE_DEVELOPER_TOKEN="dev-tok", LOVENSE_CALLBACK_SECRET="cb-" + "y" * 32,
                         METRICS_TOKEN="met-tok"))
    assert "s3cret" not in text and "dev-tok" not in text and "met-tok" not in text and "cb-y" not in text


def test_secrets_outside_embedded_mode_are_strong_and_separate():
    """Issue 20: a 1-character or the embedded mode's JWT key is refused with PostgreSQL; a Lovense callback
    secret of its own is required once Lovense is configured."""
    for weak in ("x", "y" * 31, EMBEDDED_SECRET):
        with pytest.raises(ConfigError, match="JWT_SECRET_KEY must be at least 32 bytes"):
            settings(JWT_SECRET_KEY=weak)
    assert Settings.from_env({"JWT_SECRET_KEY": "x"}).embedded  # the embedded mode takes any key
    lovense = {"LOVENSE_DEVELOPER_TOKEN": "dev-token"}
    with pytest.raises(ConfigError, match="LOVENSE_CALLBACK_SECRET"):
        settings(**lovense)
    with pytest.raises(ConfigError, match="differ"):
        settings(**lovense, LOVENSE_CALLBACK_SECRET=STRONG)
    assert settings(**lovense, LOVENSE_CALLBACK_SECRET="c" * 40).lovense_callback_secret == "c" * 40
    assert settings(**lovense, LOVENSE_ENABLED="false").lovense_enabled is False  # switched off: not needed
