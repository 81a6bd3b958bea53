"""A task's attempts as the log tells them: who ran each one and how it ended."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from orchestrator.codec import iso_ms
from orchestrator.events import Cancelled, Completed, Failed, Released, RetryScheduled, Started, StoredEvent


def attempt_history(events: Iterable[StoredEvent]) -> list[dict[str, Any]]:
    """One entry per attempt: attempt, worker, started_at, and its outcome (completed, failed,
    retry_scheduled, released, cancelled, or `lost` when a later attempt took it over) with the
    error when there was one."""
    attempts: list[dict[str, Any]] = []
    for stored in events:
        event = stored.event
        if isinstance(event, Started):
            if attempts and attempts[-1]["outcome"] is None:
                attempts[-1]["outcome"] = "lost"
            attempts.append({"attempt": event.attempt, "worker": event.worker,
                             "started_at": iso_ms(stored.at_ms), "outcome": None, "error": None})
        elif attempts and attempts[-1]["outcome"] is None and isinstance(
            event, (Completed, Failed, RetryScheduled, Released, Cancelled)
        ):
            attempts[-1]["outcome"] = type(event).__struct_config__.tag
            attempts[-1]["error"] = getattr(event, "error", None)
    return attempts
