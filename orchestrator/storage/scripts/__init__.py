"""The Lua scripts and how they are called.

Each script is called through one typed wrapper beside it (`attempts.py`: take, claim,
heartbeat, finish, release, promote; `commands.py`: submit, cancel, requeue, drop_result;
`projection.py`: apply, switch, hgetall_many; `presence.py`: beat). A wrapper takes named
arguments, names the script's KEYS from `orchestrator.storage.keys`, and returns a typed reply.
Command scripts get lib.lua prepended when loaded.
"""

from __future__ import annotations

from importlib import resources
from typing import Any

from redis.commands.core import AsyncScript

from orchestrator.storage.batching import ScriptBatcher
from orchestrator.storage.connections import RedisClient


def source(name: str) -> str:
    """The text of `<name>.lua` in this package. Raises FileNotFoundError for an unknown name."""
    return resources.files(__name__).joinpath(f"{name}.lua").read_text()


def register(redis: RedisClient, name: str, *, with_lib: bool) -> AsyncScript:
    """`<name>.lua` registered on the client `redis` (lib.lua prepended when `with_lib`). No
    round trip: the script is loaded on its first NOSCRIPT."""
    script: AsyncScript = redis.register_script((source("lib") if with_lib else "") + source(name))
    return script


class ScriptCall:
    """One registered script and how its calls travel: through `batcher` (calls made in one turn
    of the event loop share a round trip, see batching.py) or, without one, each on its own."""

    def __init__(self, redis: RedisClient, name: str, *, with_lib: bool, batcher: ScriptBatcher | None = None) -> None:
        self.script = register(redis, name, with_lib=with_lib)
        self._batcher = batcher

    async def __call__(self, keys: list[str], args: list[Any], before: tuple[tuple[Any, ...], ...] = ()) -> Any:
        """Run the script (EVALSHA, loading it on NOSCRIPT) and return its raw reply. `before`:
        plain commands sent just before it in the same round trip (batched calls only, else
        ValueError). Raises redis errors, and the script's own error replies as ResponseError."""
        if self._batcher is not None:
            return await self._batcher.call(self.script, keys=keys, args=args, before=before)
        if before:
            raise ValueError("commands sent before a script need a batcher")
        return await self.script(keys=keys, args=args)
