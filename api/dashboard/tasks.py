"""The task list (`/`) and a task's page (`/tasks/{id}`), both read from the read model."""

from __future__ import annotations

import uuid
from typing import Any

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from api.context import AppContext, context
from api.dashboard.audit import EVENT_PAGE, read_trail
from api.dashboard.format import params_text
from api.dashboard.jobs import job_values
from api.dashboard.render import page
from orchestrator.domain.state import TaskState
from orchestrator.domain.status import Status
from orchestrator.storage.readmodel import Archived

# Rows of the task list; the page says it shows the newest PAGE_SIZE.
PAGE_SIZE = 100
# The first event of a task (seq counts from 1).
FIRST_SEQ = 1


async def tasks_page(request: Request) -> Response:
    """`GET /` (`?status=` one of Status filters): the newest PAGE_SIZE tasks; the page follows
    the log live from the projection's position (rows ignore events they already include)."""
    ctx = context(request)
    raw = request.query_params.get("status")
    status = Status(raw) if raw in set(Status) else None
    # The positions first (a log cursor: one per partition): the stream replays from them, and
    # rows ignore events they already include.
    position = str(await ctx.projection.positions())
    tasks, _ = await ctx.projection.list_tasks(status=status, limit=PAGE_SIZE, cursor=None)
    return page(
        request,
        "tasks.html",
        title="Backstream: tasks",
        name="tasks",
        data={"since": position, "filter": status or ""},
        tasks=tasks,
        status=status,
        statuses=list(Status),
        page_size=PAGE_SIZE,
    )


def _summary(state: TaskState) -> list[tuple[str, Any]]:
    rows: list[tuple[str, Any]] = [
        ("status", state.status),
        ("attempt", state.attempt),
        ("worker", state.worker),
        ("created", state.created_at),
        ("started", state.started_at),
        ("finished", state.finished_at),
        ("submitted by", state.submitted_by),
    ]
    if state.status == Status.CANCELLED:
        rows.append(("cancelled by", state.cancelled_by))
    return rows


def _parameters(state: TaskState) -> list[tuple[str, Any]]:
    spec = msgspec.to_builtins(state.spec)
    params = spec.pop("params", {})
    return [(f"params.{k}", params_text(v)) for k, v in params.items()] + list(spec.items())


async def _archived(ctx: AppContext, task_id: str, first_seq: int) -> Archived | None:
    """Where the task's first events went when the log no longer holds them (they start after
    seq 1), as the read model records it; None when the log holds them all."""
    if first_seq <= FIRST_SEQ:
        return None
    history = await ctx.projection.history(task_id)
    return history.archived if history is not None else None


async def task_page(request: Request) -> Response:
    """`GET /tasks/{id}`: the task's state as GET /api/backtests/tasks/{id} answers it (the read
    model, read-your-writes), its audit trail through the state's seq from the read model's
    event pages, and where trimmed history went; a job's chunks and best, a chunk's job
    (api/dashboard/jobs.py). 404 page for an id that names no task."""
    ctx = context(request)
    raw = request.path_params["task_id"]
    try:
        task_id = str(uuid.UUID(raw))
    except ValueError:
        task_id = ""
    state = await ctx.projection.current(task_id) if task_id else None
    if state is None:
        return page(request, "no_task.html", title="Backstream: no such task", name="task", status_code=404, raw=raw)
    pages = ctx.projection.task_event_pages(task_id, "0-0", EVENT_PAGE)
    trail = await read_trail(pages, through_seq=state.seq)
    first_seq = trail.first_seq if trail.first_seq is not None else state.seq + 1
    return page(
        request,
        "task.html",
        title=f"Backstream: task {task_id[:8]}",
        name="task",
        data={"task": task_id, "since": state.last_event_id, "status": state.status, "seq": str(state.seq)},
        state=state,
        completed=state.status == Status.COMPLETED,
        summary=_summary(state),
        parameters=_parameters(state),
        metrics=(state.result or {}).get("metrics") or {},
        trail=trail,
        archived=await _archived(ctx, task_id, first_seq),
        pct=f"{min(max(state.progress, 0.0), 1.0):.0%}",
        attempt=f"attempt {state.attempt}" if state.attempt else "no attempt yet",
        before=trail.cancelled_from,
        **await job_values(request, ctx.projection, state),
    )
