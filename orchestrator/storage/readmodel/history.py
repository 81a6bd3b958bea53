"""A task's audit trail as the read model gives it: its state, the events the log still holds,
and, once retention trimmed the first of them, where they went."""

from __future__ import annotations

import msgspec

from orchestrator.domain.errors import BackstreamError
from orchestrator.domain.events import StoredEvent
from orchestrator.domain.ids import id_order, iso_ms
from orchestrator.domain.state import TaskState
from orchestrator.domain.timeline import state_as_of
from orchestrator.storage.codec import text
from orchestrator.storage.connections import RedisClient
from orchestrator.storage.keys import Keys


class Archived(msgspec.Struct, frozen=True):
    """Where the first events of a task went once retention trimmed them from the log."""

    # How many of the task's first events the log no longer holds.
    events: int
    # Retention trimmed the log below this stream id (None: no retention run was recorded).
    log_starts_at: str | None
    # `backstream export` had written the log up to this id to an archive file by then: the
    # trimmed events are there (`backstream replay --archive FILE`, or the file itself).
    archived_through: str | None
    # When that retention run happened, ISO 8601 UTC.
    trimmed_at: str | None

    def describe(self) -> str:
        """One sentence for people: what is missing and where it is."""
        where = (
            f"an archive written by `backstream export` (through {self.archived_through})"
            if self.archived_through
            else "no recorded archive"
        )
        when = f" on {self.trimmed_at}" if self.trimmed_at else ""
        below = f" below {self.log_starts_at}" if self.log_starts_at else ""
        trimmed = f"the first {self.events} events were trimmed from the log{below} by retention{when}"
        return f"{trimmed}; they are in {where}"


async def read_archived(redis: RedisClient, keys: Keys, events: int) -> Archived:
    """An Archived for a task missing its first `events` events, from the mark the last
    retention run left in `{bs}:retention` (its fields None when no run was recorded)."""
    mark = {text(k): text(v) for k, v in (await redis.hgetall(keys.retention)).items()}
    return Archived(
        events=events,
        log_starts_at=mark.get("log_starts_at"),
        archived_through=mark.get("archived_through"),
        trimmed_at=iso_ms(int(mark["at_ms"])) if "at_ms" in mark else None,
    )


class HistoryArchived(BackstreamError):
    """A question about a task's past that only its trimmed events could answer."""

    def __init__(self, task_id: str, archived: Archived) -> None:
        super().__init__(f"task {task_id}: {archived.describe()}")
        self.archived = archived


class TaskHistory(msgspec.Struct, frozen=True):
    """A task's current state and the events the log still holds (see ReadModel.history)."""

    state: TaskState
    events: list[StoredEvent]
    archived: Archived | None = None

    def as_of(self, until: tuple[int, int]) -> TaskState | None:
        """The state after every event at or before `until` (as (ms, seq)); None if the task did
        not exist yet. Raises HistoryArchived when that needs events retention trimmed."""
        if id_order(self.state.last_event_id) <= until:
            return self.state
        if self.archived is not None:
            raise HistoryArchived(self.state.task_id, self.archived)
        return state_as_of(self.events, until)
