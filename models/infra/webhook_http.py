"""The webhook sender's HTTP (models/webhooks.py decides what to send and when).

A URL is parsed once, by urllib3's parser (the library that connects), its host resolved once and every address
checked (`resolve`); the POST then goes to the address that was checked (`post`), with the URL's host in the Host
header and, for https, in SNI and the certificate check. So a URL that two parsers read differently, or a name
whose next answer is private (DNS rebinding), cannot reach an address the check refused. No proxy, no redirect,
one connection per attempt, and a total deadline per attempt that a receiver dripping bytes cannot stretch."""
from __future__ import annotations

import ipaddress
import socket
import threading
import time
from dataclasses import dataclass

import certifi
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.exceptions import ConnectTimeoutError, LocationParseError
from urllib3.util import parse_url

REFUSED_ADDRESS = "refused_address"
INVALID_URL = "invalid_url"
# IPv6 prefixes that carry an IPv4 address a gateway may connect to (NAT64, well-known and local-use).
NAT64 = (ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("64:ff9b:1::/48"))


class UrlRefused(ValueError):
    """A webhook URL we will not call; `code` is what a delivery attempt records."""

    def __init__(self, message: str, code: str = REFUSED_ADDRESS):
        super().__init__(message)
        self.code = code


class AttemptTimedOut(Exception):
    """The attempt's total deadline passed."""


@dataclass(frozen=True)
class Target:
    """Where one attempt connects: the checked `address`, and the URL's own host for Host, SNI and TLS."""

    scheme: str
    host: str  # as in the URL, without IPv6 brackets
    port: int
    address: str
    request_uri: str
    host_header: str


def _embedded_ipv4(ip) -> list:
    """The IPv4 addresses an IPv6 address carries (mapped, 6to4, Teredo, NAT64): each is checked too."""
    if ip.version != 6:
        return []
    found = [ip.ipv4_mapped, ip.sixtofour, *(ip.teredo or ())]
    if any(ip in net for net in NAT64):
        found.append(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
    return [v4 for v4 in found if v4 is not None]


def _not_public(ip) -> bool:
    return (ip.is_private or ip.is_loopback or ip.is_link_local or ip.is_multicast or ip.is_reserved
            or ip.is_unspecified or not ip.is_global)


def refused(ip, allowed) -> bool:
    """Whether `ip` (or an IPv4 address inside it) is not public and outside every allowed network."""
    for candidate in [ip, *_embedded_ipv4(ip)]:
        if _not_public(candidate) and not any(candidate in network for network in allowed):
            return True
    return False


def resolve(url: str, allowed_networks=()) -> Target:
    """The Target of `url`, or UrlRefused: not http(s) with a host, user info or a backslash in it (forms that
    parsers disagree on), a host that does not resolve, or any address of it that is private, loopback,
    link-local, multicast, reserved or unspecified outside `allowed_networks` (every address counts: a name
    with one public and one private address is refused)."""
    if any(c.isspace() or not c.isprintable() for c in url) or "\\" in url:
        raise UrlRefused("The URL must not hold spaces, backslashes or control characters", INVALID_URL)
    try:
        parts = parse_url(url)
    except (LocationParseError, ValueError):
        raise UrlRefused("The URL cannot be parsed", INVALID_URL) from None
    if parts.scheme not in ("http", "https") or not parts.host:
        raise UrlRefused("The URL must be http:// or https:// with a host", INVALID_URL)
    if parts.auth is not None or "@" in (parts.netloc or ""):
        raise UrlRefused("The URL must not carry a user name or password", INVALID_URL)
    host = parts.host.strip("[]")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError, ValueError):
        raise UrlRefused(f"The host {host} does not resolve", "connection_error") from None
    allowed = [ipaddress.ip_network(n, strict=False) for n in allowed_networks]
    addresses = [info[4][0] for info in infos]
    for address in addresses:
        ip = ipaddress.ip_address(address.split("%")[0])  # an IPv6 link-local address carries a scope
        if refused(ip, allowed):
            raise UrlRefused(f"The host {host} resolves to {ip}, which is not a public address")
    return Target(parts.scheme, host, port, addresses[0], parts.request_uri, parts.netloc)


_idle: dict[Target, HTTPConnection] = {}  # one kept-alive connection per target (its checked address in the key)
_idle_lock = threading.Lock()


def post(target: Target, headers: dict, body: bytes, seconds: float, max_answer_bytes: int) -> int:
    """POST `body` to `target` within `seconds` in all (connect, send, answer); returns the HTTP status after
    reading at most `max_answer_bytes` of the answer. A kept-alive connection is reused; if it turns out closed
    before any answer, the request goes once more on a new one. Raises AttemptTimedOut, or OSError/urllib3
    errors."""
    deadline = time.monotonic() + seconds
    with _idle_lock:
        conn = _idle.pop(target, None)
    if conn is not None:
        try:
            return _exchange(conn, target, headers, body, deadline, max_answer_bytes)
        except AttemptTimedOut:
            raise
        except Exception:  # noqa: BLE001 - the server closed the idle connection: a new one is made below
            pass
    seconds_left = max(0.001, deadline - time.monotonic())
    return _exchange(_connect(target, seconds_left), target, headers, body, deadline, max_answer_bytes)


def _connect(target: Target, seconds: float) -> HTTPConnection:
    if target.scheme == "https":
        conn = HTTPSConnection(target.address, target.port, timeout=seconds, server_hostname=target.host,
                               assert_hostname=target.host, cert_reqs="CERT_REQUIRED", ca_certs=certifi.where())
    else:
        conn = HTTPConnection(target.address, target.port, timeout=seconds)
    try:
        conn.connect()
    except (ConnectTimeoutError, TimeoutError):
        conn.close()
        raise AttemptTimedOut() from None
    except BaseException:
        conn.close()
        raise
    return conn


def _exchange(conn, target: Target, headers: dict, body: bytes, deadline: float, max_answer_bytes: int) -> int:
    """One request and its answer on `conn`; the connection is kept for the next attempt if it can be."""
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        conn.close()
        raise AttemptTimedOut()
    # A socket timeout bounds each read, not the attempt: at the deadline the socket is shut down, which ends
    # whatever read is waiting.
    expired = threading.Event()
    timer = threading.Timer(remaining, _shut, (conn, expired))
    timer.daemon = True
    timer.start()
    keep = False
    try:
        try:
            conn.request("POST", target.request_uri, body=body, headers={**headers, "host": target.host_header})
            response = conn.getresponse()
        except Exception as exc:
            if expired.is_set() or isinstance(exc, TimeoutError):
                raise AttemptTimedOut() from None
            raise
        whole = _read_a_little(response, max_answer_bytes)
        keep = (whole and not expired.is_set() and response.version >= 11
                and response.headers.get("connection", "").lower() != "close")
        return response.status
    finally:
        timer.cancel()
        if keep:
            with _idle_lock:
                old = _idle.pop(target, None)
                _idle[target] = conn
            if old is not None:
                old.close()
        else:
            conn.close()


def _read_a_little(response, max_answer_bytes: int) -> bool:
    """Read a short answer to its end (so its connection can be reused); stop at `max_answer_bytes` or when the
    deadline shuts the socket. The status is known by now: what the body does changes nothing. True if the
    whole answer was read."""
    read = 0
    try:
        for chunk in response.stream(8192, decode_content=False):
            read += len(chunk)
            if read > max_answer_bytes:
                return False
    except Exception:  # noqa: BLE001 - a broken or cut answer after its status is still that status
        return False
    return True


def _shut(conn, expired: threading.Event) -> None:
    expired.set()
    try:
        if conn.sock is not None:
            conn.sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
