"""Partitions: key names per partition, ids that say their partition, and the recorded layout."""

from __future__ import annotations

import functools
import os
import subprocess
import sys
import uuid
from collections import Counter

import pytest
from redis.crc import key_slot

from consumers.engine.datasets import Catalog
from consumers.engine.runner import start_run
from consumers.projector import Projector
from consumers.worker.loop import Worker
from orchestrator.domain.spec import BacktestSpec
from orchestrator.domain.status import Status
from orchestrator.settings import Settings
from orchestrator.storage.commands import Commands
from orchestrator.storage.partitions import (
    CLUSTER_PARTITIONS,
    CLUSTER_SLOTS,
    Layout,
    LayoutMismatch,
    load_layout,
    partition_of,
    partition_prefix,
    set_partitions,
    task_id_in,
)
from orchestrator.storage.readmodel import Projection, ReadModel
from orchestrator.storage.workqueue import WorkQueue
from tests.conftest import Backend

SPEC = BacktestSpec(strategy="sma_cross", symbol="GOOG", params={"fast": 10, "slow": 20})


def test_partition_zero_is_the_prefix_itself_and_the_others_extend_its_hash_tag() -> None:
    assert partition_prefix("{bs}", 0) == "{bs}"
    assert partition_prefix("{bs}", 7) == "{bs:p07.776}"
    assert partition_prefix("{bs}", 123) == "{bs:p123.261}"
    assert partition_prefix("app:{bs}:x", 3) == "app:{bs:p03.162}:x"
    assert partition_prefix("plain", 2) == "plain:p02"
    layout = Layout(prefix="{bs}", count=16)
    assert layout.partition(0).events == "{bs}:events"
    assert layout.partition(15).work == "{bs:p15.59}:work"
    assert layout.home == layout.partition(0)
    with pytest.raises(IndexError):
        layout.partition(16)


@pytest.mark.parametrize("prefix", ["{bs}", "{bst-0a1b2c3d4e5f}", "{research}"])
def test_the_partitions_slots_split_a_clusters_equal_slot_ranges_evenly(prefix: str) -> None:
    """The equal slot ranges `redis-cli --cluster create` gives 3 (or 4, 5) masters each get the
    same share of the partitions, give or take one, for any prefix (plain `{bs:pNN}` tags put
    16 partitions 3, 7 and 6 on three masters)."""
    for count in (4, 8, 16, 32, 64):
        slots = [key_slot(partition_prefix(prefix, i).encode()) for i in range(count)]
        for masters in (3, 4, 5):
            held = Counter(slot * masters // CLUSTER_SLOTS for slot in slots)
            shares = [held[m] for m in range(masters)]
            assert max(shares) - min(shares) <= 1, (count, masters, shares)


def test_an_id_says_its_partition_and_stays_a_uuid() -> None:
    for partition in (0, 1, 9, 255, 65_535):
        task_id = task_id_in(partition)
        assert uuid.UUID(task_id).version == 8
        assert partition_of(task_id) == partition
    # Ids made before partitions existed are partition 0's.
    assert partition_of(str(uuid.uuid4())) == 0
    with pytest.raises(ValueError):
        partition_of("not-a-uuid")


def test_new_ids_spread_over_the_partitions_and_an_idempotency_key_always_lands_in_the_same() -> None:
    layout = Layout(count=16)
    seen = {partition_of(layout.new_task_id()) for _ in range(2_000)}
    assert seen == set(range(16))
    keyed = {partition_of(layout.new_task_id("alice:key-1")) for _ in range(20)}
    assert len(keyed) == 1
    assert layout.of(layout.new_task_id("alice:key-1")).prefix == layout.partition(keyed.pop()).prefix


@pytest.mark.parametrize("count", [0, -1, 70_000])
def test_an_impossible_count_is_refused(count: int) -> None:
    with pytest.raises(ValueError, match="partitions"):
        Layout(count=count)


async def test_a_new_deployment_records_its_count_and_later_processes_read_it(backend: Backend) -> None:
    prefix = backend.keys.prefix
    layout = await load_layout(backend.redis, prefix, requested=None, cluster=True)
    assert layout.count == CLUSTER_PARTITIONS
    assert await load_layout(backend.redis, prefix, requested=None, cluster=False) == layout
    with pytest.raises(LayoutMismatch, match="BACKSTREAM_PARTITIONS=4"):
        await load_layout(backend.redis, prefix, requested=4, cluster=False)


async def test_a_process_reading_a_record_another_is_still_writing_takes_its_count(backend: Backend) -> None:
    # Two processes start at once: the first has written `count` and not yet `span` when the
    # second reads the record. The second must finish the record with the first's count.
    prefix = backend.keys.prefix
    await backend.redis.hset(Layout(prefix=prefix).record_key, "count", 4)
    layout = await load_layout(backend.redis, prefix, requested=None, cluster=True)
    assert (layout.count, layout.width) == (4, 4)
    assert await load_layout(backend.redis, prefix, requested=4, cluster=False) == layout


async def test_a_log_written_before_partitions_is_partition_zero_of_one(backend: Backend) -> None:
    prefix = backend.keys.prefix
    await backend.redis.xadd(backend.keys.events, {"type": "submitted"})
    layout = await load_layout(backend.redis, prefix, requested=None, cluster=True)
    assert (layout.count, layout.width) == (1, 1)
    with pytest.raises(LayoutMismatch):
        await load_layout(backend.redis, prefix, requested=16, cluster=True)


async def test_changing_the_count_is_a_migration_that_keeps_reading_the_old_partitions(backend: Backend) -> None:
    prefix = backend.keys.prefix
    layout = await load_layout(backend.redis, prefix, requested=8, cluster=False)
    lowered = await set_partitions(backend.redis, layout, 2)
    assert (lowered.count, lowered.width) == (2, 8)
    assert await load_layout(backend.redis, prefix, requested=2, cluster=False) == lowered
    # New tasks go to the two partitions only, while all eight are still read.
    assert {partition_of(lowered.new_task_id()) for _ in range(200)} == {0, 1}
    assert len(lowered.partitions) == 8


def backstream(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "orchestrator.cli", *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.redis
def test_the_count_is_changed_only_by_the_partitions_command(real_prefix: str, real_url: str) -> None:
    env = {"REDIS_URL": real_url, "BACKSTREAM_PREFIX": real_prefix}
    shown = backstream(env, "partitions")
    assert shown.returncode == 0, shown.stderr
    assert "partitions: 1 take new tasks, 1 are read" in shown.stdout
    # A process asking for another count than the deployment's refuses to start: no silent rehash.
    refused = backstream({**env, "BACKSTREAM_PARTITIONS": "4"}, "replay", "--verify")
    assert refused.returncode == 2
    assert "BACKSTREAM_PARTITIONS=4, but this deployment has 1 partitions" in refused.stderr
    assert "Traceback" not in refused.stderr
    migrated = backstream(env, "partitions", "4")
    assert migrated.returncode == 0, migrated.stderr
    assert "partitions: 4 take new tasks, 4 are read" in migrated.stdout
    lowered = backstream(env, "partitions", "2")
    assert "partitions: 2 take new tasks, 4 are read" in lowered.stdout


@pytest.mark.parametrize("value", ["0", "-3", "many", "70000"])
def test_a_bad_partition_count_names_the_variable(value: str) -> None:
    failed = backstream({"BACKSTREAM_PARTITIONS": value, "REDIS_URL": "redis://127.0.0.1:1"}, "partitions")
    assert failed.returncode == 2
    assert f"BACKSTREAM_PARTITIONS={value!r}" in failed.stderr or f"BACKSTREAM_PARTITIONS={value} " in failed.stderr


async def run_everything(backend: Backend, layout: Layout) -> dict[str, str]:
    """A worker (burst) and a projector over `layout`, as processes started after a migration
    build them: {task id: status} of every task listed (each partition's index merged)."""
    queue = WorkQueue(backend.redis, layout, reader=backend.blocking)
    await queue.ensure_group()
    settings = Settings(prefix=layout.prefix)
    run = functools.partial(start_run, catalog=Catalog.from_env_dir(None))
    await Worker(queue, run, settings, name="w1", concurrency=4).run(burst=True)
    projection = Projection(backend.redis, layout)
    await Projector(projection).run(burst=True)
    return {state.task_id: state.status for state in await ReadModel(backend.redis, layout).all_tasks(Status.COMPLETED)}


async def test_a_migration_keeps_every_task_and_new_ones_spread_over_the_new_partitions(backend: Backend) -> None:
    """One partition (a deployment from before partitions), then 4, then back to 2: every task
    submitted under any count completes once and stays readable where its id says."""
    prefix = backend.keys.prefix
    one = await load_layout(backend.redis, prefix, requested=None, cluster=False)
    old = [(await Commands(backend.redis, one).submit(None, SPEC)).task_id for _ in range(3)]
    four = await set_partitions(backend.redis, one, 4)
    # Tasks queued under the old count are still queued in partition 0 when the new processes start.
    new = [(await Commands(backend.redis, four).submit(None, SPEC)).task_id for _ in range(40)]
    assert {partition_of(t) for t in old} == {0}
    assert {partition_of(t) for t in new} == {0, 1, 2, 3}
    done = await run_everything(backend, four)
    assert done == dict.fromkeys(old + new, "completed")
    # Lowered to 2: partitions 2 and 3 take no new task but are still read (their tasks listed and
    # found), and what is queued there still runs.
    two = await set_partitions(backend.redis, four, 2)
    late = [(await Commands(backend.redis, two).submit(None, SPEC)).task_id for _ in range(20)]
    assert {partition_of(t) for t in late} == {0, 1}
    done = await run_everything(backend, two)
    assert done == dict.fromkeys(old + new + late, "completed")
    reads = ReadModel(backend.redis, two)
    for task_id in new:
        state = await reads.current(task_id)
        assert state is not None and state.status == "completed"
