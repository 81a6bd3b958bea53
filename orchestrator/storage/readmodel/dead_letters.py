"""Dead letters (tasks failed for good, `{bs}:dead`) as the API lists them."""

from __future__ import annotations

from typing import Any

from orchestrator.domain.ids import FIRST_ID, id_order
from orchestrator.storage.codec import decode_json, stream_entries, text
from orchestrator.storage.connections import RedisClient
from orchestrator.storage.keys import Keys


def dead_letter(entry_id: Any, fields: dict[Any, Any]) -> dict[str, Any]:
    """One entry of the dead-letter stream as {"id", "task_id", "attempt" (int), "reason",
    "failed_event" (the `failed` event's stream id), "history" (the attempts, decoded JSON)}.
    Raises KeyError on an entry missing a field the scripts always write."""
    get = {text(k): text(v) for k, v in fields.items()}
    return {
        "id": text(entry_id),
        "task_id": get["task_id"],
        "attempt": int(get["attempt"]),
        "reason": get["reason"],
        "failed_event": get["failed_event"],
        "history": decode_json(get.get("history", "[]")),
    }


async def dead_letters(redis: RedisClient, keys: Keys, *, limit: int, before: str | None) -> list[dict[str, Any]]:
    """Up to `limit` dead letters newest first (ids before the stream id `before` when given), as
    `dead_letter` shapes them. Raises redis errors."""
    if before is not None and id_order(before) == FIRST_ID:
        return []
    entries = stream_entries(
        await redis.xrevrange(keys.dead_letters, f"({before}" if before else "+", "-", count=limit)
    )
    return [dead_letter(entry_id, fields) for entry_id, fields in entries]
