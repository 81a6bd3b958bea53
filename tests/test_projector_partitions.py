"""Event replay over partitions: every partition's log folds into that partition's projection, any
number of projectors share the partitions through leases, and replay verifies and rebuilds them."""

from __future__ import annotations

import asyncio
import json
import math
from collections import Counter
from typing import Any

import pytest

from consumers.maintenance.replay import Difference, rebuild, snapshots, verify_replay
from consumers.partition_leases import PartitionLeases, Share
from consumers.projector import Projector
from orchestrator.domain.spec import BacktestSpec
from orchestrator.storage.commands import Commands
from orchestrator.storage.keys import DEFAULT_PROJECTION
from orchestrator.storage.partitions import Layout, task_id_in
from orchestrator.storage.presence import Heartbeat
from orchestrator.storage.readmodel import Projection
from orchestrator.storage.readmodel.pointer import RETIRED, live_layout
from tests.conftest import Backend
from tests.processes import eventually
from tests.test_replay import GOLDEN, LOGS, decoded, entries

pytestmark = pytest.mark.also_on_cluster

SPEC = BacktestSpec(strategy="sma_cross", symbol="GOOG", params={"fast": 10, "slow": 20})
# Short leases, so that a dead projector's partitions change hands within a test's patience.
LEASE_MS = 900


def partitioned(backend: Backend) -> Layout:
    """The backend's layout where it has several partitions (the cluster's 16); six on a
    standalone server, which holds any number as well."""
    layout = backend.layout
    return layout if layout.width > 1 else Layout(prefix=layout.prefix, count=6)


def _golden_in(partition: int, name: str) -> tuple[str, str]:
    """The golden log `name` and its expected projection (as text) with every task id replaced
    by one of `partition`."""
    log = (LOGS / f"{name}.jsonl").read_text()
    expected = (LOGS / f"{name}.expected.json").read_text()
    for original in sorted({e["fields"]["task_id"] for e in entries(name)}):
        mine = task_id_in(partition)
        log, expected = log.replace(original, mine), expected.replace(original, mine)
    return log, expected


async def write_golden(backend: Backend, layout: Layout) -> list[dict[str, Any]]:
    """A golden log in each partition but the last (left empty), its task ids made that
    partition's; returns each partition's expected projection ({} for the empty one)."""
    expected: list[dict[str, Any]] = []
    for index, keys in enumerate(layout.partitions):
        if index == layout.width - 1:
            expected.append({})
            continue
        log, projected = _golden_in(index, GOLDEN[index % len(GOLDEN)])
        for line in log.splitlines():
            entry = json.loads(line)
            if "id" in entry:
                await backend.redis.xadd(keys.events, entry["fields"], id=entry["id"])
        expected.append(json.loads(projected))
    return expected


async def tips(backend: Backend, layout: Layout) -> list[str | None]:
    """The id of each partition's newest event (None: empty)."""
    found = []
    for keys in layout.partitions:
        last = await backend.redis.xrevrange(keys.events, count=1)
        found.append(last[0][0].decode() if last else None)
    return found


async def caught_up(backend: Backend, projection: Projection) -> bool:
    """Every partition of the projection has folded its whole log."""
    return await projection.folded() == await tips(backend, projection.layout)


async def test_every_partition_folds_into_its_own_projection(backend: Backend) -> None:
    layout = partitioned(backend)
    expected = await write_golden(backend, layout)
    projection = Projection(backend.redis, layout)
    projector = Projector(projection, batch_size=4)
    await projector.run(burst=True)
    assert [decoded(s) if s else {} for s in await snapshots(backend.redis, layout)] == expected
    assert await projection.folded() == await tips(backend, layout)
    assert projector.applied == sum(len(entries(GOLDEN[i % len(GOLDEN)])) for i in range(layout.width - 1))
    # A task's state is read in its own partition.
    some = next(iter(expected[1]["tasks"]))
    assert (await projection.load([some]))[some].status == expected[1]["tasks"][some]["status"]
    assert (await verify_replay(backend.redis, layout)).differences == []


@pytest.mark.redis
async def test_racing_projectors_store_each_batch_of_each_partition_once(real_backend: Backend) -> None:
    """Three projectors fold every partition at once, batches of 2: each partition is folded by
    three folders, whose stores apply.lua refuses ('moved') whenever another stored first."""
    layout = partitioned(real_backend)
    expected = await write_golden(real_backend, layout)
    projectors = [Projector(Projection(real_backend.redis, layout), batch_size=2) for _ in range(3)]
    await asyncio.gather(*(p.run(burst=True) for p in projectors))
    assert [decoded(s) if s else {} for s in await snapshots(real_backend.redis, layout)] == expected
    total = sum(len(entries(GOLDEN[i % len(GOLDEN)])) for i in range(layout.width - 1))
    assert sum(p.applied for p in projectors) == total  # every batch stored once


def following(backend: Backend, layout: Layout, name: str) -> Projector:
    """A live projector named `name`, as `backstream projector` makes one, with short leases."""
    beat = Heartbeat(backend.redis, layout.home.projector_heartbeats, name, interval_s=LEASE_MS / 3000)
    projection = Projection(backend.redis, layout, follow_live=True, reader=backend.blocking)
    return Projector(projection, heartbeat=beat, lease_ms=LEASE_MS, block_ms=200)


async def shares(projector: Projector) -> Counter[str | None]:
    """How many partitions each projector holds (None: free)."""
    return Counter(await projector.leases.holders())


async def spread_evenly(projectors: list[Projector]) -> bool:
    """Every partition is held, each by one of `projectors`, none holding over its share."""
    held = await shares(projectors[0])
    quota = math.ceil(projectors[0].projection.layout.width / len(projectors))
    return set(held) == {p.name for p in projectors} and max(held.values()) <= quota


async def submit_everywhere(commands: Commands, layout: Layout, cancel: bool) -> int:
    """A task in each partition (cancelled too when `cancel`); returns the events appended."""
    for index in range(layout.width):
        task_id = task_id_in(index)
        await commands.submit(task_id, SPEC)
        if cancel:
            await commands.cancel(task_id)
    return layout.width * (2 if cancel else 1)


@pytest.mark.redis
async def test_live_projectors_share_the_partitions_and_take_over_a_dead_ones(real_backend: Backend) -> None:
    backend = real_backend
    layout = partitioned(backend)
    commands = Commands(backend.redis, layout)
    appended = await submit_everywhere(commands, layout, cancel=True)
    reader = Projection(backend.redis, layout, follow_live=True)
    projectors = [following(backend, layout, "pa"), following(backend, layout, "pb")]
    running = {p.name: asyncio.create_task(p.run()) for p in projectors}
    try:
        await eventually(lambda: spread_evenly(projectors), timeout=10, what="two projectors to share")
        await eventually(lambda: caught_up(backend, reader), timeout=10, what="the two to fold everything")

        projectors.append(following(backend, layout, "pc"))
        running["pc"] = asyncio.create_task(projectors[-1].run())
        await eventually(lambda: spread_evenly(projectors), timeout=10, what="three projectors to share")
        appended += await submit_everywhere(commands, layout, cancel=False)
        await eventually(lambda: caught_up(backend, reader), timeout=10, what="the three to fold everything")

        # pb dies: its leases stay until they expire and its heartbeat ages; the others take over.
        dead = projectors.pop(1)
        killed = running.pop(dead.name)
        killed.cancel()
        await asyncio.gather(killed, return_exceptions=True)
        assert dead.name in await shares(dead)
        appended += await submit_everywhere(commands, layout, cancel=False)
        await eventually(lambda: spread_evenly(projectors), timeout=10, what="the survivors to take pb's share")
        await eventually(lambda: caught_up(backend, reader), timeout=10, what="the survivors to fold everything")
    finally:
        for p in projectors:
            p.stop()
        await asyncio.wait_for(asyncio.gather(*running.values()), timeout=10)
    assert set(await shares(projectors[0])) == {None}  # a clean stop gives the leases back
    assert (await verify_replay(backend.redis, layout)).differences == []
    assert sum(p.applied for p in [*projectors, dead]) == appended  # nothing lost, nothing twice


@pytest.mark.redis
async def test_rebuild_and_verify_over_partitions_under_a_live_projector(real_backend: Backend) -> None:
    backend = real_backend
    layout = partitioned(backend)
    expected = await write_golden(backend, layout)
    live = following(backend, layout, "live")
    running = asyncio.create_task(live.run())
    reader = Projection(backend.redis, layout, follow_live=True)
    try:
        await eventually(lambda: caught_up(backend, reader), timeout=10, what="the live projector")
        assert (await verify_replay(backend.redis, layout)).differences == []

        # A difference planted in the last partition that holds tasks is reported as that one's.
        planted = layout.width - 2
        task_id = next(iter(expected[planted]["tasks"]))
        await backend.redis.hset(layout.partition(planted).projected_task(task_id), "status", b'"failed"')
        checked = await verify_replay(backend.redis, layout)
        status = json.dumps(expected[planted]["tasks"][task_id]["status"])
        assert checked.differences == [Difference(f"task:{task_id}", "status", '"failed"', status, planted)]

        rebuilt = await rebuild(backend.redis, layout)
        assert (await live_layout(backend.redis, layout)).projection_name == rebuilt.projection
        # The old projection is gone from every partition, and its positions refuse late stores.
        old = layout.with_projection(DEFAULT_PROJECTION)
        assert all(s == {} for s in await snapshots(backend.redis, old))
        assert {await backend.redis.get(k.projection_position) for k in old.partitions} == {RETIRED.encode()}
        new = layout.with_projection(rebuilt.projection)
        assert [decoded(s) if s else {} for s in await snapshots(backend.redis, new)] == expected

        # The live projector folds what comes after into the new projection, in every partition.
        await submit_everywhere(Commands(backend.redis, layout), layout, cancel=True)
        await eventually(lambda: caught_up(backend, reader), timeout=10, what="the live projector after the switch")
        assert reader.layout.projection_name == rebuilt.projection
        assert (await verify_replay(backend.redis, layout)).differences == []
    finally:
        live.stop()
        await asyncio.wait_for(running, timeout=10)


async def test_a_lease_is_taken_free_renewed_by_its_holder_and_released_only_by_it(backend: Backend) -> None:
    layout = partitioned(backend)
    mine, theirs = (PartitionLeases(backend.redis, layout, name, lease_ms=60_000) for name in ("pa", "pb"))
    share = await mine.share()
    assert share.quota == layout.width and sorted(share.order) == list(range(layout.width))
    assert await mine.take(Share(quota=2, order=[1, 0]), set()) == [1, 0]
    assert await theirs.take(Share(quota=layout.width, order=share.order), set()) == list(range(2, layout.width))
    assert await theirs.renew([0]) == [0] and await mine.renew([0, 1]) == []
    await theirs.release([0, 1, 2])  # only its own goes
    assert (await mine.holders())[:3] == ["pa", "pa", None]
    assert mine.extras(Share(quota=1, order=[1, 0]), {0, 1}) == [0]


@pytest.mark.redis
async def test_a_projector_that_lost_a_lease_while_folding_stores_nothing_twice(real_backend: Backend) -> None:
    """A projector's lease on a partition expires and another takes it while the first still
    folds it: until the first renews and stops, both fold the partition, and apply.lua's
    position check refuses whichever store comes second."""
    backend = real_backend
    layout = partitioned(backend)
    commands = Commands(backend.redis, layout)
    appended = await submit_everywhere(commands, layout, cancel=True)
    first = following(backend, layout, "first")
    running = asyncio.create_task(first.run())
    reader = Projection(backend.redis, layout, follow_live=True)
    await eventually(lambda: caught_up(backend, reader), timeout=10, what="the first projector")
    # As if its lease on partition 1 expired unrenewed and a projector named `second` took it.
    await backend.redis.set(layout.partition(1).projector_lease, "second", px=60_000)
    second = Projector(Projection(backend.redis, layout), batch_size=1)
    intruder = second.folder(1)
    racing = asyncio.create_task(intruder.run())
    for _ in range(20):
        task_id = task_id_in(1)
        await commands.submit(task_id, SPEC)
        await commands.cancel(task_id)
        appended += 2
    await eventually(lambda: _holds(first, 1, "second"), timeout=10, what="the first to let go")
    await eventually(lambda: caught_up(backend, reader), timeout=10, what="partition 1 folded")
    intruder.stop()
    first.stop()
    await asyncio.wait_for(asyncio.gather(racing, running), timeout=10)
    assert (await verify_replay(backend.redis, layout)).differences == []
    assert first.applied + second.applied == appended  # every event stored once, by one of them


async def _holds(projector: Projector, index: int, name: str) -> bool:
    """`name` holds partition `index`'s lease and `projector` folds it no more."""
    return (await projector.leases.holders())[index] == name and index not in projector.folding
