"""Child processes for the tests and the benchmark (bench/run.py imports this too): a process in its own
process group, started, killed and stopped as a whole (gunicorn and its workers, Celery and its pool), free
ports, waiting for a port to listen or a URL to answer, and private servers (redis-server, a PostgreSQL
cluster made with initdb) that a test may restart or stop without touching the shared ones."""
from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def recreate_database(url: str, redis_urls=()) -> None:
    """Drop and create the PostgreSQL database of `url` (ending its connections), migrate it to head, and flush
    `redis_urls`: the benchmark's own databases (bench/run.py, bench/layers.py)."""
    import redis
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    from models.schema import upgrade_head

    target = make_url(url)
    admin = create_engine(target.set(database="postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{target.database}" WITH (FORCE)'))
        conn.execute(text(f'CREATE DATABASE "{target.database}"'))
    admin.dispose()
    upgrade_head(url)
    for redis_url in redis_urls:
        redis.Redis.from_url(redis_url).flushdb()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 30, process: "ProcessGroup | None" = None) -> None:
    """Wait until something listens on 127.0.0.1:`port`; fail at once if `process` exits meanwhile."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            if process is not None and not process.alive():
                raise RuntimeError(f"{process.name} exited before listening on {port}") from None
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


def wait_http(url: str, timeout: float = 60, process: "ProcessGroup | None" = None) -> None:
    """Wait until `url` answers 200; fail at once if `process` exits meanwhile."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        if process is not None and not process.alive():
            raise RuntimeError(f"{process.name} exited before {url} answered")
        time.sleep(0.2)
    raise RuntimeError(f"{url} did not answer within {timeout} s")


def children_of(pid: int) -> list[int]:
    """Every descendant of `pid` (gunicorn workers, a Celery pool), from /proc."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            if ppid == pid:
                found += [int(entry)] + children_of(int(entry))
    return found


class ProcessGroup:
    """A child process in its own process group, its output in `log_path` (or discarded)."""

    def __init__(self, name: str, argv: list[str], env: dict | None = None, log_path: str | None = None):
        self.name, self.argv, self.env, self.log_path = name, argv, env, log_path
        self.proc = None
        self.starts = 0

    def start(self) -> "ProcessGroup":
        self.starts += 1
        out = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL
        try:
            self.proc = subprocess.Popen(self.argv, cwd=ROOT, env=self.env, stdout=out, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        finally:
            if self.log_path:
                out.close()
        return self

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self, sig=signal.SIGKILL, timeout: float = 20) -> None:
        """Send `sig` to the whole group and wait for the process; SIGKILL if it outlives `timeout`."""
        if not self.alive():
            return
        try:
            os.killpg(self.proc.pid, sig)
        except ProcessLookupError:
            pass
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        self.kill(signal.SIGTERM)

    def rss_mb(self) -> float:
        """Resident memory of the process and its descendants."""
        total = 0
        for pid in [self.proc.pid] + children_of(self.proc.pid):
            try:
                with open(f"/proc/{pid}/status") as f:
                    total += sum(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
            except FileNotFoundError:
                pass
        return round(total / 1024, 1)


def start_redis_server(port: int, log_path: str | None = None) -> ProcessGroup:
    """A private redis-server on `port` that keeps nothing on disk."""
    server = ProcessGroup("redis", ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                    "--appendonly", "no"], dict(os.environ), log_path).start()
    wait_port(port, 10, server)
    return server


POSTGRES_BIN = "/usr/lib/postgresql/15/bin"
# A throwaway cluster: durability buys nothing here, and the machine is small.
POSTGRES_SETTINGS = {
    "listen_addresses": "'127.0.0.1'",
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "max_connections": "200",  # gunicorn's and each Celery process's pools, the driver, beat's runs
}


class PostgresCluster:
    """A private PostgreSQL cluster: initdb in a temp dir, trust auth, on 127.0.0.1:`port`, its sockets in
    that dir. initdb and postgres refuse to run as root, so as root every command runs as the `postgres` OS
    user (runuser), and the dir belongs to that user. `destroy` stops it and removes the dir, after copying
    the server's log to `log_path` if given."""

    def __init__(self, port: int | None = None, log_path: str | None = None):
        self.port = port or free_port()
        self.log_path = log_path
        self.dir = tempfile.mkdtemp(prefix="perfmenu-pg-")
        self.data = os.path.join(self.dir, "data")
        self.server_log = os.path.join(self.dir, "postgres.log")
        self.as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        if self.as_postgres:
            user = pwd.getpwnam("postgres")
            os.chown(self.dir, user.pw_uid, user.pw_gid)
        try:
            self._run("initdb", "-D", self.data, "-U", "postgres", "-A", "trust", "-E", "UTF8", "--locale=C",
                      "--no-sync")
        except BaseException:
            shutil.rmtree(self.dir, ignore_errors=True)
            raise
        settings = {**POSTGRES_SETTINGS, "port": str(self.port), "unix_socket_directories": f"'{self.dir}'"}
        with open(os.path.join(self.data, "postgresql.conf"), "a") as conf:
            conf.writelines(f"{name} = {value}\n" for name, value in settings.items())

    def _run(self, program: str, *args: str) -> None:
        # cwd: the postgres user may not enter the caller's directory.
        out = subprocess.run(self.as_postgres + [os.path.join(POSTGRES_BIN, program), *args], cwd=self.dir,
                             capture_output=True, text=True, timeout=120)
        if out.returncode:
            raise RuntimeError(f"{program} {args[0] if args else ''} failed: {(out.stdout + out.stderr)[-2000:]}")

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def start(self) -> "PostgresCluster":
        """Start and wait until it accepts connections (pg_ctl -w)."""
        self._run("pg_ctl", "start", "-D", self.data, "-l", self.server_log, "-w", "-t", "60")
        return self

    def stop(self, mode: str = "fast") -> None:
        """Stop: `fast` ends every session (open transactions roll back), `immediate` is a crash."""
        self._run("pg_ctl", "stop", "-D", self.data, "-m", mode, "-w", "-t", "60")

    def restart(self) -> None:
        """A fast restart, as an operator or a package upgrade does it."""
        self._run("pg_ctl", "restart", "-D", self.data, "-m", "fast", "-l", self.server_log, "-w", "-t",
                  "60")

    def running(self) -> bool:
        status = [os.path.join(POSTGRES_BIN, "pg_ctl"), "status", "-D", self.data]
        return subprocess.run(self.as_postgres + status, cwd=self.dir, capture_output=True).returncode == 0

    def create_database(self, name: str) -> str:
        """Create `name` and return its URL."""
        self._run("createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", name)
        return self.url(name)

    def destroy(self) -> None:
        try:
            if self.running():
                self.stop("immediate")
        finally:
            if self.log_path and os.path.exists(self.server_log):
                shutil.copyfile(self.server_log, self.log_path)
            shutil.rmtree(self.dir, ignore_errors=True)
