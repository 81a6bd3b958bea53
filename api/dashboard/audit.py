"""A task's audit trail as the task page shows it: one row per event, a run of consecutive
progress events of one attempt folded into one row, read page by page from the read model."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import msgspec

from api.dashboard.format import event_detail, progress_run_detail
from orchestrator.domain.events import StoredEvent
from orchestrator.domain.history import event_view

# How many of a task's events one read of the log index asks for.
EVENT_PAGE = 500


class AuditRow(msgspec.Struct, frozen=True):
    """One row: the stream `id` of its (last) event, `seq` (`3` or a run's `3–9`), `time` (ISO
    8601 UTC; a run's `first – last time of day`), the event `type` (the badge's class), `label`
    (the badge's text), `attempt`, `detail` (the event's fields as text), and whether it is a
    `run` of progress events."""

    id: str
    seq: str
    time: str
    type: str
    label: str
    attempt: int
    detail: str
    run: bool = False


class AuditTrail(msgspec.Struct):
    """The rows, the seq of the first event the log still holds (None: it holds none), and the
    status the task's last cancellation found it in (`previous_status`; None without one)."""

    rows: list[AuditRow] = []
    first_seq: int | None = None
    cancelled_from: str | None = None


def _row(event: dict[str, Any]) -> AuditRow:
    kind = event["type"]
    return AuditRow(event["id"], str(event["seq"]), event["time"], kind, kind, event["attempt"], event_detail(event))


def _run_row(run: list[dict[str, Any]]) -> AuditRow:
    if len(run) == 1:
        return _row(run[0])
    first, last = run[0], run[-1]
    return AuditRow(
        id=last["id"],
        seq=f"{first['seq']}–{last['seq']}",
        time=f"{first['time']} – {last['time'][11:]}",
        type="progress",
        label=f"progress ×{len(run)}",
        attempt=last["attempt"],
        detail=progress_run_detail(run),
        run=True,
    )


async def read_trail(pages: AsyncIterator[list[StoredEvent]], *, through_seq: int) -> AuditTrail:
    """The trail of the events in `pages` (a task's, in order) up to `through_seq`, the seq of the
    state the page shows, so trail and state agree; later events reach the page live. Holds one
    page of events and the rows in memory, however long the task's history."""
    trail = AuditTrail()
    run: list[dict[str, Any]] = []
    async for page in pages:
        for stored in page:
            if stored.event.seq > through_seq:
                continue
            event = event_view(stored)
            if trail.first_seq is None:
                trail.first_seq = event["seq"]
            if event["type"] == "cancelled":
                trail.cancelled_from = event["data"].get("previous_status")
            if event["type"] == "progress" and (not run or run[-1]["attempt"] == event["attempt"]):
                run.append(event)
                continue
            if run:
                trail.rows.append(_run_row(run))
            run = [event] if event["type"] == "progress" else []
            if not run:
                trail.rows.append(_row(event))
    if run:
        trail.rows.append(_run_row(run))
    return trail
