"""Redis clients: one pool for commands, a separate client for blocking reads."""

from __future__ import annotations

from typing import Any

import fakeredis
import redis.asyncio as aioredis

from orchestrator.settings import Settings

# Commands get a short timeout so an unreachable Redis becomes a quick 503, not a hung request.
COMMAND_TIMEOUT_S = 5.0


class Connections:
    """The clients of one process. On the embedded store, all share one in-process fake server."""

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
