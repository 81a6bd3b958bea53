"""A task's history as users read it: its events, and its attempts (who ran each, how it ended)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import msgspec

from orchestrator.domain.events import Cancelled, Completed, Failed, Released, RetryScheduled, Started, StoredEvent
from orchestrator.domain.ids import iso_ms


def attempt_history(events: Iterable[StoredEvent]) -> list[dict[str, Any]]:
    """One entry per attempt: attempt, worker, started_at, isolated (whether it ran in a process
    of its own), and its outcome (completed, failed, retry_scheduled, released, cancelled, or
    `lost` when its worker died under it: a later attempt took it over, or the task failed with
    `WorkerLost`) with the error when there was one."""
    attempts: list[dict[str, Any]] = []
    for stored in events:
        event = stored.event
        if isinstance(event, Started):
            if attempts and attempts[-1]["outcome"] is None:
                attempts[-1]["outcome"] = "lost"
            attempts.append(
                {
                    "attempt": event.attempt,
                    "worker": event.worker,
                    "started_at": iso_ms(stored.at_ms),
                    "isolated": event.isolated,
                    "outcome": None,
                    "error": None,
                }
            )
        elif (
            attempts
            and attempts[-1]["outcome"] is None
            and isinstance(event, (Completed, Failed, RetryScheduled, Released, Cancelled))
        ):
            lost = isinstance(event, Failed) and event.error_type == "WorkerLost"
            attempts[-1]["outcome"] = "lost" if lost else type(event).__struct_config__.tag
            attempts[-1]["error"] = getattr(event, "error", None)
    return attempts


def event_view(stored: StoredEvent) -> dict[str, Any]:
    """One event as the API and `backstream audit --json` show it."""
    event = stored.event
    data = msgspec.to_builtins(event)
    for name in ("type", "task_id", "seq", "attempt"):
        data.pop(name, None)
    return {
        "id": stored.id,
        "type": type(event).__struct_config__.tag,
        "time": iso_ms(stored.at_ms),
        "task_id": event.task_id,
        "seq": event.seq,
        "attempt": event.attempt,
        "data": data,
    }
