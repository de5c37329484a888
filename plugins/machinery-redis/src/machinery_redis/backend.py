"""The Redis result backend, with Go Machinery's key layout and JSON.

- a task's state: key = the task UUID, value = Go's ``TaskState`` JSON;
- a group's metadata: key = the group UUID, value = Go's ``GroupMeta`` JSON;
- both expire after ``results_expire_in`` seconds (0: Go's default 3600; -1 keeps them).

So a Go client reading ``GET <task uuid>`` sees what a Python worker stored, and the other way
round. The chord flag is set inside the stored ``GroupMeta`` by a Lua script, so exactly one
caller wins however many race, under Go's ``TriggerChordMutex`` lock so Go workers agree.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import redis

from machinery.plugin import (
    Backend,
    BackendConnectionError,
    BackendError,
    Completion,
    GroupMeta,
    TaskState,
    decode_group_meta,
    decode_task_state,
    encode_group_meta,
    encode_task_state,
    redact_url,
    wire,
)
from machinery_redis._fork import track
from machinery_redis.batch import CommandBatcher
from machinery_redis.tracking import StateWatcher, wait_completed
from machinery_redis.transport import ENV_OPTIONS, RedisTransport, is_cluster, translate_errors

if TYPE_CHECKING:
    from datetime import timedelta

    from machinery.plugin import Config, Revocation, Signature

__all__ = ["RedisBackend"]

log = logging.getLogger("machinery.redis")

#: Prefix of the worker registry's keys (Python-only; outside Go's task, group and queue keys).
WORKER_PREFIX = "machinery_py:worker:"

#: Revocations (Python-only keys, one hash slot so the scripts run on a Cluster too): a counter,
#: a sorted set UUID -> sequence number, and a hash UUID -> "<expiry ms or -1>:<terminate 0/1>".
REVOKED_SEQ = "machinery_py:{revoked}:seq"
REVOKED_LOG = "machinery_py:{revoked}:log"
REVOKED_INFO = "machinery_py:{revoked}:info"
#: Prefix of the rate limiters' keys (one per task name: its theoretical arrival time, ms).
RATE_LIMIT_PREFIX = "machinery_py:ratelimit:"

# KEYS: seq, log, info. ARGV: ttl ms (-1: forever), terminate (0/1), uuids... Server time.
_REVOKE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[1])
local exp = -1
if ttl >= 0 then exp = now + ttl end
for i = 3, #ARGV do
  local u = ARGV[i]
  local term = ARGV[2]
  local old = redis.call('HGET', KEYS[3], u)
  if old and term == '0' then
    local oe, ot = string.match(old, '^(-?%d+):(%d)$')
    if ot == '1' and (tonumber(oe) < 0 or tonumber(oe) > now) then term = '1' end
  end
  local s = redis.call('INCR', KEYS[1])
  redis.call('ZADD', KEYS[2], s, u)
  redis.call('HSET', KEYS[3], u, exp .. ':' .. term)
end
local oldest = redis.call('ZRANGE', KEYS[2], 0, 199)
for _, u in ipairs(oldest) do
  local v = redis.call('HGET', KEYS[3], u)
  local e = v and tonumber(string.match(v, '^(-?%d+):'))
  if not e or (e >= 0 and e <= now) then
    redis.call('ZREM', KEYS[2], u)
    redis.call('HDEL', KEYS[3], u)
  end
end
return 1
"""

# KEYS: seq, log, info. ARGV: cursor, limit. Returns {last seq seen, {uuid, terminate, ms left or -1, ...}}.
_REVOCATIONS_SINCE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local head = tonumber(redis.call('GET', KEYS[1]) or '0')
local cur = tonumber(ARGV[1])
if head < cur then cur = 0 end
local rows = redis.call('ZRANGEBYSCORE', KEYS[2], '(' .. cur, '+inf', 'WITHSCORES', 'LIMIT', 0, tonumber(ARGV[2]))
local out = {}
local last = cur
for i = 1, #rows, 2 do
  local u = rows[i]
  last = tonumber(rows[i + 1])
  local v = redis.call('HGET', KEYS[3], u)
  if v then
    local e, term = string.match(v, '^(-?%d+):(%d)$')
    e = tonumber(e)
    if e < 0 then
      out[#out + 1] = u; out[#out + 1] = term; out[#out + 1] = '-1'
    elseif e > now then
      out[#out + 1] = u; out[#out + 1] = term; out[#out + 1] = tostring(e - now)
    end
  end
end
return {tostring(last), out}
"""

# KEYS[1]: the task's limiter key. ARGV: interval ms, max wait ms. GCRA on the server's clock.
_RATE_RESERVE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
local wait = tat - now
if wait > tonumber(ARGV[2]) then return {0, tostring(wait)} end
local nxt = tat + tonumber(ARGV[1])
redis.call('SET', KEYS[1], string.format('%.3f', nxt), 'PX', math.ceil(nxt - now) + 1000)
return {1, tostring(wait)}
"""

#: Connection classes whose server can track keys for us (not Sentinel-managed ones).
_TRACKABLE = (redis.Connection, redis.SSLConnection, redis.UnixDomainSocketConnection)


def _decode_state(raw: bytes | None) -> TaskState | None:
    return None if raw is None else decode_task_state(raw)


#: Go's field name of the chord flag (``ChordTriggered``), from the core's wire constants. It
#: goes into a Lua pattern below, so it must stay alphanumeric.
CHORD_FIELD = wire.GROUP_META.chord_triggered
if not CHORD_FIELD.isalnum():
    raise RuntimeError(f"unexpected chord field name {CHORD_FIELD!r}")
_CHORD_PATTERN = "".join(f"[{c.upper()}{c.lower()}]" if c.isalpha() else c for c in CHORD_FIELD)

# KEYS[1]: the group key. ARGV: the chord field name, and a Lua pattern matching it in any case
# (Go's decoder matches field names case-insensitively). Flips the flag in place (keeping the
# rest of the record byte for byte, and its expiry); returns 1 to the one caller that flipped it.
_TRIGGER_CHORD = """
local v = redis.call('GET', KEYS[1])
if not v then return 0 end
local f = '"' .. ARGV[1] .. '"'
local p = '"' .. ARGV[2] .. '"%s*:%s*'
local s, e = string.find(v, p .. 'false')
if s then
  v = string.sub(v, 1, s - 1) .. f .. ':true' .. string.sub(v, e + 1)
elseif string.find(v, p .. 'true') then
  return 0
elseif string.find(v, '^%s*{%s*}%s*$') then
  v = '{' .. f .. ':true}'
else
  local b = string.find(v, '{', 1, true)
  if not b then return 0 end
  v = string.sub(v, 1, b) .. f .. ':true,' .. string.sub(v, b + 1)
end
redis.call('SET', KEYS[1], v, 'KEEPTTL')
return 1
"""

#: Go's chord lock (``v2/backends/redis/redis.go`` TriggerChord: ``redsync.NewMutex("TriggerChordMutex")``):
#: one key for every group, taken by Go and Python workers around the trigger.
CHORD_MUTEX = "TriggerChordMutex"
#: redsync's defaults: the key's expiry, the number of tries and the random wait between them.
CHORD_MUTEX_EXPIRY_MS = 8000
CHORD_MUTEX_TRIES = 32
CHORD_MUTEX_DELAY = (0.05, 0.25)
# redsync's unlock: delete the key only while it still holds our value.
_UNLOCK = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) else return 0 end
"""


class RedisBackend(Backend):
    """Result backend on Redis strings, compatible with Go Machinery's Redis backend.

    :param url: ``redis://``, ``rediss://`` or ``redis+socket://`` (see :mod:`machinery_redis`).
    :param config: the core config; ``results_expire_in`` sets the expiry.
    :param transport: the transport handing this backend out (default: the process's shared one
        for ``url`` and ``config``).
    """

    supports_expiry: ClassVar[bool] = True
    persistent: ClassVar[bool] = True
    supports_worker_registry: ClassVar[bool] = True
    supports_revocation: ClassVar[bool] = True
    supports_rate_limit: ClassVar[bool] = True
    config_section: ClassVar[str | None] = "redis"
    env_options: ClassVar[dict[str, str]] = ENV_OPTIONS

    def __init__(self, url: str, config: Config, *, transport: RedisTransport | None = None) -> None:
        super().__init__(url, config)
        #: The transport whose pool and batcher this backend uses (a broker on the same URL and
        #: configuration has the same one).
        self.transport: RedisTransport = RedisTransport.attach(self, url, config, transport)
        self.target = self.transport.target
        self.options = self.transport.options
        self._released = False
        self._trigger: Any = None
        self._unlock: Any = None
        self._watcher: StateWatcher | None = None
        self._watcher_lock = threading.Lock()
        self._watcher_retry_at = 0.0
        self._scripts: dict[str, Any] = {}
        track(self)

    def _after_fork_in_child(self) -> None:
        # the parent's state watcher (its connections and thread) stays the parent's
        self._watcher_lock = threading.Lock()
        self._watcher = None
        self._watcher_retry_at = 0.0

    def _held(self) -> RedisTransport:
        if self._released:  # used again after close: hold the transport again
            self._released = False
            self.transport.retain(self)
        return self.transport

    @property
    def client(self) -> Any:
        """The transport's redis-py client (its pool opens on first use)."""
        return self._held().client

    @property
    def batcher(self) -> CommandBatcher:
        """The transport's command batcher (group commit of state writes)."""
        return self._held().batcher

    def _errors(self, what: str) -> Any:
        return translate_errors(what, self.url, BackendError, BackendConnectionError)

    def _ex(self) -> int | None:
        return self.lifetime()  # Go's getExpiration: 0 means 3600 s

    def _set_command(self, state: TaskState, ex: int | None) -> tuple[Any, ...]:
        body = encode_task_state(state)
        return ("SET", state.task_uuid, body) if ex is None else ("SET", state.task_uuid, body, "EX", ex)

    def pending_command(self, signature: Signature) -> tuple[Any, ...]:
        """The ``SET`` that stores the PENDING state of ``signature`` (sent by the transport's
        ``publish_with_state`` in the pipeline that publishes it)."""
        return self._set_command(self.pending_state(signature), self._ex())

    def _store_state(self, state: TaskState) -> None:
        # Through the shared batcher: concurrent workers' writes share one round trip.
        with self._errors(f"store state of {state.task_uuid}"):
            self.batcher.execute([self._set_command(state, self._ex())], supersedes=state.task_uuid)

    def _store_states(self, states: Sequence[TaskState], *, wait: bool = True) -> Completion:
        """Through the shared batcher. With ``wait``: one pipeline, confirmed before returning.

        Without: queued to ride in the next pipeline, and the returned completion is resolved
        from the thread that sends it, once Redis has answered (pipelines go out one after the
        other, in order, so a later write of this process never lands first). A final state
        drops the task's queued intermediate states (they would be overwritten at once); a
        write of intermediate states only (RECEIVED, STARTED) waits for company as a
        provisional unit, and is dropped, unencoded and unsent, if the task's final state is
        queued before it leaves (its completion is then resolved as stored)."""
        if not states:
            return Completion.stored()
        ex = self._ex()
        if wait:
            with self._errors(f"store {len(states)} states"):
                self.batcher.execute([self._set_command(st, ex) for st in states])
            return Completion.stored()
        uuid = states[0].task_uuid
        stored = Completion()

        def done(_replies: list[Any], error: BaseException | None) -> None:
            stored.resolve(None if error is None else self._translate(f"store state of {uuid}", error))

        final = False
        for st in states:  # (a loop: cheaper than any() over one or two states)
            if st.is_completed:
                final = True
                break
        if final:
            commands = [self._set_command(st, ex) for st in states]
            self.batcher.submit(commands, done, supersedes=uuid if len(states) == 1 else None)
        else:

            def build() -> list[tuple[Any, ...]]:
                return [self._set_command(st, ex) for st in states]

            self.batcher.submit_provisional(uuid, build, done)
        return stored

    def _translate(self, what: str, error: BaseException) -> BaseException:
        try:
            with self._errors(what):
                raise error
        except BaseException as exc:  # noqa: BLE001 - returned, not swallowed
            return exc

    def _load_state(self, task_uuid: str) -> TaskState | None:
        with self._errors(f"load state of {task_uuid}"):
            raw = self.client.get(task_uuid)
        return None if raw is None else decode_task_state(raw)

    def _load_states(self, task_uuids: Sequence[str]) -> list[TaskState | None]:
        if not task_uuids:
            return []
        with self._errors(f"load {len(task_uuids)} states"):
            if is_cluster(self.client):
                raws = self.client.mget_nonatomic(list(task_uuids))
            else:
                raws = self.client.mget(list(task_uuids))
        return [None if raw is None else decode_task_state(raw) for raw in raws]

    def _store_group(self, meta: GroupMeta) -> None:
        with self._errors(f"store group {meta.group_uuid}"):
            self.client.set(meta.group_uuid, encode_group_meta(meta), ex=self._ex())

    def _load_group(self, group_uuid: str) -> GroupMeta | None:
        with self._errors(f"load group {group_uuid}"):
            raw = self.client.get(group_uuid)
        return None if raw is None else decode_group_meta(raw)

    def _mark_chord_triggered(self, group_uuid: str) -> bool:
        """Flip the group's ``ChordTriggered`` (a Lua script: one caller wins among Python
        workers) while holding Go's ``TriggerChordMutex``, so that a Go worker, which reads the
        group and writes it back under that lock, never interleaves with it: a chord fires once
        in a fleet of Go and Python workers sharing the Redis."""
        with self._errors(f"trigger chord of {group_uuid}"):
            client = self.client
            if self._trigger is None:
                self._unlock = client.register_script(_UNLOCK)
                self._trigger = client.register_script(_TRIGGER_CHORD)
            token = self._lock_chord_mutex(client, group_uuid)
            try:
                return bool(self._trigger(keys=[group_uuid], args=[CHORD_FIELD, _CHORD_PATTERN]))
            finally:
                self._unlock(keys=[CHORD_MUTEX], args=[token])

    @staticmethod
    def _lock_chord_mutex(client: Any, group_uuid: str) -> str:
        """Take ``TriggerChordMutex`` as redsync does: ``SET NX PX 8000`` with a random value,
        up to 32 tries 50-250 ms apart. :raises BackendError: still held after every try."""
        import base64
        import random

        token = base64.b64encode(os.urandom(16)).decode("ascii")
        for attempt in range(CHORD_MUTEX_TRIES):
            if client.set(CHORD_MUTEX, token, nx=True, px=CHORD_MUTEX_EXPIRY_MS):
                return token
            if attempt < CHORD_MUTEX_TRIES - 1:
                time.sleep(random.uniform(*CHORD_MUTEX_DELAY))
        raise BackendError(
            f"cannot trigger the chord of {group_uuid}: {CHORD_MUTEX} is held by another worker "
            f"after {CHORD_MUTEX_TRIES} tries (Go's redsync mutex; retried on redelivery)"
        )

    def _delete(self, uuid: str) -> None:
        with self._errors(f"delete {uuid}"):
            self.client.delete(uuid)

    # -- worker registry: one key per worker, ``machinery_py:worker:<id>`` (Go never reads it) ----

    def register_worker(self, worker_id: str, record: bytes, ttl: timedelta) -> None:
        """``SET machinery_py:worker:<id> <record> PX <ttl>``."""
        with self._errors(f"register worker {worker_id}"):
            self.client.set(WORKER_PREFIX + worker_id, record, px=max(1, int(ttl.total_seconds() * 1000)))

    def unregister_worker(self, worker_id: str) -> None:
        """``DEL`` the worker's key."""
        with self._errors(f"unregister worker {worker_id}"):
            self.client.delete(WORKER_PREFIX + worker_id)

    def list_workers(self) -> list[bytes]:
        """``SCAN`` the worker keys, then read them (a key that expired in between is skipped)."""
        with self._errors("list workers"):
            keys = list(self.client.scan_iter(match=WORKER_PREFIX + "*", count=500))
            if not keys:
                return []
            raws = self.client.mget_nonatomic(keys) if is_cluster(self.client) else self.client.mget(keys)
        return [bytes(r) for r in raws if r is not None]

    # -- revocations and rate limits (Lua scripts on Python-only keys; Go never reads them) ---------

    def _script(self, name: str, text: str) -> Any:
        script = self._scripts.get(name)
        if script is None:
            script = self._scripts[name] = self.client.register_script(text)
        return script

    def revoke(self, task_uuids: Sequence[str], *, terminate: bool, ttl: timedelta | None) -> None:
        """One script: a sequence number per UUID, its expiry on the server's clock, and a sweep
        of the oldest expired records."""
        ms = -1 if ttl is None else max(1, int(ttl.total_seconds() * 1000))
        with self._errors(f"revoke {len(task_uuids)} task(s)"):
            self._script("revoke", _REVOKE)(
                keys=[REVOKED_SEQ, REVOKED_LOG, REVOKED_INFO], args=[ms, int(terminate), *task_uuids]
            )

    def revocations_since(self, cursor: int, limit: int = 1000) -> tuple[list[Revocation], int]:
        """One script: the live records numbered after ``cursor``."""
        from machinery.plugin import Revocation

        with self._errors("read revocations"):
            last, flat = self._script("since", _REVOCATIONS_SINCE)(
                keys=[REVOKED_SEQ, REVOKED_LOG, REVOKED_INFO], args=[cursor, limit]
            )
        out = []
        for i in range(0, len(flat), 3):
            uuid, term, left = (x.decode() if isinstance(x, bytes) else str(x) for x in flat[i : i + 3])
            ms = float(left)
            out.append(Revocation(uuid, term == "1", None if ms < 0 else ms / 1000.0))
        return out, int(float(last))

    def rate_limit_reserve(self, key: str, interval: float, max_wait: float) -> tuple[bool, float]:
        """GCRA in one script on the server's clock, so every worker's clock agrees."""
        with self._errors(f"rate limit {key}"):
            ok, wait = self._script("rate", _RATE_RESERVE)(
                keys=[RATE_LIMIT_PREFIX + key], args=[interval * 1000.0, max_wait * 1000.0]
            )
        return bool(int(ok)), float(wait) / 1000.0

    def wait_for(self, task_uuid: str, timeout: float, poll_interval: float = 0.05) -> TaskState | None:
        """Wait until SUCCESS or FAILURE, woken by Redis when the state changes (client tracking,
        see :mod:`machinery_redis.tracking`), so a result is seen one round trip after it is
        stored. Where tracking is not available (Cluster, Sentinel, a server older than 6, a
        lost connection) it polls as the core's default does."""
        deadline = time.monotonic() + timeout
        watcher = self._state_watcher()
        if watcher is not None:
            try:
                state: TaskState | None = wait_completed(
                    watcher, task_uuid, _decode_state, timeout, max(poll_interval, 0.01)
                )
                return state
            except (redis.RedisError, OSError) as exc:
                log.info("redis state watcher failed (%s); polling %s instead", type(exc).__name__, task_uuid)
        return super().wait_for(task_uuid, max(0.0, deadline - time.monotonic()), poll_interval)

    def _state_watcher(self) -> StateWatcher | None:
        watcher = self._watcher
        if watcher is not None and watcher.pid != os.getpid():  # forked: the parent's, untouched
            watcher = self._watcher = None
            self._watcher_retry_at = 0.0
        if watcher is not None and not watcher.broken:
            return watcher
        if not self.options.track_states:
            return None
        with self._watcher_lock:
            watcher = self._watcher
            if watcher is not None and not watcher.broken:
                return watcher
            now = time.monotonic()
            if now < self._watcher_retry_at:
                return None
            self._watcher_retry_at = now + 5.0
            if watcher is not None:
                watcher.close()
                self._watcher = None
            pool = getattr(self.client, "connection_pool", None)
            if pool is None or pool.connection_class not in _TRACKABLE:  # Cluster, Sentinel
                self._watcher_retry_at = float("inf")
                return None
            # RESP2 connections of our own (pub/sub messages, no push frames); redis-py 8's
            # maintenance notifications need RESP3, so their settings are left out.
            kwargs = {k: v for k, v in pool.connection_kwargs.items() if "maint_notifications" not in k}
            kwargs["protocol"] = 2
            watcher = StateWatcher(lambda: pool.connection_class(**kwargs))
            try:
                watcher.start()
            except (redis.RedisError, OSError, RuntimeError) as exc:
                watcher.close()
                log.info("redis client tracking unavailable (%s); results are polled", redact_url(str(exc)))
                return None
            self._watcher = watcher
            return watcher

    def close(self) -> None:
        """Release this backend's share of the connection pool. Idempotent."""
        watcher, self._watcher = self._watcher, None
        if watcher is not None:
            watcher.close()
        self._released = True
        self.transport.release(self)
