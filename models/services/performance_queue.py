"""The performance queue (Queue ON; docs/architecture.md, "The performance queue"): one Redis sorted set per model, the database the source of truth.

An open entry (a purchase `queued` or `in_progress`) is the member f"{created_at_us:017d}:{purchase_id}" with
score -queue_priority, and the entry in progress has a score below every other. Redis orders equal scores by
member bytes, so the order is: the entry in progress, then higher priority first, then arrival (created_at,
then purchase id) among equals. A purchase always maps to the same member, so adding it twice is a no-op and a
rebuild can never duplicate an entry.

Each entry's estimated duration sits in a hash next to the set; a Lua script sums the durations of the entries
ahead of one entry inside Redis, so a position and wait lookup is one round trip (well under 2 ms on a
10,000-entry queue, see tests/test_queue_redis.py).

Writes happen after the database commit (`sync`); what a crash or a lost write leaves wrong is repaired by
`rebuild` (beat's reconciliation and the `rebuild-queues` command), which diffs Redis against the database.
"""
from __future__ import annotations

import logging
import uuid
from collections import Counter
from datetime import datetime, timedelta, timezone

from redis.exceptions import RedisError
from sqlalchemy import case, select

from ..purchases import OPEN_QUEUE_STATUSES, Purchase

log = logging.getLogger(__name__)

KEY_PREFIX = "perfmenu:queue:"
IN_PROGRESS_SCORE = -1_000_000  # below -queue_priority of any entry (token values are at most 99,999)
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_MICROSECOND = timedelta(microseconds=1)

# Keys of one model's queue (M = model id):
#   perfmenu:queue:M                 sorted set: member -> score (the queue itself; position = ZRANK + 1)
#   perfmenu:queue:M:durations       hash: member -> estimated duration in minutes
#   perfmenu:queue:M:levels          hash: "score:duration" -> number of entries with that score and duration
#   perfmenu:queue:M:level:S:D       sorted set (all scores 0): the members with score S and duration D
# The wait ahead of an entry with score s is: every level below s counted as duration x count (from the levels
# hash), plus, in its own level, duration x ZLEXCOUNT of the members before it (equal scores are ordered by
# member bytes, in the queue set as in the level sets). So a lookup costs one ZRANK, one HGETALL over the
# model's few (score, duration) pairs and a ZLEXCOUNT per duration of its own level: never a walk over the
# queue. Every write goes through one of the scripts below, so the four structures change together.
# (Level keys are computed inside the scripts: fine on one Redis, not on Redis Cluster.)

_SET_LUA = """
local q, d, lv, prefix, m, score, dur = KEYS[1], KEYS[2], KEYS[3], ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local old = redis.call('ZSCORE', q, m)
local old_dur = redis.call('HGET', d, m)
if old and old_dur and tonumber(old) == tonumber(score) and old_dur == dur then return 0 end
if old and old_dur then
  local field = tostring(tonumber(old)) .. ':' .. old_dur
  redis.call('ZREM', prefix .. field, m)
  if redis.call('HINCRBY', lv, field, -1) <= 0 then redis.call('HDEL', lv, field) end
end
local field = score .. ':' .. dur
redis.call('ZADD', q, score, m)
redis.call('HSET', d, m, dur)
redis.call('HINCRBY', lv, field, 1)
redis.call('ZADD', prefix .. field, 0, m)
return 1
"""

_REMOVE_LUA = """
local q, d, lv, prefix, m = KEYS[1], KEYS[2], KEYS[3], ARGV[1], ARGV[2]
local old = redis.call('ZSCORE', q, m)
local old_dur = redis.call('HGET', d, m)
redis.call('ZREM', q, m)
redis.call('HDEL', d, m)
if old and old_dur then
  local field = tostring(tonumber(old)) .. ':' .. old_dur
  redis.call('ZREM', prefix .. field, m)
  if redis.call('HINCRBY', lv, field, -1) <= 0 then redis.call('HDEL', lv, field) end
  return 1
end
return 0
"""

_CLEAR_LUA = """
local fields = redis.call('HKEYS', KEYS[3])
for _, field in ipairs(fields) do redis.call('DEL', ARGV[1] .. field) end
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3])
return #fields
"""

# Returns {queue_position, estimated_wait_minutes}, or nil when the member is not in the queue.
_POSITION_LUA = """
local q, lv, prefix, m = KEYS[1], KEYS[3], ARGV[1], ARGV[2]
local rank = redis.call('ZRANK', q, m)
if not rank then return nil end
local s = tonumber(redis.call('ZSCORE', q, m))
local wait = 0
local levels = redis.call('HGETALL', lv)
for i = 1, #levels, 2 do
  local ls, dur = string.match(levels[i], '^(-?%d+):(%d+)$')
  ls, dur = tonumber(ls), tonumber(dur)
  if dur > 0 then
    if ls < s then
      wait = wait + dur * tonumber(levels[i + 1])
    elseif ls == s then
      wait = wait + dur * redis.call('ZLEXCOUNT', prefix .. levels[i], '-', '(' .. m)
    end
  end
end
return {rank + 1, wait}
"""


class _Scripts:
    def __init__(self):
        self._by_client = {}

    def get(self, r):
        scripts = self._by_client.get(id(r))
        if scripts is None or scripts[0] is not r:
            scripts = (r, *(r.register_script(src) for src in (_SET_LUA, _REMOVE_LUA, _CLEAR_LUA, _POSITION_LUA)))
            self._by_client[id(r)] = scripts
        return scripts[1:]


_scripts = _Scripts()


def _keys(model_id) -> list[str]:
    base = f"{KEY_PREFIX}{model_id}"
    return [base, f"{base}:durations", f"{base}:levels"]


def _level_prefix(model_id) -> str:
    return f"{KEY_PREFIX}{model_id}:level:"


def member(p: Purchase) -> str:
    created_us = (p.created_at - _EPOCH) // _MICROSECOND
    return f"{created_us:017d}:{p.id}"


def score(p: Purchase) -> int:
    return IN_PROGRESS_SCORE if p.status == "in_progress" else -p.queue_priority


def _duration(p: Purchase) -> int:
    return int(p.estimated_duration_minutes or 0)


def purchase_id_of(queue_member: str) -> str:
    return queue_member.split(":", 1)[1]


def open_entries(session, model_id) -> list[Purchase]:
    """The model's open entries from the database, in queue order (the same order as the Redis set)."""
    return list(
        session.scalars(
            select(Purchase)
            .where(Purchase.model_id == model_id, Purchase.status.in_(OPEN_QUEUE_STATUSES))
            .order_by(
                case((Purchase.status == "in_progress", 0), else_=1),
                Purchase.queue_priority.desc(),
                Purchase.created_at,
                Purchase.id,
            )
        )
    )


def sync(purchases, redis) -> None:
    """Bring Redis in line with these committed purchases: open ones in (at their current score), others out.

    Called after commit; a Redis failure is logged and left to the reconciliation, never raised."""
    purchases = [p for p in purchases if p.transaction_type == "queued" and p.status != "pending"]
    if not purchases:
        return
    try:
        set_entry, remove_entry, _clear, _position = _scripts.get(redis)
        pipe = redis.pipeline(transaction=True)
        for p in purchases:
            keys, prefix = _keys(p.model_id), _level_prefix(p.model_id)
            if p.status in OPEN_QUEUE_STATUSES:
                set_entry(keys=keys, args=[prefix, member(p), score(p), _duration(p)], client=pipe)
            else:
                remove_entry(keys=keys, args=[prefix, member(p)], client=pipe)
        pipe.execute()
    except Exception:
        log.exception("queue update failed; reconciliation will repair it",
                      extra={"purchase_ids": [str(p.id) for p in purchases]})


def position(p: Purchase, redis) -> tuple[int, int] | None:
    """(queue_position, estimated_wait_minutes) of an open entry, or None if Redis does not hold it."""
    got = _scripts.get(redis)[3](keys=_keys(p.model_id), args=[_level_prefix(p.model_id), member(p)])
    if got is None:
        return None
    return int(got[0]), int(got[1])


def position_or_repair(session, p: Purchase, redis) -> tuple[int, int] | None:
    """Like `position`, but an open entry missing from Redis (flushed, a lost write) makes this call rebuild
    its model's queue from the database first. None for an entry that is not open, or when Redis is down."""
    if p.transaction_type != "queued" or p.status not in OPEN_QUEUE_STATUSES:
        return None
    try:
        found = position(p, redis)
        if found is None:
            rebuild(session, p.model_id, redis)
            found = position(p, redis)
        return found
    except RedisError:
        # Only Redis: a database error must reach the caller, whose session it left unusable (a request answers
        # 503 rather than going on with that session).
        log.exception("queue position lookup failed", extra={"purchase_id": str(p.id)})
        return None


def rebuild(session, model_id, redis) -> dict:
    """Make one model's Redis queue equal to its open entries in the database: add what is missing, fix a wrong
    score or duration, remove what is stale; touch nothing else. Returns counts of what changed.

    Redis is read before the database, so an entry that closes in between is removed rather than kept, and an
    entry added in between is set again (a no-op). Only an entry that closes between the database read and the
    write below can be re-added; the next run removes it."""
    set_entry, remove_entry, clear, _position = _scripts.get(redis)
    keys, prefix = _keys(model_id), _level_prefix(model_id)
    read = redis.pipeline(transaction=True)
    read.zrange(keys[0], 0, -1, withscores=True)
    read.hgetall(keys[1])
    read.hgetall(keys[2])
    actual_scores, actual_durations, actual_levels = read.execute()
    actual = {m: (int(s), int(actual_durations[m])) for m, s in actual_scores if m in actual_durations}
    wanted = {member(p): (score(p), _duration(p)) for p in open_entries(session, model_id)}

    # The level index must agree with the set and durations (only the scripts write it; checked all the same).
    index_ok = {f: int(c) for f, c in actual_levels.items()} == dict(Counter(f"{s}:{d}" for s, d in actual.values()))
    stale = (set(dict(actual_scores)) | set(actual_durations)) - set(wanted)
    to_set = {m: v for m, v in wanted.items() if actual.get(m) != v}
    if not index_ok:
        to_set, stale = wanted, set()
    if to_set or stale or not index_ok:
        write = redis.pipeline(transaction=True)
        if not index_ok:
            clear(keys=keys, args=[prefix], client=write)
            orphans = list(redis.scan_iter(match=f"{prefix}*", count=500))
            if orphans:
                write.delete(*orphans)
        for m in stale:
            remove_entry(keys=keys, args=[prefix, m], client=write)
        for m, (s, d) in to_set.items():
            set_entry(keys=keys, args=[prefix, m, s, d], client=write)
        write.execute()
    return {
        "added": len(wanted.keys() - actual.keys()),
        "fixed": len([m for m in wanted.keys() & actual.keys() if wanted[m] != actual[m]]),
        "removed": len(set(dict(actual_scores)) - set(wanted)),
    }


def rebuild_all(session, redis) -> dict:
    """Rebuild every model's queue: those with open entries in the database and those with keys in Redis."""
    model_ids = {str(m) for m in session.scalars(
        select(Purchase.model_id).where(Purchase.status.in_(OPEN_QUEUE_STATUSES)).distinct()
    )}
    for key in redis.scan_iter(match=f"{KEY_PREFIX}*", count=500):
        model_ids.add(key[len(KEY_PREFIX):].split(":", 1)[0])
    totals = {"models": 0, "added": 0, "fixed": 0, "removed": 0}
    for model_id in sorted(m for m in model_ids if _is_uuid(m)):
        counts = rebuild(session, uuid.UUID(model_id), redis)
        session.rollback()  # end the read transaction: one short snapshot per model
        totals["models"] += 1
        for k, v in counts.items():
            totals[k] += v
    return totals


def _is_uuid(text: str) -> bool:
    try:
        uuid.UUID(text)
        return True
    except ValueError:
        return False
