"""Reads of the event log: the whole stream in pages (SSE catch-up, metrics), a blocking tail (the
live feed), raw batches (the projector), and one task's events through its log index.

Undecodable entries (written by a newer Backstream) are never fatal to a lenient reader: a
`LogPage` carries them apart, with why, for the caller to log under its own name.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, cast

import msgspec

from orchestrator.domain.errors import EventDecodeError
from orchestrator.domain.events import StoredEvent
from orchestrator.domain.ids import LAST_ID, id_order
from orchestrator.storage.codec import decode_entries, decode_entry, stream_entries, text
from orchestrator.storage.connections import RedisClient, routed_to, unparsed
from orchestrator.storage.keys import Keys, event_field
from orchestrator.storage.readmodel.cursor import START, LogCursor


class LogPage(msgspec.Struct, frozen=True):
    """Consecutive entries of the log: the id of the last one (a position to read on from), the
    decodable ones as events in log order, and the others as (entry id, why)."""

    last_id: str
    events: list[StoredEvent]
    undecodable: list[tuple[str, str]] = []


def decode_page(entries: list[Any]) -> LogPage:
    """A non-empty XRANGE/XREAD reply's entries `[(id, {field: value})]` as a LogPage."""
    events: list[StoredEvent] = []
    undecodable: list[tuple[str, str]] = []
    for entry_id, fields in entries:
        try:
            events.append(decode_entry(entry_id, fields))
        except EventDecodeError as e:
            undecodable.append((text(entry_id), str(e)))
    return LogPage(last_id=text(entries[-1][0]), events=events, undecodable=undecodable)


async def latest_id(redis: RedisClient, stream: str) -> str | None:
    """The id of the newest entry of `stream` (None: empty or missing). Raises redis errors."""
    latest = await redis.xrevrange(stream, "+", "-", count=1)
    return text(latest[0][0]) if latest else None


async def log_pages(redis: RedisClient, stream: str, after: str, page: int) -> AsyncIterator[LogPage]:
    """The log after stream id `after`, read lazily one `XRANGE … COUNT page` at a time. At most
    one page is in memory however long the log is; the next page is read only when the caller
    asks for it. Ends at the log's end as of the last read (a page of fewer than `page` entries)."""
    if id_order(after) == LAST_ID:  # nothing can follow it, and Redis refuses the range
        return
    position = after
    while True:
        entries = await redis.xrange(stream, f"({position}", "+", count=page)
        if not entries:
            return
        found = decode_page(entries)
        position = found.last_id
        yield found
        if len(entries) < page:
            return


async def latest_cursor(redis: RedisClient, streams: list[str]) -> LogCursor:
    """The cursor at the newest entry of each of `streams` (one per partition, partition 0
    first; `0-0` where empty): one XREVRANGE per stream, pipelined. Raises redis errors."""
    async with redis.pipeline(transaction=False) as pipe:
        for stream in streams:
            pipe.xrevrange(stream, "+", "-", count=1)
        replies = await pipe.execute()
    return LogCursor([text(found[0][0]) if found else START for found in replies])


async def cursor_pages(
    redis: RedisClient, streams: list[str], cursor: LogCursor, page: int
) -> AsyncIterator[tuple[int, LogPage]]:
    """Each of `streams` (one per partition, partition 0 first) after its position in `cursor`,
    a partition at a time, as (partition, page) pairs read lazily as `log_pages` reads them. The
    caller moves `cursor` on as it takes pages: there is no order across partitions to keep."""
    for index, stream in enumerate(streams):
        async for found in log_pages(redis, stream, cursor.positions[index], page):
            yield index, found


async def tail(redis: RedisClient, stream: str, after: str, *, count: int, block_ms: int) -> LogPage | None:
    """Up to `count` entries after `after`, waiting up to `block_ms` ms for one (XREAD BLOCK, on
    a client without a socket timeout); None if none came. Raises redis errors and OSError."""
    send: Callable[..., Awaitable[Any]] = redis.execute_command  # redis-py leaves it untyped
    # To the node holding `stream` (see read_batch). RESP2: [[stream, entries]], None when none came.
    route = await routed_to(redis, stream)
    reply = cast(
        list[list[Any]] | None,
        await send("XREAD", "COUNT", count, "BLOCK", block_ms, "STREAMS", stream, after, **route),
    )
    return decode_page(reply[0][1]) if reply else None


async def read_batch(
    redis: RedisClient, stream: str, after: str | None, count: int, block_ms: int | None
) -> list[StoredEvent]:
    """Events after `after` in log order (XREAD, blocking up to block_ms when given): the
    projector's read. Raises EventDecodeError on an entry this version cannot read.

    The reply is read as Redis sent it: the command name is spelled so that redis-py's response
    callbacks do not match it (`unparsed`), so its XREAD callback does not turn every entry into
    a dict; `decode_entries` reads the flat field lists itself. It is sent to the node holding
    `stream`: redis-py's cluster client would otherwise ask `COMMAND GETKEYS` where an XREAD's
    keys are, a round trip to the node it started from on every read."""
    block = (b"BLOCK", block_ms) if block_ms is not None else ()
    send: Callable[..., Awaitable[Any]] = redis.execute_command  # redis-py leaves it untyped
    reply = await send(
        unparsed(redis, "XREAD"),
        b"COUNT",
        count,
        *block,
        b"STREAMS",
        stream,
        after or "0-0",
        NEVER_DECODE=True,
        **await routed_to(redis, stream),
    )
    if not reply:
        return []
    # RESP2: [[stream, entries]]; RESP3: {stream: entries}.
    entries = reply[0][1] if isinstance(reply, list) else next(iter(reply.values()))
    return decode_entries(entries)


async def _events_numbered(
    redis: RedisClient, keys: Keys, task_id: str, first: int, count: int, after: str = "0-0"
) -> list[StoredEvent]:
    """The task's events numbered `first` to `first + count - 1` (their `seq`) with stream ids
    after `after` that its log index names and the log still holds, in order: one HMGET of the
    index, then one pipelined XRANGE per id wanted. The index is the control hash's
    `event_field(seq)` fields; the numbers it lacks are looked up in the list of a task written
    before the index moved there (`_listed_ids`)."""
    if count <= 0:
        return []
    values = await redis.hmget(keys.control(task_id), [event_field(s) for s in range(first, first + count)])
    ids = [text(v) for v in values if v is not None]
    if len(ids) < count:
        ids = sorted({*ids, *await _listed_ids(redis, keys, task_id, first, count)}, key=id_order)
    ids = [i for i in ids if id_order(i) > id_order(after)]
    if not ids:
        return []
    async with redis.pipeline(transaction=False) as pipe:
        for entry_id in ids:
            pipe.xrange(keys.events, entry_id, entry_id)
        replies = await pipe.execute()
    events = [decode_entry(*entries[0]) for entries in replies if entries]
    return [e for e in events if first <= e.event.seq < first + count]


async def _listed_ids(redis: RedisClient, keys: Keys, task_id: str, first: int, count: int) -> list[str]:
    """The ids of events numbered `first` to `first + count - 1` in the list `Keys.task_log` that
    versions before the index moved into the control hash wrote (none for a task written since,
    for one retention compacted, or once the list's newest entry is trimmed from the log, with
    every older one). The list holds consecutive numbers, its last entry's number read from that
    entry: only the positions wanted are read."""
    listed = keys.task_log(task_id)
    async with redis.pipeline(transaction=False) as pipe:
        pipe.llen(listed)
        pipe.lindex(listed, -1)
        length, newest = await pipe.execute()
    entry = stream_entries(await redis.xrange(keys.events, newest, newest)) if newest is not None else []
    if not entry:
        return []
    last = decode_entry(*entry[0]).event.seq
    offset = last - length + 1  # the number of the list's first entry
    low, high = max(first, offset), min(first + count - 1, last)
    if low > high:
        return []
    return [text(i) for i in await redis.lrange(listed, low - offset, high - offset)]


async def _latest_seq(redis: RedisClient, keys: Keys, task_id: str) -> int:
    """How many events the task has had (its control hash's `seq`; 0 when it has none)."""
    seq = await redis.hget(keys.control(task_id), "seq")
    return 0 if seq is None else int(seq)


async def task_events(
    redis: RedisClient, keys: Keys, task_id: str, *, after_seq: int = 0, latest_seq: int | None = None
) -> list[StoredEvent]:
    """The task's events numbered after `after_seq` still in the log, in order, up to its latest
    (`latest_seq` when the caller read it, else read here); retention's trimmed ones skipped."""
    if latest_seq is None:
        latest_seq = await _latest_seq(redis, keys, task_id)
    return await _events_numbered(redis, keys, task_id, after_seq + 1, latest_seq - after_seq)


async def task_event_pages(
    redis: RedisClient, keys: Keys, task_id: str, after: str, page: int
) -> AsyncIterator[list[StoredEvent]]:
    """The task's events after stream id `after` that are still in the log, in order, read
    lazily `page` of its log index at a time: one page in memory however long the task's
    history is."""
    latest = await _latest_seq(redis, keys, task_id)
    for first in range(1, latest + 1, page):
        events = await _events_numbered(redis, keys, task_id, first, min(page, latest - first + 1), after)
        if events:
            yield events


async def last_task_event_id(redis: RedisClient, keys: Keys, task_id: str) -> str | None:
    """The id of the task's newest event still in the log (None once retention trimmed it or
    dropped the task's log index)."""
    latest = await _latest_seq(redis, keys, task_id)
    events = await _events_numbered(redis, keys, task_id, latest, 1)
    return events[-1].id if events else None
