"""Time travel: a task's state as of a stream id or a moment, folded from its events."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable

from orchestrator.events import StoredEvent
from orchestrator.state import TaskState, evolve

_STREAM_ID = re.compile(r"([0-9]{1,20})(?:-([0-9]{1,20}))?")
_MAX_SEQ = 18446744073709551615


def as_of_id(value: str) -> tuple[int, int]:
    """`1700000000000-5` (a stream id), `1700000000000` (ms: the whole millisecond), or an ISO
    8601 time (naive means UTC) -> the last stream id position it covers, as (ms, seq).
    Raises ValueError with a message fit for a user."""
    match = _STREAM_ID.fullmatch(value)
    if match:
        ms, seq = int(match[1]), int(match[2]) if match[2] is not None else _MAX_SEQ
        if ms > _MAX_SEQ or seq > _MAX_SEQ:
            raise ValueError("a stream id's parts are at most 18446744073709551615")
        return ms, seq
    try:
        moment = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError("must be a stream id (1700000000000-0) or an ISO 8601 time") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    return int(moment.timestamp() * 1000), _MAX_SEQ


def state_as_of(events: Iterable[StoredEvent], until: tuple[int, int]) -> TaskState | None:
    """The state after every event at or before `until`; None if the task did not exist yet."""
    state = None
    for stored in events:
        ms, _, seq = stored.id.partition("-")
        if (int(ms), int(seq)) > until:
            break
        state = evolve(state, stored)
    return state
