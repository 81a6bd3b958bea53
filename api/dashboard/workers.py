"""The workers page (`/workers`): who is alive by heartbeat, what each runs, the consumer groups,
the projector's lag and the dead letters. Refreshes itself every few seconds."""

from __future__ import annotations

import json
from typing import Any

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from api.context import context
from api.dashboard.render import page
from api.metrics import consumer_groups, projector_lag
from orchestrator.domain.state import TaskState
from orchestrator.domain.status import Status
from orchestrator.storage.codec import text
from orchestrator.storage.keys import WORKER_GROUP
from orchestrator.storage.presence import read_beats

# Running tasks the page reads (more than any fleet runs at once).
RUNNING_LIMIT = 500
# Seconds between the page's own refreshes.
REFRESH_S = 3


class WorkerRow(msgspec.Struct, frozen=True):
    """One worker: `alive` when its heartbeat is younger than the lease, its pending work items,
    when it last beat (`1.2 s ago`, or `never`), the tasks it runs, and the strategies it can run
    (`?` when it never said)."""

    name: str
    alive: bool
    pending: int
    beat: str
    tasks: list[TaskState]
    strategies: str


def _worker_rows(
    members: dict[str, dict[str, Any]],
    ages_s: dict[str, float],
    running: list[TaskState],
    can_run: dict[str, str],
    lease_ms: int,
) -> list[WorkerRow]:
    by_worker: dict[str, list[TaskState]] = {}
    for t in running:
        by_worker.setdefault(t.worker or "?", []).append(t)
    rows = []
    for name in sorted(members.keys() | ages_s.keys()):
        age = ages_s.get(name)
        rows.append(
            WorkerRow(
                name=name,
                alive=age is not None and age * 1000 < lease_ms,
                pending=members.get(name, {"pending": 0})["pending"],
                beat=f"{age:.1f} s ago" if age is not None else "never",
                tasks=by_worker.pop(name, []),
                strategies=", ".join(json.loads(can_run[name])) if name in can_run else "?",
            )
        )
    return rows


async def workers_page(request: Request) -> Response:
    """`GET /workers`: a worker is alive while its own heartbeat (sent on a timer, busy or idle)
    is younger than the lease."""
    ctx = context(request)
    redis, keys = ctx.store.redis, ctx.store.keys
    groups, consumers = await consumer_groups(redis, keys.work)
    running, _ = await ctx.projection.list_tasks(status=Status.RUNNING, limit=RUNNING_LIMIT, cursor=None)
    position = await ctx.projection.position()
    lag, lag_s = await projector_lag(redis, keys.events, position)
    dead = await redis.xlen(keys.dead_letters)
    can_run = {text(k): text(v) for k, v in (await redis.hgetall(keys.worker_strategies)).items()}
    beats = await read_beats(redis, keys.worker_heartbeats)
    members = {text(c["name"]): c for c in consumers.get(WORKER_GROUP, [])}
    return page(
        request,
        "workers.html",
        title="Backstream: workers",
        name="workers",
        refresh_s=REFRESH_S,
        lease_s=f"{ctx.settings.lease_ms / 1000:g}",
        workers=_worker_rows(members, beats.ages_s, running, can_run, ctx.settings.lease_ms),
        work_stream=keys.work,
        groups=[{k: text(v) if isinstance(v, bytes) else v for k, v in g.items()} for g in groups],
        projector=[
            ("projector position", position),
            ("log entries not yet projected", lag),
            ("projector behind by (s)", lag_s),
            ("dead letters", dead),
        ],
    )
