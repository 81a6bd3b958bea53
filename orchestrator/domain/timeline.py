"""Time travel: a task's state as of a stream id or a moment, folded from its events."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable

from orchestrator.domain.events import StoredEvent
from orchestrator.domain.ids import ID_PART_MAX, STREAM_ID, id_order
from orchestrator.domain.state import TaskState, evolve


def as_of_id(value: str) -> tuple[int, int]:
    """`1700000000000-5` (a stream id), `1700000000000` (ms: the whole millisecond), or an ISO
    8601 time (naive means UTC) -> the last stream id position it covers, as (ms, seq).
    Raises ValueError with a message fit for a user."""
    match = STREAM_ID.fullmatch(value)
    if match:
        ms, seq = int(match[1]), int(match[2]) if match[2] is not None else ID_PART_MAX
        if ms > ID_PART_MAX or seq > ID_PART_MAX:
            raise ValueError(f"a stream id's parts are at most {ID_PART_MAX}")
        return ms, seq
    try:
        moment = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError("must be a stream id (1700000000000-0) or an ISO 8601 time") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    return int(moment.timestamp() * 1000), ID_PART_MAX


def state_as_of(events: Iterable[StoredEvent], until: tuple[int, int]) -> TaskState | None:
    """The state after every event at or before `until`; None if the task did not exist yet."""
    state = None
    for stored in events:
        if id_order(stored.id) > until:
            break
        state = evolve(state, stored)
    return state
