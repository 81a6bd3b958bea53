"""Typed wrapper of beat.lua: a long-running process says it is alive, on Redis's clock."""

from __future__ import annotations

from orchestrator.storage.connections import RedisClient
from orchestrator.storage.keys import HEARTBEAT_KEEP_MS
from orchestrator.storage.scripts import ScriptCall


class BeatScript:
    """beat.lua on one client, for one heartbeats sorted set (`key`)."""

    def __init__(self, redis: RedisClient, key: str) -> None:
        self.key = key
        self._beat = ScriptCall(redis, "beat", with_lib=False)

    async def beat(self, *, name: str, keep_ms: int = HEARTBEAT_KEEP_MS) -> int:
        """Score `name` with Redis's time now and drop members silent for over `keep_ms` ms.
        Returns that time, in ms since the epoch. Raises redis errors."""
        return int(await self._beat(keys=[self.key], args=[name, keep_ms]))
