"""Event-replay tests: event logs in, projections out."""

from __future__ import annotations

import asyncio
import gc
import json
import math
import warnings
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from bench.replay_bench import write_log as bench_log
from consumers.maintenance.archive import read_entries
from consumers.maintenance.replay import SNAPSHOT_BATCH, Difference, snapshot
from consumers.projector import GC_THRESHOLD, Projector
from orchestrator.domain.errors import ProjectionGapError
from orchestrator.domain.state import fold
from orchestrator.storage.codec import decode_entry
from orchestrator.storage.hashform import to_hash
from orchestrator.storage.readmodel import Projection
from tests.conftest import Backend, another_client
from tests.folding import fold_log, verify

# The store tests here run on fakeredis, real Redis and a real Redis Cluster (conftest).
pytestmark = pytest.mark.also_on_cluster

LOGS = Path(__file__).parent / "replay" / "logs"
GOLDEN = sorted(p.stem for p in LOGS.glob("*.jsonl"))


def entries(name: str) -> list[dict[str, Any]]:
    return [{"id": i, "fields": f} for i, f in read_entries(LOGS / f"{name}.jsonl")]


async def write_log(b: Backend, log: list[dict[str, Any]]) -> None:
    for entry in log:
        await b.redis.xadd(b.keys.events, entry["fields"], id=entry["id"])


def decoded(snap: dict[str, dict[str, bytes]]) -> dict[str, Any]:
    tasks = {
        k.split(":", 1)[1]: {f: json.loads(v) for f, v in fields.items()}
        for k, fields in snap.items()
        if k.startswith("task:")
    }
    index = {
        k.split(":", 1)[1]: [m.split("|", 1)[1] for m in sorted(fields, reverse=True)]
        for k, fields in snap.items()
        if k.startswith("index:")
    }
    return {"tasks": tasks, "index": index}


@pytest.mark.parametrize("name", GOLDEN)
async def test_golden_log_folds_to_expected_projection(backend: Backend, name: str) -> None:
    await write_log(backend, entries(name))
    projection = Projection(backend.redis, backend.keys)
    await fold_log(projection, batch_size=4)  # small batches: several store steps
    expected = json.loads((LOGS / f"{name}.expected.json").read_text())
    assert decoded(await snapshot(backend.redis, backend.keys)) == expected
    assert await projection.position() == entries(name)[-1]["id"]


@pytest.mark.parametrize("name", GOLDEN)
def test_applying_any_event_twice_changes_nothing(name: str) -> None:
    log = [decode_entry(e["id"], e["fields"]) for e in entries(name)]
    once = {k: to_hash(v) for k, v in fold(log).items()}
    for i in range(len(log)):
        twice = log[: i + 1] + log[i:]
        assert {k: to_hash(v) for k, v in fold(twice).items()} == once


@pytest.mark.parametrize("name", GOLDEN)
async def test_projector_rewound_reapplies_nothing(backend: Backend, name: str) -> None:
    log = entries(name)
    await write_log(backend, log)
    projection = Projection(backend.redis, backend.keys)
    await fold_log(projection)
    first = await snapshot(backend.redis, backend.keys)
    # As if a projector crashed after storing its states but before anyone saw the position:
    # the events after the rewound position arrive again and must change nothing.
    for rewind_to in (log[0]["id"], log[len(log) // 2]["id"]):
        await backend.redis.set(backend.keys.projection_position, rewind_to)
        await Projector(projection).run(burst=True)
        assert await snapshot(backend.redis, backend.keys) == first


async def test_gap_stops_the_projector(backend: Backend) -> None:
    log = entries("mixed")
    del log[4]  # a progress event of task A
    await write_log(backend, log)
    projection = Projection(backend.redis, backend.keys)
    with pytest.raises(ProjectionGapError, match="expected 3"):
        await fold_log(projection)
    # Nothing of the batch with the gap was stored; the position is before it.
    assert await projection.position() is None


async def test_gap_stops_the_projector_reading_ahead(backend: Backend) -> None:
    """Batches of 2: the batch after the one being folded is read ahead; the gap still stops
    the projector, with every batch before it stored and nothing of the one that holds it."""
    log = entries("mixed")
    task_a = log[4]["fields"]["task_id"]
    del log[4]  # a progress event of task A (seq 3)
    await write_log(backend, log)
    projection = Projection(backend.redis, backend.keys)
    with pytest.raises(ProjectionGapError, match="expected 3"):
        await fold_log(projection, batch_size=2)
    after_gap = next(i for i, e in enumerate(log) if e["fields"]["task_id"] == task_a and int(e["fields"]["seq"]) > 3)
    assert after_gap >= 4  # batches were stored before it
    assert await projection.position() == log[after_gap - after_gap % 2 - 1]["id"]


@pytest.mark.redis
@pytest.mark.parametrize("name", GOLDEN)
async def test_racing_projectors_reading_ahead_give_the_golden_projection(real_backend: Backend, name: str) -> None:
    """Three projectors on one projection, batches of 2: stores are refused ('moved') while
    reads ahead are in flight, and each refused projector starts again from the stored
    position, dropping what it read ahead. The projection is still exactly the golden one."""
    await write_log(real_backend, entries(name))
    projectors = [Projector(Projection(real_backend.redis, real_backend.keys), batch_size=2) for _ in range(3)]
    await asyncio.gather(*(p.run(burst=True) for p in projectors))
    expected = json.loads((LOGS / f"{name}.expected.json").read_text())
    assert decoded(await snapshot(real_backend.redis, real_backend.keys)) == expected
    assert sum(p.applied for p in projectors) == len(entries(name))  # every batch stored once


async def test_a_folding_process_collects_cycles_less_often(backend: Backend) -> None:
    """A batch's reply and decode are ~12,000 short-lived containers: at CPython's default
    threshold of 700 they were promoted and made full collector passes over the heap."""
    # This test makes the collector run often: garbage that earlier tests left (a socket of a
    # cluster client, say) would be finalized here and fail it for another test's leak. It is
    # collected first; what this test itself leaks still fails it (warnings are errors).
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        gc.collect()
    saved = gc.get_threshold()
    try:
        gc.set_threshold(700, *saved[1:])
        await write_log(backend, entries("mixed"))
        await fold_log(Projection(backend.redis, backend.keys))
        assert gc.get_threshold() == (GC_THRESHOLD, *saved[1:])
    finally:
        gc.set_threshold(*saved)


async def _folded_log(b: Backend, tasks: int) -> dict[str, dict[str, bytes]]:
    """`tasks` tasks of four events each (bench/replay_bench.py's log) folded into the live
    projection; returns its snapshot."""
    await bench_log(b.redis, b.keys, 4 * tasks)
    await Projector(Projection(b.redis, b.keys), batch_size=5_000).run(burst=True)
    return await snapshot(b.redis, b.keys)


@pytest.mark.redis
async def test_verify_reports_every_planted_difference_across_batches(real_backend: Backend) -> None:
    b = real_backend
    before = await _folded_log(b, 700)  # ~700 keys: more than one SNAPSHOT_BATCH
    assert len(before) > SNAPSHOT_BATCH
    tasks = sorted(k for k in before if k.startswith("task:"))
    changed, emptied, added, deleted, unindexed = tasks[0], tasks[100], tasks[350], tasks[500], tasks[699]
    # Someone edits the live projection behind the projector's back, in five ways.
    await b.redis.hset(f"{b.keys.projection_root}:{changed}", "status", b'"failed"')
    await b.redis.hdel(f"{b.keys.projection_root}:{emptied}", "attempt")
    await b.redis.hset(f"{b.keys.projection_root}:{added}", "note", b'"edited"')
    await b.redis.delete(f"{b.keys.projection_root}:{deleted}")
    member = next(m for m in before["index:completed"] if m.endswith(unindexed.split(":", 1)[1]))
    await b.redis.zrem(b.keys.projected_index("completed"), member)
    await b.redis.hset(f"{b.keys.projection_root}:task:ghost", "status", b'"queued"')

    expected = [
        Difference(changed, "status", '"failed"', before[changed]["status"].decode()),
        Difference(emptied, "attempt", None, before[emptied]["attempt"].decode()),
        Difference(added, "note", '"edited"', None),
        *(Difference(deleted, field, None, value.decode()) for field, value in before[deleted].items()),
        Difference("index:completed", member, None, ""),
        Difference("task:ghost", "status", '"queued"', None),
    ]
    differences = await verify(b.redis, b.keys)
    assert differences == sorted(expected, key=lambda d: (d.key, d.field))
    assert len(differences) == 5 + len(before[deleted])


@pytest.mark.redis
async def test_snapshot_reads_keys_in_pipelined_batches(real_backend: Backend) -> None:
    """A snapshot reads SNAPSHOT_BATCH keys of one type per round trip (the scan picks them by type),
    not two round trips per key (TYPE, HGETALL), which made `replay --verify` of 200,000 events
    spend ~28 s comparing."""
    b = real_backend
    before = await _folded_log(b, 700)
    round_trips: list[bytes] = []  # the first command's name of every request sent

    class Counting(aioredis.Connection):
        async def send_packed_command(self, command: Any, check_health: bool = True) -> None:
            packed = command if isinstance(command, bytes) else b"".join(command)
            round_trips.append(packed.split(b"\r\n", 3)[2].upper())
            await super().send_packed_command(command, check_health)

    counted = another_client(b, protocol=2, connection_class=Counting)
    try:
        assert await snapshot(counted, b.keys) == before
    finally:
        await counted.aclose()
    reads = [name for name in round_trips if name in (b"TYPE", b"HGETALL", b"ZRANGE")]
    # Hashes and sorted sets are read separately: one partial batch more at most.
    assert 0 < len(reads) <= math.ceil(len(before) / SNAPSHOT_BATCH) + 1, len(reads)


async def test_snapshot_is_the_same_over_resp3(backend: Backend) -> None:
    """snapshot reads replies without redis-py's callbacks: a RESP3 client's maps must give
    what a RESP2 client's flat lists give."""
    await write_log(backend, entries("real"))
    await fold_log(Projection(backend.redis, backend.keys))
    if backend.url is None:
        client = type(backend.redis)(server=backend.redis.connection_pool.connection_kwargs["server"], protocol=3)
    else:
        client = another_client(backend, protocol=3)
    try:
        resp2 = await snapshot(backend.redis, backend.keys)
        assert await snapshot(client, backend.keys) == resp2
        assert decoded(resp2) == json.loads((LOGS / "real.expected.json").read_text())
    finally:
        await client.aclose()
