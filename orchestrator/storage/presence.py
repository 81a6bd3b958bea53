"""Heartbeats of the long-running processes (workers, projectors): who is alive, by Redis's clock."""

from __future__ import annotations

import asyncio

import msgspec
import redis.exceptions
import structlog

from orchestrator.storage.codec import text
from orchestrator.storage.connections import RedisClient, routed_to, store_unavailable
from orchestrator.storage.scripts.presence import BeatScript

log = structlog.get_logger("backstream.presence")


class Heartbeat:
    """Writes `name` into the heartbeats set `key` every `interval_s` seconds until cancelled.
    A beat the store refuses (unreachable, out of memory, or any other error) is logged once
    and retried at the next interval; the process carries on either way."""

    def __init__(self, redis: RedisClient, key: str, name: str, *, interval_s: float) -> None:
        self.redis = redis
        self.key = key
        self.name = name
        self.interval_s = interval_s
        self._script = BeatScript(redis, key)
        self._failing = False

    async def beat(self) -> None:
        """One heartbeat, timed by Redis. Raises redis errors."""
        await self._script.beat(name=self.name)

    async def run(self) -> None:
        """Beat until cancelled."""
        while True:
            try:
                await self.beat()
                if self._failing:
                    log.info("heartbeat.resumed", name=self.name)
                self._failing = False
            except redis.exceptions.RedisError as e:
                # Never fatal: a process that cannot beat still works; it only looks silent.
                if not self._failing:
                    level = log.warning if store_unavailable(e) else log.error
                    level("heartbeat.refused", name=self.name, error=str(e), error_type=type(e).__name__)
                self._failing = True
            await asyncio.sleep(self.interval_s)

    async def remove(self) -> None:
        """Leave the set (a clean stop): best effort, since the process is going anyway."""
        try:
            await self.redis.zrem(self.key, self.name)
        except redis.exceptions.RedisError as e:
            log.warning("heartbeat.not_removed", name=self.name, error=str(e))


class Beats(msgspec.Struct, frozen=True):
    """The heartbeats in one set: Redis's time now and each name's age, in seconds."""

    now_ms: int
    ages_s: dict[str, float]

    def alive(self, within_ms: int) -> list[str]:
        """Names that beat within the last `within_ms` milliseconds, sorted."""
        return sorted(name for name, age in self.ages_s.items() if age * 1000 < within_ms)


async def read_beats(redis: RedisClient, key: str) -> Beats:
    """Every heartbeat in `key` with its age by Redis's clock (one round trip)."""
    async with redis.pipeline(transaction=False) as pipe:
        pipe.execute_command("TIME", **await routed_to(pipe, key))  # the clock the beats were scored by
        pipe.zrange(key, 0, -1, withscores=True)
        (seconds, micros), members = await pipe.execute()
    now_ms = int(seconds) * 1000 + int(micros) // 1000
    return Beats(now_ms=now_ms, ages_s={text(m): max(now_ms - score, 0) / 1000 for m, score in members})
