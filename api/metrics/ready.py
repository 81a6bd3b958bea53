"""GET /readyz: is the read side keeping up?"""

from __future__ import annotations

import msgspec
import redis.exceptions
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from api.context import AppContext, context
from api.live.feed import running_feed


class Readiness(msgspec.Struct, frozen=True):
    """What /readyz found. `reasons` is empty when ready; each names a check and what is wrong."""

    reasons: list[dict[str, str]]
    projector_lag_events: int  # log entries not yet projected, counted up to 100
    projector_lag_s: float  # age of the oldest of them, by Redis's clock
    projectors_alive: int
    workers_alive: int


async def readiness(ctx: AppContext) -> Readiness:
    """Is the read side keeping up? Not when no projector has beaten within the lease
    (stopped, or never started), nor when the oldest log entry not yet projected is older
    than `ready_max_lag_s` (stuck or far behind). Raises redis errors."""
    settings = ctx.settings
    found = await ctx.projection.readiness()
    projectors = found.projectors
    lag_s = max(projectors.now_ms - found.oldest_ms, 0) / 1000 if found.oldest_ms is not None else 0.0
    reasons = []
    alive = projectors.alive(settings.lease_ms)
    if not alive:
        ages = projectors.ages_s.values()
        last = f"the last one {min(ages):.0f} s ago" if ages else "none ever"
        reasons.append(
            {"check": "projector", "message": f"no projector has sent a heartbeat within the lease ({last})"}
        )
    if lag_s > settings.ready_max_lag_s:
        reasons.append(
            {
                "check": "projector_lag",
                "message": f"the oldest event not yet projected is {lag_s:.1f} s old, over the "
                f"{settings.ready_max_lag_s:g} s allowed (BACKSTREAM_READY_MAX_LAG_S)",
            }
        )
    return Readiness(
        reasons=reasons,
        projector_lag_events=found.behind,
        projector_lag_s=lag_s,
        projectors_alive=len(alive),
        workers_alive=len(found.workers.alive(settings.lease_ms)),
    )


async def readyz(request: Request) -> Response:
    """Ready to take traffic: Redis answers, the server is not shutting down, and a projector
    is alive and keeping up (so lists and the dashboard show what was written). The body says
    why when not. (/healthz only says the process and Redis are up.)"""
    ctx = context(request)
    feed = running_feed(request.app)
    if feed is not None and feed.closed:
        return JSONResponse({"status": "shutting_down"}, status_code=503, headers={"Retry-After": "2"})
    try:
        found = await readiness(ctx)
    except (redis.exceptions.RedisError, OSError) as e:  # any failure to answer means not ready
        return JSONResponse({"status": "unavailable", "error": str(e)}, status_code=503, headers={"Retry-After": "2"})
    body = {"status": "not_ready" if found.reasons else "ready", **msgspec.to_builtins(found)}
    if found.reasons:
        return JSONResponse(body, status_code=503, headers={"Retry-After": "2"})
    return JSONResponse(body)
