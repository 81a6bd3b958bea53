"""The live-projection pointer: which projection the API serves, and every projection's position.

The one place that reads `{bs}:projection` (written by `switch.lua` when a rebuild goes live):
the read model, the projector, replay and retention all ask here.
"""

from __future__ import annotations

from orchestrator.storage.codec import text
from orchestrator.storage.connections import RedisClient
from orchestrator.storage.keys import DEFAULT_PROJECTION, Keys
from orchestrator.storage.partitions import Layout

# How long a reader trusts its knowledge of which projection is live, in seconds. A rebuild keeps
# the old projection intact for longer than this after switching, so a reader a moment behind
# still sees a whole projection.
POINTER_TTL_S = 1.0

# What a projection's position in a partition reads once a rebuild replaced it: never a stream id,
# so `apply.lua` refuses ('moved') every later store into it, even one folded from no position.
# It expires after RETIRED_KEEP_MS (a store in flight for that long is not waited for).
RETIRED = "retired"
RETIRED_KEEP_MS = 24 * 3600 * 1000


async def live_keys(redis: RedisClient, keys: Keys) -> Keys:
    """`keys` pointing at the projection the API serves now (DEFAULT_PROJECTION until a rebuild
    switched the pointer). One GET; raises redis errors."""
    name = await redis.get(keys.live_projection)
    return keys.with_projection(text(name) if name else DEFAULT_PROJECTION)


async def live_layout(redis: RedisClient, layout: Layout) -> Layout:
    """`layout` pointing at the projection the API serves now, in every partition: the pointer is
    one key, in partition 0 (`Layout.home`). One GET; raises redis errors."""
    name = await redis.get(layout.home.live_projection)
    return layout.with_projection(text(name) if name else DEFAULT_PROJECTION)


async def projection_positions(redis: RedisClient, keys: Keys, home: Keys | None = None) -> dict[str, str | None]:
    """{projection name: the id of the last event of partition `keys` folded into it (None:
    nothing yet)} for the live projection and every one registered in `{bs}:projections` (being
    rebuilt), sorted by name. The names are the deployment's, read in `home` (partition 0;
    default `keys`). Raises redis errors."""
    home = home or keys
    names = {text(n) for n in await redis.smembers(home.projections)}
    names.add((await live_keys(redis, home)).projection_name)
    positions: dict[str, str | None] = {}
    for name in sorted(names):
        position = await redis.get(keys.with_projection(name).projection_position)
        positions[name] = text(position) if position else None
    return positions
