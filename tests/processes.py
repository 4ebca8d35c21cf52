"""Child processes for the tests and the benchmark (bench/run.py imports this too): a process in its own
process group, started, killed and stopped as a whole (gunicorn and its workers, Celery and its pool), free
ports, and waiting for a port to listen or a URL to answer."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


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
