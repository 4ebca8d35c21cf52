"""Stream viewers for `make bench`: a separate process (asyncio + aiohttp) holding many Server-Sent Events streams
open, so their CPU is neither the load generator's nor the server's.

    python -m bench.streams    (spec and commands on stdin, answers on stdout, one JSON line each)

The first line on stdin is the spec (1,000 tokens are too long for one argv string): {"stream_url",
"ticket_url", "viewers": [{"role", "token", "ticket": bool, "last_event_id": int|null}]}. A viewer with
"ticket" first asks `POST ticket_url` for a single-use ticket (a browser's way in), the others send the bearer
token (an app's). Each reconnects as a browser's EventSource does (after the server's `retry`, with
Last-Event-ID) when its stream ends. The one "admin" viewer parses every event it gets and notes, for purchase
events, (occurred_at, arrival) on this machine's clock.

Once every stream is open or failed (or OPEN_TIMEOUT passed) it prints {"open", "failed", "pending", "open_s"}.
Then each line on stdin is a command: an event id N -> wait (at most 30 s) until the admin stream has N, print
{"admin_last", "caught_up"}; "end" -> close every stream and print the results. Loopback only."""
import asyncio
import json
import sys
import time
from datetime import datetime, timezone

import aiohttp

OPEN_AT_ONCE = 50  # connects in flight: a burst of 1,000 would only queue in the listen backlogs
OPEN_TIMEOUT = 60  # seconds for all streams to open (a few on this machine)
CATCH_UP_TIMEOUT = 30


def _occurred_at(data: str) -> float:
    at = datetime.fromisoformat(json.loads(data)["occurred_at"])
    return (at if at.tzinfo else at.replace(tzinfo=timezone.utc)).timestamp()


async def main(spec):
    assert spec["stream_url"].startswith("http://127.0.0.1"), "loopback only"
    loop = asyncio.get_running_loop()
    gate = asyncio.Semaphore(OPEN_AT_ONCE)
    total = len(spec["viewers"])
    opened, connected_now, failed, lost = 0, 0, {}, {}  # lost: streams that ended and could not reconnect
    reconnects = {"fan": 0, "model": 0, "admin": 0}
    all_open = asyncio.Event()
    messages = {"fan": 0, "model": 0, "admin": 0}
    admin = {"ids": set(), "last": 0, "timings": []}  # timings: [occurred_at, arrived] of purchase events
    admin_moved = asyncio.Event()

    def settled_one():
        if opened + sum(failed.values()) == total:
            all_open.set()

    async def read_stream(session, v, state) -> None:
        """One connection, until the server ends it; keeps the last event id and retry delay in `state`."""
        bearer = {"Authorization": f"Bearer {v['token']}"}
        url, headers = spec["stream_url"], {"Accept": "text/event-stream"}
        if v.get("ticket"):  # a ticket is single use: a new one for every connection
            async with session.post(spec["ticket_url"], headers=bearer) as r:
                if r.status != 201:
                    raise RuntimeError(f"ticket {r.status}")
                url = (await r.json())["stream_url"]
        else:
            headers.update(bearer)
        if state["last_id"] is not None:
            headers["Last-Event-ID"] = str(state["last_id"])
        async with session.get(url, headers=headers) as resp:
            if resp.status != 200:
                raise RuntimeError(f"stream {resp.status}")
            pending = b""
            async for chunk in resp.content.iter_any():  # whatever arrived: the server writes several at once
                *blocks, pending = (pending + chunk).split(b"\n\n")  # a blank line ends a message
                for block in blocks:
                    fields = {}
                    for line in block.decode().split("\n"):
                        if line.startswith(":"):
                            state["on_open"]()  # the server's first comment: the stream is registered
                        elif line:
                            name, _, value = line.partition(": ")
                            fields[name] = value
                    if "retry" in fields:
                        state["retry"] = int(fields["retry"]) / 1000
                    if "id" in fields:
                        state["last_id"] = int(fields["id"])
                    if "event" in fields:
                        messages[v["role"]] += 1
                        if v["role"] == "admin" and "id" in fields:
                            arrived = time.time()
                            if fields["event"].startswith("purchase."):
                                admin["timings"].append((_occurred_at(fields["data"]), arrived))
                            admin["ids"].add(state["last_id"])
                            admin["last"] = max(admin["last"], state["last_id"])
                            admin_moved.set()

    async def viewer(session, v):
        """Like a browser's EventSource: when the stream ends (the server ends one that falls STREAM_BUFFER
        events behind) or breaks, wait the `retry` the server gave and reconnect with Last-Event-ID."""
        nonlocal opened, connected_now
        state = {"last_id": v.get("last_event_id"), "retry": 3.0, "up": False}

        def on_open():
            nonlocal opened, connected_now
            if not state["up"]:
                state["up"] = True
                connected_now += 1
                if not opened_once:
                    opened += 1
                    gate.release()
                    settled_one()

        state["on_open"] = on_open
        opened_once = False
        await gate.acquire()
        while True:
            try:
                await read_stream(session, v, state)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if not state["up"]:  # could not (re)connect
                    bucket, why = (lost if opened_once else failed), str(exc)[:60]
                    bucket[why] = bucket.get(why, 0) + 1
                    if not opened_once:
                        gate.release()
                        settled_one()
                    return
            if state["up"]:
                opened_once, state["up"] = True, False
                connected_now -= 1
            reconnects[v["role"]] += 1
            await asyncio.sleep(state["retry"])

    async def caught_up(event_id: int) -> bool:
        deadline = loop.time() + CATCH_UP_TIMEOUT
        while admin["last"] < event_id and loop.time() < deadline:
            admin_moved.clear()
            try:
                await asyncio.wait_for(admin_moved.wait(), deadline - loop.time())
            except asyncio.TimeoutError:
                break
        return admin["last"] >= event_id

    def say(obj):
        print(json.dumps(obj), flush=True)

    # No read timeout: a quiet stream only gets a heartbeat every STREAM_HEARTBEAT_SECONDS.
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=None)) as session:
        t0 = time.perf_counter()
        tasks = [asyncio.ensure_future(viewer(session, v)) for v in spec["viewers"]]
        try:
            await asyncio.wait_for(all_open.wait(), OPEN_TIMEOUT)
        except asyncio.TimeoutError:
            pass  # reported as "pending": a stalled stream process must not hang the bench
        say({"open": opened, "failed": failed, "pending": total - opened - sum(failed.values()),
             "open_s": round(time.perf_counter() - t0, 2)})
        while (command := (await loop.run_in_executor(None, sys.stdin.readline)).strip()) not in ("end", ""):
            say({"admin_last": admin["last"], "caught_up": await caught_up(int(command))})
        still_open = connected_now
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    say({"still_open": still_open, "reconnects": reconnects, "lost": lost, "messages": messages,
         "admin_ids": sorted(admin["ids"]), "admin_timings": admin["timings"]})


if __name__ == "__main__":
    asyncio.run(main(json.loads(sys.stdin.readline())))
