"""Progress coalescing for live streams: at most one progress event per task per interval."""

from __future__ import annotations

from orchestrator.domain.events import Cancelled, Completed, Failed, Progress, StoredEvent
from orchestrator.domain.ids import id_order

TERMINAL = (Completed, Failed, Cancelled)


class Coalescer:
    """Holds back progress events so each task gets at most one per `interval_s` (the latest
    wins); any other event of the task supersedes its held progress. Pure: the caller passes
    the time (seconds, any monotonic clock)."""

    def __init__(self, interval_s: float) -> None:
        self.interval_s = interval_s
        self._sent_at: dict[str, float] = {}
        self._held: dict[str, StoredEvent] = {}

    def offer(self, stored: StoredEvent, now: float) -> list[StoredEvent]:
        """The events to send now for this one."""
        task_id = stored.event.task_id
        if not isinstance(stored.event, Progress):
            self._held.pop(task_id, None)
            if isinstance(stored.event, TERMINAL):
                self._sent_at.pop(task_id, None)
            return [stored]
        if now - self._sent_at.get(task_id, float("-inf")) >= self.interval_s:
            self._held.pop(task_id, None)
            self._sent_at[task_id] = now
            return [stored]
        self._held[task_id] = stored
        return []

    def due(self, now: float) -> list[StoredEvent]:
        """Held progress events whose interval has passed, in log order."""
        ready = [t for t in self._held if now - self._sent_at.get(t, float("-inf")) >= self.interval_s]
        out = sorted((self._held.pop(t) for t in ready), key=lambda s: id_order(s.id))
        for stored in out:
            self._sent_at[stored.event.task_id] = now
        return out

    def next_due(self) -> float | None:
        """When the earliest held event is due, or None."""
        if not self._held:
            return None
        return min(self._sent_at.get(t, float("-inf")) for t in self._held) + self.interval_s
