"""The Lovense Standard API client, server mode (docs/architecture.md, "Lovense"), on one `requests.Session` with timeouts.

`build_command` turns an item's lovense_activation snapshot into the command body (without token and uid);
`LovenseClient.send` posts it and classifies the outcome; `LovenseClient.qr_code` asks for a pairing QR code.

How an activation becomes a command (the Standard API's Function, Pattern, Preset and Stop):
- pattern `steady`: `Function` with actions from device_type and intensity.
- pattern `custom` with `strengths` (0..20 each, one step every `interval_ms`, default 1000): `Pattern` with rule
  "V:1;F:<v|p|vrp>;S:<interval_ms>#" and strength "a;b;c" (the toy loops it for timeSec). `custom` without
  strengths has no shape Lovense could be told about: it runs the item's actions steadily (`Function`).
- pattern `pulse`, `wave`, `fireworks`, `earthquake`: `Preset` with that name (a preset has Lovense's own
  strength curve, so the intensity is not sent).
- device_type `vibrator` -> `Vibrate:N`; `pump` -> `Pump:M`; `all` -> `All:N` (every function the toy has: vibration,
  rotation, thrusting, suction...), where N is the intensity clamped to 0..20 and M = ceil(N * 3 / 20) (0..3: any
  positive intensity moves the pump).
- timeSec = duration_ms rounded up to whole seconds, at least 2 (Lovense takes 0 = forever or more than 1, so a
  shorter item plays 2 s; `played_ms` is that length, the length of the item's slot on the timeline).
- `STOP` (`Function` with action `Stop`) ends whatever the toy plays.

The developer token travels only in the request body; nothing here logs a body, a token or a utoken.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import requests
from urllib3.exceptions import NewConnectionError

from ..lovense import DEVICE_TYPES, PATTERNS

COMMAND_PATH = "/api/lan/v2/command"
QR_PATH = "/api/lan/getQrCode"
MAX_STRENGTH = {"Vibrate": 20, "Pump": 3}
PRESETS = ("pulse", "wave", "fireworks", "earthquake")
MIN_TIME_SEC = 2  # Lovense: timeSec is 0 (run until stopped) or greater than 1
STOP = {"command": "Function", "action": "Stop", "timeSec": 0, "apiVer": 1}
PATTERN_FEATURES = {"vibrator": "v", "pump": "p", "all": "vrp"}
# Reply codes (HTTP 200) that no retry can fix: invalid command, invalid parameter, invalid token,
# no permission, invalid user id. 507 (the model's Lovense app is offline) is worth retrying.
RETRYABLE_CODES = {507}


class InvalidActivation(ValueError):
    pass


def _clamp(value: int, action: str) -> int:
    return max(0, min(MAX_STRENGTH[action], value))


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def time_sec(spec: dict) -> int:
    """Whole seconds the toy plays for a snapshot: duration_ms rounded up, at least MIN_TIME_SEC."""
    duration_ms = spec.get("duration_ms") if isinstance(spec, dict) else None
    if not _is_int(duration_ms) or duration_ms <= 0:
        raise InvalidActivation("duration_ms must be an integer > 0")
    return max(MIN_TIME_SEC, math.ceil(duration_ms / 1000))


def played_ms(spec: dict) -> int:
    """The length of the snapshot's slot on the model's timeline: what the toy is told to play."""
    return time_sec(spec) * 1000


def build_command(spec: dict) -> dict:
    """The command body for a lovense_activation snapshot (token and uid are added by the client)."""
    device, pattern = spec.get("device_type"), spec.get("pattern") or "steady"
    intensity, seconds = spec.get("intensity"), time_sec(spec)
    if device not in DEVICE_TYPES or pattern not in PATTERNS:
        raise InvalidActivation("unknown device_type or pattern")
    if not _is_int(intensity):
        raise InvalidActivation("intensity must be an integer")
    if pattern in PRESETS:
        return {"command": "Preset", "name": pattern, "timeSec": seconds, "apiVer": 1}
    strengths, interval = spec.get("strengths"), spec.get("interval_ms") or 1000
    if pattern == "custom" and strengths:
        if not isinstance(strengths, list) or not all(_is_int(v) for v in strengths) or not _is_int(interval):
            raise InvalidActivation("strengths must be integers")
        return {"command": "Pattern", "rule": f"V:1;F:{PATTERN_FEATURES[device]};S:{max(100, interval)}#",
                "strength": ";".join(str(_clamp(v, "Vibrate")) for v in strengths[:50]), "timeSec": seconds,
                "apiVer": 2}
    strength = _clamp(intensity, "Vibrate")
    pump = _clamp(math.ceil(strength * MAX_STRENGTH["Pump"] / MAX_STRENGTH["Vibrate"]), "Pump")
    actions = {
        "vibrator": [f"Vibrate:{strength}"],
        "pump": [f"Pump:{pump}"],
        "all": [f"All:{strength}"],
    }[device]
    return {"command": "Function", "action": ",".join(actions), "timeSec": seconds, "apiVer": 1}


@dataclass(frozen=True)
class Outcome:
    ok: bool
    # A stable code: connect_timeout, connection_error, read_timeout, connection_lost, http_503, lovense_501, bad_reply.
    error: str | None = None
    retryable: bool = False
    # The request went out and no answer came back (read timeout, connection dropped): the toy may be playing it,
    # so it must not be sent again on its own.
    unknown: bool = False


def _never_connected(exc: requests.ConnectionError) -> bool:
    """True if the connection was never made (refused, unknown host), so the request never left."""
    reason = getattr(exc.args[0], "reason", None) if exc.args else None
    return isinstance(reason, NewConnectionError)


class LovenseError(Exception):
    """A pairing request (QR code) that did not succeed; `code` is an Outcome error code."""

    def __init__(self, code: str):
        super().__init__(code)
        self.code = code


class LovenseClient:
    def __init__(self, settings):
        self.base_url = settings.lovense_api_url
        self.token = settings.lovense_developer_token
        self.timeout = (settings.lovense_connect_timeout, settings.lovense_read_timeout)
        self.session = requests.Session()

    def __repr__(self):  # never show the token
        return f"LovenseClient({self.base_url!r})"

    def _post(self, path: str, body: dict) -> tuple[Outcome, dict | None]:
        try:
            response = self.session.post(self.base_url + path, json={"token": self.token, **body},
                                         timeout=self.timeout)
        except requests.ConnectTimeout:
            return Outcome(False, "connect_timeout", True), None  # no connection: nothing reached Lovense
        except requests.ReadTimeout:
            return Outcome(False, "read_timeout", unknown=True), None
        except requests.ConnectionError as exc:
            if _never_connected(exc):
                return Outcome(False, "connection_error", True), None
            return Outcome(False, "connection_lost", unknown=True), None  # reset or closed after the request went out
        except requests.RequestException:
            return Outcome(False, "request_error", False), None
        if response.status_code >= 500:
            return Outcome(False, f"http_{response.status_code}", True), None
        if response.status_code != 200:
            return Outcome(False, f"http_{response.status_code}", False), None
        try:
            reply = response.json()
        except ValueError:
            return Outcome(False, "bad_reply", False), None
        if not isinstance(reply, dict):
            return Outcome(False, "bad_reply", False), None
        return Outcome(True), reply

    def send(self, uid: str, command: dict) -> Outcome:
        """Post one command to the model's toys; the outcome says whether it worked, if a retry may help, and if it
        is unknown whether the toy got it."""
        outcome, reply = self._post(COMMAND_PATH, {"uid": uid, **command})
        if reply is None:
            return outcome
        code = reply.get("code")
        if code == 200:
            return Outcome(True)
        return Outcome(False, f"lovense_{code}"[:40], code in RETRYABLE_CODES)

    def qr_code(self, uid: str, uname: str, utoken: str) -> dict:
        """Ask Lovense for a pairing QR code: {"qr": image URL, "code": pairing code}."""
        outcome, reply = self._post(QR_PATH, {"uid": uid, "uname": uname, "utoken": utoken, "v": 2})
        if reply is None:
            raise LovenseError(outcome.error)
        data = reply.get("data") if isinstance(reply.get("data"), dict) else {}
        if reply.get("result") is not True or not data.get("qr"):
            raise LovenseError(f"lovense_{reply.get('code')}"[:40])
        return {"qr": data["qr"], "code": data.get("code")}


@lru_cache(maxsize=4)
def client_for(settings) -> LovenseClient:
    """One client (one HTTP connection pool) per settings object and process."""
    return LovenseClient(settings)
