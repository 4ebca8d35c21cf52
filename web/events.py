"""Live event streams (Server-Sent Events; docs/architecture.md, "Events out").

`GET /events/stream` sends each event the viewer may see, in `seq` order, as `id: <seq>`, `event: <type>`,
`data: <json>`: a fan their own purchases, toy buzzes and, whenever it moves, their place in a model's queue
(`queue.position`); a model everything about their own queue, sales, toy and menus; an admin everything, or one
model's (`?model_id=`). A reconnect with `Last-Event-ID` gets what it missed from the outbox, then the live events.

Browsers' EventSource cannot send an Authorization header, so a signed-in client first asks `POST /events/ticket`
for a ticket (single use, 60 s) and opens the stream with `?ticket=`; a client that can send headers may use its
bearer token instead. Our access log has the route, never the query string.

Each process holds one Redis subscription (`Broadcaster`) and hands every event to its open streams. It numbers
nothing: a gap in `seq` (a publish lost to a crash or a Redis restart) is read from the outbox, and so is
anything committed while it was idle for CATCH_UP_SECONDS, so no stream misses an event. Streams are long: in
the full process set they are served by their own gevent process (Procfile `stream`), never by the API's threads;
in embedded mode by the web process itself.
"""
from __future__ import annotations

import json
import logging
import queue
import secrets
import threading
import time
import uuid
from dataclasses import dataclass

from flask import Response, g, request
from sqlalchemy import select

from models import outbox
from models.auth_sessions import refusal_of, token_refusal
from models.purchases import OPEN_QUEUE_STATUSES, Purchase
from models.shows import model_for_overlay_key
from models.users import User
from models.services import performance_queue

from .auth import authenticate, current_role, current_user_id, role_required
from .deps import redis, runtime, settings
from .docs import error
from .errors import ApiError
from .json_body import Blueprint

log = logging.getLogger(__name__)
blp = Blueprint("events", __name__, url_prefix="/events", description="Live event streams (Server-Sent Events)")

TICKET_SECONDS = 60
_TICKET_KEY = "perfmenu:stream-ticket:"
CATCH_UP_SECONDS = 2.0
STREAM_BUFFER = 1000  # events waiting for one slow client; more, and its stream ends (it resumes from the outbox)
REPLAY_BATCH = 500
WRITE_BATCH = 100  # events written to one stream in one send when they arrive together
# Events only models and admins see: a fan gets their own place in a queue (queue.position) instead.
NOT_FOR_FANS = {outbox.QUEUE_CHANGED, outbox.MENU_CHANGED}
# A fan's own events after which their queue places are looked up again.
FAN_QUEUE_EVENTS = {"purchase.queued", "queue.entry.started", "queue.entry.completed", "queue.entry.rejected",
                    "queue.entry.cancelled", "queue.entry.refunded"}


@dataclass
class Viewer:
    """Who reads a stream, and what they may see (the one rule: `sees`). Ids are kept as the strings the
    messages carry: this runs for every event and every stream it is routed to."""

    user_id: str
    role: str
    session_id: uuid.UUID | None = None
    model_filter: str | None = None
    queue_models: frozenset = frozenset()  # a fan's models with an open entry of theirs
    overlay_key: str | None = None  # role "overlay": the model's overlay key (web/pages.py), checked like a session
    expires: float | None = None  # a platform token's expiry (epoch seconds): its stream ends then

    def sees(self, message: dict) -> bool:
        if self.role == "admin":
            return self.model_filter is None or message["model_id"] == self.model_filter
        if self.role in ("model", "overlay"):  # an overlay's user_id is its model's
            return message["model_id"] == self.user_id
        return message["fan_id"] == self.user_id and message["type"] not in NOT_FOR_FANS

    def moves_queue_place(self, message: dict) -> bool:
        """A fan's place in a queue may have moved."""
        if self.role != "fan":
            return False
        if message["type"] == outbox.QUEUE_CHANGED:
            return message["model_id"] in self.queue_models
        return message["type"] in FAN_QUEUE_EVENTS and message["fan_id"] == self.user_id

    def routes(self) -> set[str]:
        """The Broadcaster's keys this stream is filed under (`Broadcaster.routes_of` names a message's)."""
        if self.role == "admin":
            return {"all"} if self.model_filter is None else {f"model:{self.model_filter}"}
        if self.role in ("model", "overlay"):
            return {f"model:{self.user_id}"}
        return {f"fan:{self.user_id}"} | {f"queue:{m}" for m in self.queue_models}

    def replay_filter(self):
        """A coarse SQL filter for the replay; `sees` decides."""
        if self.role == "admin":
            return outbox.OutboxEvent.model_id == uuid.UUID(self.model_filter) if self.model_filter else None
        if self.role in ("model", "overlay"):
            return outbox.OutboxEvent.model_id == uuid.UUID(self.user_id)
        return outbox.OutboxEvent.fan_id == uuid.UUID(self.user_id)

    def text_of(self, message: dict, text: str) -> str:
        """What this viewer is sent of a message it sees: an overlay (public, on stream) only learns that something
        of its type happened, never who bought what; it reads what it shows from GET /overlay/state. A model is
        not told who bought anonymously (the fan, admins and webhooks are)."""
        if self.role == "overlay":
            return _sse({"id": message["id"], "type": message["type"]})
        if self.role == "model" and message["data"].get("anonymous"):
            return _sse({**message, "fan_id": None})
        return text


class Stream:
    """One open stream's inbox (filled by the Broadcaster's thread)."""

    def __init__(self, viewer: Viewer):
        self.viewer = viewer
        self.inbox: queue.Queue = queue.Queue(maxsize=STREAM_BUFFER)
        self.overflowed = False

    def offer(self, message: dict, text: str) -> None:
        if self.overflowed:
            return
        try:
            self.inbox.put_nowait((message, text))
        except queue.Full:
            self.overflowed = True


class Broadcaster:
    """The process's one Redis subscription: numbered events, in order and without gaps, to the open streams
    they concern (streams are filed by the keys of `Viewer.routes`, so an event costs a few lookups, not one
    check per open stream)."""

    def __init__(self, rt):
        self.runtime = rt
        self.routes: dict[str, set[Stream]] = {}
        self.open_per_user: dict[str, int] = {}  # streams open per user, capped (STREAMS_PER_USER)
        self.lock = threading.Lock()
        self.last: int | None = None  # the last seq handed out
        self.ready = threading.Event()

    def start(self) -> None:
        threading.Thread(target=self._run, name="event-broadcaster", daemon=True).start()

    def admit(self, user_id: str, cap: int) -> bool:
        """Count one more open stream of the user, unless they have `cap` open already."""
        with self.lock:
            if self.open_per_user.get(user_id, 0) >= cap:
                return False
            self.open_per_user[user_id] = self.open_per_user.get(user_id, 0) + 1
            return True

    def release(self, user_id: str) -> None:
        with self.lock:
            left = self.open_per_user.pop(user_id, 1) - 1
            if left:
                self.open_per_user[user_id] = left

    def file(self, stream: Stream, old: set | frozenset = frozenset()) -> None:
        """File the stream under its viewer's routes (again, after they changed from `old`)."""
        new = stream.viewer.routes()
        with self.lock:
            for key in set(old) - new:
                self.routes.get(key, set()).discard(stream)
            for key in new:
                self.routes.setdefault(key, set()).add(stream)

    def remove(self, stream: Stream) -> None:
        with self.lock:
            for key in stream.viewer.routes():
                streams = self.routes.get(key)
                if streams is not None:
                    streams.discard(stream)
                    if not streams:
                        del self.routes[key]

    @staticmethod
    def routes_of(message: dict) -> list[str]:
        keys = ["all", f"model:{message['model_id']}", f"fan:{message['fan_id']}"]
        if message["type"] == outbox.QUEUE_CHANGED:
            keys.append(f"queue:{message['model_id']}")
        return keys

    def _run(self) -> None:
        while True:
            try:
                pubsub = self.runtime.redis.pubsub(ignore_subscribe_messages=True)
                pubsub.subscribe(self.runtime.events_channel)
                self._catch_up()  # what was relayed while (re)subscribing
                self.ready.set()
                while True:
                    message = pubsub.get_message(timeout=CATCH_UP_SECONDS)
                    if message is None:
                        self._catch_up()
                    else:
                        self._take(json.loads(message["data"]))
            except Exception:
                log.warning("event subscription lost; reconnecting", exc_info=True)
                time.sleep(1)

    def _take(self, message: dict) -> None:
        if message["id"] == self.last + 1:
            self._hand_out(message)
        else:
            # A gap (a lost publish): read it, and this one, from the outbox. An old number: a repeat, or the
            # outbox was emptied (a restore; the tests' TRUNCATE), which _catch_up notices.
            self._catch_up()

    def _catch_up(self) -> None:
        with self.runtime.session_scope() as session:
            newest = outbox.last_seq(session)
            if self.last is None or newest < self.last:  # first run; or the outbox was emptied (a restore)
                self.last = newest if self.last is None else 0
            while events := outbox.after(session, self.last):
                for event in events:
                    self._hand_out(event.as_message())

    def _hand_out(self, message: dict) -> None:
        self.last = message["id"]
        with self.lock:
            streams = set().union(*(self.routes.get(key, ()) for key in self.routes_of(message)))
        text = _sse(message) if streams else ""  # formatted once, not once per stream
        for stream in streams:
            stream.offer(message, text)


_broadcasters: dict = {}
# Made at import, before gevent patches `threading` in the stream process: a real lock, so nothing that could
# switch greenlets may run while it is held (the Broadcaster's thread starts after it is released).
_broadcasters_lock = threading.Lock()


def broadcaster(rt) -> Broadcaster:
    with _broadcasters_lock:
        hub = _broadcasters.get(rt)
        new = hub is None
        if new:
            hub = _broadcasters[rt] = Broadcaster(rt)
    if new:
        hub.start()
    hub.ready.wait(10)
    return hub


def _sse(message: dict, event_type: str | None = None, with_id: bool = True) -> str:
    head = f"id: {message['id']}\n" if with_id and message.get("id") is not None else ""
    return f"{head}event: {event_type or message['type']}\ndata: {json.dumps(message, separators=(',', ':'))}\n\n"


def _queue_places(rt, hub: Broadcaster, stream: Stream, seq: int | None) -> list[str]:
    """The fan's place in each queue they wait in, as `queue.position` messages (looked up now); the stream is
    filed under those queues' changes."""
    viewer = stream.viewer
    with rt.session_scope() as session:
        entries = list(session.scalars(select(Purchase).where(
            Purchase.fan_id == uuid.UUID(viewer.user_id), Purchase.transaction_type == "queued",
            Purchase.status.in_(OPEN_QUEUE_STATUSES))))
        models = frozenset(str(p.model_id) for p in entries)
        if models != viewer.queue_models:
            old, viewer.queue_models = viewer.routes(), models
            hub.file(stream, old)
        out = []
        for p in entries:
            place = performance_queue.position_or_repair(session, p, rt.redis)
            if place is not None:
                out.append(_sse({"id": seq, "type": "queue.position", "model_id": str(p.model_id),
                                 "fan_id": str(p.fan_id), "purchase_id": str(p.id),
                                 "data": {"status": p.status, "queue_position": place[0],
                                          "estimated_wait_minutes": place[1]}}, with_id=seq is not None))
    return out


def _still_allowed(rt, viewer: Viewer) -> str | None:
    if viewer.role == "overlay":  # the overlay URL was revoked or replaced: its streams end
        with rt.session_scope() as session:
            model_id = model_for_overlay_key(session, viewer.overlay_key)
        return None if str(model_id) == viewer.user_id else "overlay_revoked"
    if viewer.session_id is None:  # a platform token: valid until it expires, while its user is active
        if viewer.expires is not None and time.time() >= viewer.expires:
            return "token_expired"
        with rt.session_scope() as session:
            active = session.scalar(select(User.is_active).where(User.id == uuid.UUID(viewer.user_id)))
        return refusal_of(active, session_open=True)  # the platform's token has no session of ours to end
    with rt.session_scope() as session:
        return token_refusal(session, uuid.UUID(viewer.user_id), viewer.session_id)


def _events(rt, viewer: Viewer, after: int | None, heartbeat: float, check_every: float):
    stream = Stream(viewer)
    hub = broadcaster(rt)
    hub.file(stream)  # first: nothing committed from now on is missed, and the replay covers what came before
    try:
        yield "retry: 3000\n: connected\n\n"
        sent = after  # None: live only; the hub hands out each event once, in order
        if after is not None:
            with rt.session_scope() as session:
                while events := outbox.after(session, sent, REPLAY_BATCH, viewer.replay_filter()):
                    for event in events:
                        message = event.as_message()
                        if viewer.sees(message):
                            yield viewer.text_of(message, _sse(message))
                    sent = events[-1].seq
        if viewer.role == "fan":
            yield from _queue_places(rt, hub, stream, None)  # where they stand now
        check_at = time.monotonic() + check_every
        while not stream.overflowed:
            try:
                waiting = [stream.inbox.get(timeout=heartbeat)]
            except queue.Empty:
                yield ": keep-alive\n\n"
                waiting = []
            while waiting and len(waiting) < WRITE_BATCH:  # what else is waiting goes out in the same write
                try:
                    waiting.append(stream.inbox.get_nowait())
                except queue.Empty:
                    break
            out, moved = [], False
            for message, text in waiting:
                if sent is None or message["id"] > sent:
                    sent = message["id"]
                    if viewer.sees(message):
                        out.append(viewer.text_of(message, text))
                    moved = moved or viewer.moves_queue_place(message)
            if moved:  # one lookup for the whole write: where the fan stands after all of it
                out.extend(_queue_places(rt, hub, stream, sent))
            if out:
                yield "".join(out)
            if time.monotonic() >= check_at:
                check_at = time.monotonic() + check_every
                refused = _still_allowed(rt, viewer)
                if refused:
                    yield f"event: end\ndata: {json.dumps({'reason': refused})}\n\n"
                    return
    finally:
        hub.remove(stream)


def _redeem(ticket: str) -> Viewer:
    raw = redis().getdel(_TICKET_KEY + ticket) if 16 <= len(ticket) <= 64 else None
    if raw is None:
        raise ApiError(401, "invalid_ticket", "The stream ticket is unknown, used or expired: ask for a new one")
    data = json.loads(raw)
    return Viewer(data["user_id"], data["role"],
                  uuid.UUID(data["session_id"]) if data.get("session_id") else None,
                  overlay_key=data.get("overlay_key"), expires=data.get("expires"))


def issue_ticket(user_id, role: str, session_id=None, overlay_key: str | None = None,
                 expires: float | None = None) -> dict:
    """A single-use stream ticket (TICKET_SECONDS) for this viewer, kept in Redis, and the URL to open."""
    value = secrets.token_urlsafe(24)
    redis().set(_TICKET_KEY + value, json.dumps({"user_id": str(user_id), "role": role,
                                                 "session_id": str(session_id) if session_id else None,
                                                 "overlay_key": overlay_key, "expires": expires}),
                ex=TICKET_SECONDS)
    return {"ticket": value, "expires_in": TICKET_SECONDS,
            "stream_url": f"{settings().stream_base_url}?ticket={value}"}


def _session_of_token():
    return g.token_session  # authenticate(): None for a platform token


@blp.route("/ticket", methods=["POST"])
@role_required()
@blp.doc(responses={"201": {"description": "A stream ticket: open `stream_url` within 60 s, once"}})
def ticket():
    """A single-use ticket (60 s) to open the event stream from a browser, whose EventSource cannot send the
    bearer token: `new EventSource(stream_url)`."""
    return issue_ticket(current_user_id(), current_role(), _session_of_token(),
                        expires=g.get("platform_expires")), 201


@blp.route("/stream", methods=["GET"])
@blp.doc(parameters=[
    {"in": "query", "name": "ticket", "schema": {"type": "string"}, "description": "from POST /events/ticket"},
    {"in": "query", "name": "model_id", "schema": {"type": "string", "format": "uuid"},
     "description": "admins: one model's events only"},
    {"in": "header", "name": "Last-Event-ID", "schema": {"type": "integer"},
     "description": "resume after this event"}],
    responses={"200": {"description": "text/event-stream"}})
@error(401, "invalid_ticket", "The stream ticket is unknown, used or expired: ask for a new one",
       description="invalid_ticket, or no valid bearer token")
def stream():
    """The live events the caller may see (Server-Sent Events), resumable with `Last-Event-ID`."""
    if request.args.get("ticket"):
        viewer = _redeem(request.args["ticket"])
    else:
        authenticate()
        viewer = Viewer(str(current_user_id()), current_role(), _session_of_token(),
                        expires=g.get("platform_expires"))
    if viewer.role == "admin" and request.args.get("model_id"):
        try:
            viewer.model_filter = str(uuid.UUID(request.args["model_id"]))
        except ValueError:
            raise ApiError(422, "invalid_request", "model_id must be a UUID") from None
    after = request.headers.get("Last-Event-ID") or request.args.get("last_event_id")
    if after is not None:
        if not after.isdigit() or len(after) > 18:
            raise ApiError(422, "invalid_request", "Last-Event-ID must be an event id")
        after = int(after)
    rt = runtime()
    hub = broadcaster(rt)
    if not hub.admit(viewer.user_id, settings().streams_per_user):
        raise ApiError(429, "too_many_streams", "Too many open event streams: close one first")
    body = _events(rt, viewer, after, settings().stream_heartbeat_seconds, settings().stream_session_check_seconds)
    # Any origin may read a stream: the ticket (or bearer token) in the request is the credential, and cookies
    # never authenticate a cross-origin read (no Allow-Credentials). The pages open it from the web's origin.
    response = Response(body, mimetype="text/event-stream",
                        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no",
                                 "Access-Control-Allow-Origin": "*"})
    response.call_on_close(lambda: hub.release(viewer.user_id))  # whether or not the stream ever started
    return response
