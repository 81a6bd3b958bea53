"""Typed wrappers of the projection's scripts: apply, switch, hgetall_many, and the projectors' lease."""

from __future__ import annotations

from typing import Any, Literal, NamedTuple

from orchestrator.storage.codec import text
from orchestrator.storage.connections import RedisClient
from orchestrator.storage.keys import DEFAULT_PROJECTION, Keys
from orchestrator.storage.scripts import ScriptCall


class ProjectionVerdict(NamedTuple):
    """apply.lua's verdict: 'ok', 'moved' (`position` is where another projector moved it) or
    'switched' (a rebuild made another projection live); switch.lua's: 'ok' or 'behind'
    (`position` is the log's tip the new projection has not reached)."""

    outcome: str
    position: str = ""


def _verdict(reply: list[Any]) -> ProjectionVerdict:
    return ProjectionVerdict(text(reply[0]), text(reply[1]) if len(reply) > 1 else "")


class ProjectionScripts:
    """The projection's scripts on one client. Every method raises redis errors."""

    def __init__(self, redis: RedisClient) -> None:
        self._apply = ScriptCall(redis, "apply", with_lib=False)
        self._switch = ScriptCall(redis, "switch", with_lib=False)
        self._hgetall_many = ScriptCall(redis, "hgetall_many", with_lib=False)
        self._lease = ScriptCall(redis, "lease", with_lib=False)

    async def apply(
        self, *, keys: Keys, op_keys: list[str], expected: str | None, position: str, live: bool, ops: bytes
    ) -> ProjectionVerdict:
        """apply.lua: write the packed `ops` (on `op_keys`, which the ops name by their index in
        KEYS: the first is 3, after the position and the pointer) and move the projection's
        position from `expected` (None: none yet) to `position`; `live`: also check that
        `keys.projection_name` is still the live one, which only `keys` of the partition that holds
        the pointer (`Layout.home`) can ask (every key of one call shares the slot of `keys`)."""
        reply = await self._apply(
            keys=[keys.projection_position, keys.live_projection, *op_keys],
            args=[expected or "", position, keys.projection_name if live else "", DEFAULT_PROJECTION, ops],
        )
        return _verdict(reply)

    async def switch(self, *, keys: Keys, new: Keys) -> ProjectionVerdict:
        """switch.lua: make `new.projection_name` the live projection if it has folded the whole log."""
        reply = await self._switch(
            keys=[keys.live_projection, new.projection_position, keys.events], args=[new.projection_name]
        )
        return _verdict(reply)

    async def hgetall_many(self, *, hashes: list[str]) -> list[list[bytes]]:
        """Each hash's fields and values, flat (`[f1, v1, f2, v2, ...]`; [] for a missing key),
        in the order of `hashes`."""
        return list(await self._hgetall_many(keys=hashes, args=[]))

    async def lease(self, *, keys: Keys, op: Literal["take", "renew", "release"], name: str, lease_ms: int) -> bool:
        """lease.lua on the partition `keys`: 'take' a free lease (or renew one `name` holds),
        'renew' one it holds, or 'release' it. True when `name` holds the lease afterwards
        ('release': when it let it go)."""
        return bool(await self._lease(keys=[keys.projector_lease], args=[op, name, lease_ms]))
