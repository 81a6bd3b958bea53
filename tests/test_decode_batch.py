"""The replay hot path's batch decode: the same events as one entry at a time, or the same error."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from consumers.maintenance.archive import read_entries
from orchestrator.domain.errors import EventDecodeError
from orchestrator.storage.codec import decode_entries, decode_entry
from orchestrator.storage.readmodel import Projection
from tests.conftest import Backend

LOGS = Path(__file__).parent / "replay" / "logs"
GOLDEN = sorted(p.stem for p in LOGS.glob("*.jsonl"))


def flat(entry_id: str, fields: dict[str, Any]) -> list[Any]:
    """An entry as Redis sends it without redis-py's callbacks: `[id, [field, value, ...]]`."""
    return [entry_id.encode(), [str(x).encode() for pair in fields.items() for x in pair]]


def one_by_one(entries: list[list[Any]]) -> list[Any]:
    return [decode_entry(i, dict(zip(f[0::2], f[1::2], strict=True))) for i, f in entries]


SUBMITTED = {
    "type": "submitted",
    "v": "1",
    "task_id": "t1",
    "seq": "1",
    "attempt": "0",
    "data": '{"spec":{"strategy":"sma_cross","symbol":"GOOG","params":{"fast":10,"slow":20}}}',
}
PROGRESS = {"type": "progress", "v": "1", "task_id": "t1", "seq": "2", "attempt": "1", "data": '{"progress":0.5}'}


@pytest.mark.parametrize("name", GOLDEN)
def test_batch_decode_equals_one_at_a_time(name: str) -> None:
    entries = [flat(i, f) for i, f in read_entries(LOGS / f"{name}.jsonl")]
    current = [e for e in entries if (e[1][1], e[1][3]) != (b"failed", b"1")]
    assert decode_entries(entries) == one_by_one(entries)  # `mixed` holds a version-1 `failed`: upcast
    assert decode_entries(current) == one_by_one(current)  # only current versions: one msgspec call


@pytest.mark.parametrize(
    "odd",
    [
        {**PROGRESS, "data": "{}", "type": "requeued"},  # no data at all
        {**PROGRESS, "task_id": 't"1'},  # a task id JSON must escape
        {**PROGRESS, "task_id": "t\\1"},
        {"v": "1", **PROGRESS},  # the fields in another order
        {**PROGRESS, "retry_at": "5"},  # a stream field this version does not know
        {k: v for k, v in PROGRESS.items() if k != "v"},  # no version: version 1
        {**PROGRESS, "data": ' {"progress":0.5}'},  # JSON, though not as msgspec writes it
    ],
)
def test_odd_entries_decode_as_one_at_a_time(odd: dict[str, str]) -> None:
    entries = [flat("1-1", SUBMITTED), flat("1-2", odd), flat("1-3", {**PROGRESS, "seq": "3"})]
    assert decode_entries(entries) == one_by_one(entries)


@pytest.mark.parametrize(
    ("bad", "says"),
    [
        # Data that would close its own event and add one to the batch when spliced in.
        (
            '{"progress":0.5}},{"id":"1-9","event":{"type":"progress","task_id":"t1","seq":9,"attempt":1,'
            '"progress":1.0}',
            "entry 1-2: not a valid event",
        ),
        ('x"progress":0.5}', "entry 1-2: not a valid event"),  # not JSON: its first byte is dropped when spliced
        ("[0.5]", "entry 1-2: not a valid event"),
    ],
)
def test_malformed_data_is_refused_as_one_at_a_time(bad: str, says: str) -> None:
    entries = [flat("1-1", SUBMITTED), flat("1-2", {**PROGRESS, "data": bad}), flat("1-3", {**PROGRESS, "seq": "3"})]
    with pytest.raises(EventDecodeError, match=says):
        decode_entries(entries)


@pytest.mark.parametrize("seq", ["02", "2.0", "x", ""])
def test_a_seq_that_is_no_integer_is_refused_or_read_as_one_at_a_time(seq: str) -> None:
    entries = [flat("1-1", SUBMITTED), flat("1-2", {**PROGRESS, "seq": seq})]
    try:
        expected = one_by_one(entries)
    except EventDecodeError as e:
        with pytest.raises(EventDecodeError, match=str(e).split(":")[0]):
            decode_entries(entries)
    else:
        assert decode_entries(entries) == expected


@pytest.mark.parametrize("protocol", [2, 3])
async def test_read_log_gives_the_logged_events(backend: Backend, protocol: int) -> None:
    """read_log skips redis-py's XREAD callback: it must still give the events of either
    protocol's reply, in order, from any position, and nothing after the last one."""
    entries = [flat(i, f) for i, f in read_entries(LOGS / "real.jsonl")]
    for entry_id, fields in entries:
        await backend.redis.xadd(backend.keys.events, dict(zip(fields[0::2], fields[1::2], strict=True)), id=entry_id)
    client = backend.redis
    if protocol == 3:
        if backend.url is None:
            client = type(backend.redis)(server=backend.redis.connection_pool.connection_kwargs["server"], protocol=3)
        else:
            client = aioredis.Redis.from_url(backend.url, protocol=3, decode_responses=True)
    try:
        projection = Projection(client, backend.keys)
        expected = one_by_one(entries)
        assert await projection.read_log(None, 1000, None) == expected
        assert await projection.read_log(expected[9].id, 5, None) == expected[10:15]
        assert await projection.read_log(expected[-1].id, 10, 10) == []
    finally:
        if client is not backend.redis:
            await client.aclose()


@pytest.mark.parametrize("data", ["[0.5]", "0.5", '"progress"', "null"])
def test_data_that_is_no_json_object_is_refused(data: str) -> None:
    """Found by the batch tests: such data raised AttributeError instead of EventDecodeError."""
    with pytest.raises(EventDecodeError, match="entry 1-2: not a valid event: its data is not a JSON object"):
        decode_entry("1-2", {**PROGRESS, "data": data})
