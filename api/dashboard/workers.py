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
from orchestrator.domain.state import TaskState
from orchestrator.domain.status import Status
from orchestrator.storage.codec import text
from orchestrator.storage.keys import WORKER_GROUP

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
    keys = ctx.projection.keys
    running, _ = await ctx.projection.list_tasks(status=Status.RUNNING, limit=RUNNING_LIMIT, cursor=None)
    position = str(await ctx.projection.positions())
    fleet = await ctx.projection.workers()
    members = {text(c["name"]): c for c in fleet.consumers.get(WORKER_GROUP, [])}
    return page(
        request,
        "workers.html",
        title="Backstream: workers",
        name="workers",
        refresh_s=REFRESH_S,
        lease_s=f"{ctx.settings.lease_ms / 1000:g}",
        workers=_worker_rows(members, fleet.beats.ages_s, running, fleet.strategies, ctx.settings.lease_ms),
        work_stream=keys.work,
        groups=[{k: text(v) if isinstance(v, bytes) else v for k, v in g.items()} for g in fleet.groups],
        projector=[
            ("projector position", position),
            ("log entries not yet projected", fleet.lag_events),
            ("projector behind by (s)", fleet.lag_seconds),
            ("dead letters", fleet.dead_letters),
        ],
    )
