"""The compare page (`/compare?ids=A&ids=B`): two to four completed runs side by side."""

from __future__ import annotations

import uuid

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from api.context import context
from api.dashboard.format import params_text
from api.dashboard.render import page
from orchestrator.domain.status import Status

# Compare draws two to four runs: more curves on one chart stop being readable.
COMPARE_MIN, COMPARE_MAX = 2, 4
# Recent completed runs the picker offers.
PICKER_SIZE = 100


class Run(msgspec.Struct, frozen=True):
    """A completed run in the picker: its id, a label (strategy, symbol, short id), its
    parameters as text, when it finished (ISO 8601 UTC), and whether it is picked."""

    id: str
    label: str
    params: str
    finished: str | None
    checked: bool


def chosen_ids(values: list[str]) -> list[str]:
    """The distinct task ids in `ids` values (repeated, or comma-separated), canonical, in the
    order given; anything that is not a UUID is left out."""
    chosen: list[str] = []
    for raw in values:
        for part in raw.split(","):
            try:
                task_id = str(uuid.UUID(part.strip()))
            except ValueError:
                continue
            if task_id not in chosen:
                chosen.append(task_id)
    return chosen


def problem_with(chosen: list[str]) -> str:
    """Why `chosen` cannot be compared ("" when it can, or when nothing is picked yet)."""
    if len(chosen) > COMPARE_MAX:
        return f"Pick {COMPARE_MIN} to {COMPARE_MAX} runs to compare; {len(chosen)} were picked."
    if len(chosen) == 1:
        return "Pick at least one more run to compare it with."
    return ""


async def compare_page(request: Request) -> Response:
    """`GET /compare?ids=A&ids=B`: two to four completed runs' equity curves and metrics side by
    side (drawn by results.js from each run's GET …/result), and a picker of recent completed runs."""
    chosen = chosen_ids(request.query_params.getlist("ids"))
    recent, _ = await context(request).projection.list_tasks(status=Status.COMPLETED, limit=PICKER_SIZE, cursor=None)
    problem = problem_with(chosen)
    runs = [
        Run(
            id=t.task_id,
            label=f"{t.spec.strategy} {t.spec.symbol} {t.task_id[:8]}",
            params=", ".join(f"{k}={params_text(v)}" for k, v in t.spec.params.items()),
            finished=t.finished_at,
            checked=t.task_id in chosen,
        )
        for t in recent
    ]
    return page(
        request,
        "compare.html",
        title="Backstream: compare",
        name="compare",
        runs=runs,
        chosen=chosen if not problem else [],
        problem=problem,
        least=COMPARE_MIN,
        most=COMPARE_MAX,
    )
