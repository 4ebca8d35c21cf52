"""The load generator: a separate process (asyncio + aiohttp) so its CPU is not the server's.

    python -m bench.loadgen '<json spec>'   -> prints one JSON result line

spec: {"url", "duration", "connections"} for a closed loop (each connection sends its next request as soon as
the previous answered), or {"url", "duration", "rate"} for an open loop at a fixed offered rate (requests
leave on schedule whether or not earlier ones answered). "bodies" and "tokens" rotate; "idempotency": true
sends a fresh Idempotency-Key with each request. Loopback only."""
import asyncio
import itertools
import json
import sys
import time
import uuid

import aiohttp


def _percentile(sorted_values, q):
    if not sorted_values:
        return None
    k = min(len(sorted_values) - 1, max(0, round(q / 100 * (len(sorted_values) - 1))))
    return sorted_values[k]


async def main(spec):
    url = spec["url"]
    assert url.startswith("http://127.0.0.1"), "loopback only"
    bodies = itertools.cycle(spec.get("bodies") or [{"hello": "world"}])
    tokens = itertools.cycle(spec.get("tokens") or [None])
    duration = float(spec["duration"])
    statuses = {}
    latencies = []  # seconds, for answers counted as "ok"
    ok_status = set(spec.get("ok_status", [200, 202]))
    settled_only = spec.get("settled_only", False)  # latency of settlement: a 202 or no answer is "late"
    late = 0

    def request_args():
        headers = {}
        token = next(tokens)
        if token:
            headers["Authorization"] = f"Bearer {token}"
        if spec.get("idempotency"):
            headers["Idempotency-Key"] = uuid.uuid4().hex
        return {"json": next(bodies), "headers": headers}

    async def one(session):
        nonlocal late
        args = request_args()
        t0 = time.perf_counter()
        try:
            async with session.post(url, **args) as resp:
                data = await resp.read()
                status = resp.status
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            statuses[type(exc).__name__] = statuses.get(type(exc).__name__, 0) + 1
            if settled_only:  # a purchase with no answer is late too, by at least its time so far
                late += 1
                latencies.append(time.perf_counter() - t0)
            return
        elapsed = time.perf_counter() - t0
        statuses[status] = statuses.get(status, 0) + 1
        if status in ok_status:
            if settled_only and json.loads(data).get("status") == "pending":
                late += 1  # answered 202 after the wait: counted, with its time, as a late settlement
            latencies.append(elapsed)

    connector = aiohttp.TCPConnector(limit=spec.get("connections", 256), force_close=False)
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        start = time.perf_counter()
        end = start + duration
        if "rate" in spec:
            interval = 1.0 / float(spec["rate"])
            pending = []
            i = 0
            while True:
                at = start + i * interval
                if at >= end:
                    break
                delay = at - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                pending.append(asyncio.ensure_future(one(session)))
                i += 1
            await asyncio.gather(*pending)
            elapsed = duration
        else:
            async def loop():
                while time.perf_counter() < end:
                    await one(session)

            await asyncio.gather(*(loop() for _ in range(int(spec["connections"]))))
            elapsed = time.perf_counter() - start
    latencies.sort()
    ms = lambda s: None if s is None else round(s * 1000, 2)  # noqa: E731
    return {
        "ok": len(latencies),
        "late": late,
        "ok_per_s": round(len(latencies) / elapsed, 1),
        "statuses": {str(k): v for k, v in statuses.items()},
        "p50_ms": ms(_percentile(latencies, 50)),
        "p95_ms": ms(_percentile(latencies, 95)),
        "p99_ms": ms(_percentile(latencies, 99)),
        "max_ms": ms(latencies[-1] if latencies else None),
        "elapsed_s": round(elapsed, 2),
    }


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main(json.loads(sys.argv[1])))))
