"""Dead letters (tasks failed for good, `{bs}:dead`, one stream per partition) as the API lists
them, newest first over every partition."""

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


async def dead_letters(
    redis: RedisClient, partitions: list[Keys], *, limit: int, before: str | None
) -> list[dict[str, Any]]:
    """Up to `limit` dead letters newest first over the `partitions` (ids before the stream id
    `before` when given), as `dead_letter` shapes them. Raises redis errors.

    Each partition's stream is read from `before` (one pipelined XREVRANGE each) and the letters
    merged by id. Two partitions may hold letters of the same id: a page never ends inside such a
    group (it takes the whole group, up to one letter per partition more than `limit`), so the id
    of its last letter, as the next `before`, is an exact cursor."""
    if before is not None and id_order(before) == FIRST_ID:
        return []
    async with redis.pipeline(transaction=False) as pipe:
        for keys in partitions:
            pipe.xrevrange(keys.dead_letters, f"({before}" if before else "+", "-", count=limit)
        replies = await pipe.execute()
    found = [(text(i), f) for reply in replies for i, f in stream_entries(reply)]
    found.sort(key=lambda entry: id_order(entry[0]), reverse=True)  # stable: partition 0 first
    page = found[:limit]
    if page:
        page += [entry for entry in found[limit:] if entry[0] == page[-1][0]]
    return [dead_letter(entry_id, fields) for entry_id, fields in page]
