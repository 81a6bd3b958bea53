"""Reads of a task's events, its dead letters and its full result. The commands that write
are in commands.py (the API's) and workqueue.py (the worker's)."""

from __future__ import annotations

from typing import Any

from orchestrator.domain.events import StoredEvent
from orchestrator.domain.ids import FIRST_ID, id_order
from orchestrator.storage.codec import decode_entry, decode_json, text
from orchestrator.storage.keys import Keys


class EventStore:
    """Reads a task's events back from the log, the dead letters and full results."""

    def __init__(self, redis: Any, keys: Keys) -> None:
        self.redis = redis
        self.keys = keys

    # --- reads of the log ---

    async def task_events(self, task_id: str, *, after_seq: int = 0) -> list[StoredEvent]:
        """A task's events in order (those with seq > after_seq), through its log index."""
        ids = await self.redis.lrange(self.keys.task_log(task_id), after_seq, -1)
        if not ids:
            return []
        async with self.redis.pipeline(transaction=False) as pipe:
            for entry_id in ids:
                pipe.xrange(self.keys.events, entry_id, entry_id)
            replies = await pipe.execute()
        return [decode_entry(*entries[0]) for entries in replies if entries]

    async def dead_letters(self, *, limit: int, before: str | None) -> list[dict[str, Any]]:
        """Dead letters newest first (ids before `before` when given)."""
        if before is not None and id_order(before) == FIRST_ID:
            return []
        entries = await self.redis.xrevrange(self.keys.dead_letters, f"({before}" if before else "+", "-", count=limit)
        letters = []
        for entry_id, fields in entries:
            get = {text(k): text(v) for k, v in fields.items()}
            letters.append(
                {
                    "id": text(entry_id),
                    "task_id": get["task_id"],
                    "attempt": int(get["attempt"]),
                    "reason": get["reason"],
                    "failed_event": get["failed_event"],
                    "history": decode_json(get.get("history", "[]")),
                }
            )
        return letters

    async def result(self, task_id: str) -> bytes | None:
        value = await self.redis.get(self.keys.result(task_id))
        return bytes(value) if value is not None else None
