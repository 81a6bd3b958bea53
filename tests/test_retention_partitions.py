"""Retention and export over every partition of a deployment: four partitions on a standalone
server (and fakeredis), sixteen on the real cluster. Each partition's log is trimmed only below
every projection's position in that partition; an archive holds every partition's log, one
section each, and gives each back exactly; a one-partition archive is what it always was."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import msgspec
import pytest

from consumers.maintenance.archive import ArchiveThenLive, export, export_layout, read_entries
from consumers.maintenance.retention import apply_layout_retention
from orchestrator.domain.events import StoredEvent
from orchestrator.domain.spec import BacktestSpec
from orchestrator.storage.codec import decode_entry, stream_entries, text
from orchestrator.storage.commands import Commands
from orchestrator.storage.keys import Keys
from orchestrator.storage.partitions import Layout, load_layout, task_id_in
from orchestrator.storage.readmodel import Projection
from tests.conftest import Backend
from tests.folding import fold_log

pytestmark = pytest.mark.also_on_cluster

SPEC = BacktestSpec(strategy="sma_cross", symbol="GOOG", params={"fast": 10, "slow": 20})
# A horizon a minute ahead of the server's clock: only the archive and the projections decide
# where a log is trimmed (a horizon of now could fall in the millisecond of the last write).
AHEAD_MS = -60_000


def partitioned(backend: Backend) -> Layout:
    """Sixteen partitions on the cluster (what a deployment gets there by default), four elsewhere."""
    return backend.layout if backend.name == "cluster" else Layout(prefix=backend.keys.prefix, count=4)


async def spread(backend: Backend, layout: Layout, per_partition: int) -> dict[int, list[str]]:
    """Submit new tasks as the API does (ids from the layout, so they spread at random) until
    every partition holds `per_partition` of them: {partition: its task ids, oldest first}."""
    commands = Commands(backend.redis, layout)
    tasks: dict[int, list[str]] = {i: [] for i in range(layout.width)}
    for _ in range(200 * layout.width):
        if min(len(t) for t in tasks.values()) >= per_partition:
            return tasks
        task_id = (await commands.submit(None, SPEC)).task_id
        tasks[layout.partition_index(task_id)].append(task_id)
    raise AssertionError(f"submits did not reach every partition: {tasks}")


async def log_ids(redis: Any, keys: Keys) -> list[str]:
    return [text(i) for i, _ in stream_entries(await redis.xrange(keys.events))]


def just_after(stream_id: str) -> str:
    ms, seq = stream_id.split("-")
    return f"{ms}-{int(seq) + 1}"


async def fold_every_partition(redis: Any, layout: Layout) -> None:
    for keys in layout.partitions:
        await fold_log(Projection(redis, keys))


async def test_each_partition_is_trimmed_only_below_every_projections_position_in_it(backend: Backend) -> None:
    redis, layout = backend.redis, partitioned(backend)
    await spread(backend, layout, 3)
    home = layout.home
    # A rebuild in progress: registered once, in partition 0, with a position per partition.
    await redis.sadd(home.projections, "proj-next")
    before, limits = {}, {}
    for i, keys in enumerate(layout.partitions):
        ids = before[i] = await log_ids(redis, keys)
        await redis.set(keys.archived_through, ids[-1])
        await redis.xadd(keys.dead_letters, {"task_id": "gone"}, id="1-1")
        low, high = ids[i % 2], ids[2]
        live, rebuilt = (low, high) if i % 4 < 2 else (high, low)
        await redis.set(keys.projection_position, live)
        if i != 1:  # the rebuild has not reached partition 1 yet: nothing of it may go
            await redis.set(keys.with_projection("proj-next").projection_position, rebuilt)
        lowest = "proj" if live == low else "proj-next"
        limits[i] = (None, "projection proj-next") if i == 1 else (low, f"projection {lowest}")

    report = await apply_layout_retention(redis, layout, horizon_ms=AHEAD_MS)

    assert [r.partition for r in report.partitions] == list(range(layout.width))
    for i, keys in enumerate(layout.partitions):
        ids, (limit, limited_by) = before[i], limits[i]
        kept = ids if limit is None else ids[ids.index(limit) + 1 :]
        got = report.partitions[i]
        assert await log_ids(redis, keys) == kept, f"partition {i}"
        assert (got.limited_by, got.events_trimmed) == (limited_by, len(ids) - len(kept))
        assert got.keep_from == (None if limit is None else just_after(limit))
        # Its own dead letters and mark; none where nothing could be trimmed.
        assert await redis.xlen(keys.dead_letters) == (1 if limit is None else 0)
        mark = {text(k): text(v) for k, v in (await redis.hgetall(keys.retention)).items()}
        assert mark.get("log_starts_at") == got.keep_from
    assert report.events_trimmed == sum(r.events_trimmed for r in report.partitions) > 0
    assert report.dead_letters_trimmed == layout.width - 1


async def test_each_partition_compacts_its_finished_tasks_and_keeps_what_is_not_folded(
    backend: Backend, tmp_path: Path
) -> None:
    redis, layout = backend.redis, partitioned(backend)
    tasks = await spread(backend, layout, 2)
    commands = Commands(redis, layout)
    for ids in tasks.values():
        await commands.cancel(ids[0])
    await fold_every_partition(redis, layout)
    # One more submit in every partition, after the projector's position there.
    late = {i: (await commands.submit(task_id_in(i), SPEC)).task_id for i in range(layout.width)}
    archive = tmp_path / "log.ndjson.gz"
    for part in await export_layout(redis, layout, archive):
        assert part.last is not None
        await redis.set(layout.partition(part.partition).archived_through, part.last)
    whole = {i: await log_ids(redis, keys) for i, keys in enumerate(layout.partitions)}

    report = await apply_layout_retention(redis, layout, horizon_ms=AHEAD_MS)

    assert report.tasks_compacted == layout.width
    for i, keys in enumerate(layout.partitions):
        got = report.partitions[i]
        assert (got.limited_by, got.tasks_compacted) == ("projection proj", 1)
        [late_submit] = await log_ids(redis, keys)
        assert late_submit == whole[i][-1] and got.events_trimmed == len(whole[i]) - 1
        assert await redis.exists(keys.control(tasks[i][0]), keys.task_log(tasks[i][0])) == 0
        assert await redis.exists(keys.control(tasks[i][1]), keys.control(late[i])) == 2
        assert await redis.hget(keys.projected_task(tasks[i][0]), "status") == b'"cancelled"'
        # The archive and the live log together still tell the partition's whole story.
        assert sorted({*(e for e, _ in read_entries(archive, i)), late_submit}) == sorted(whole[i])
    again = await apply_layout_retention(redis, layout, horizon_ms=AHEAD_MS)
    assert (again.events_trimmed, again.tasks_compacted) == (0, 0)


async def test_an_archive_holds_every_partitions_log_and_gives_each_back(backend: Backend, tmp_path: Path) -> None:
    redis, layout = backend.redis, partitioned(backend)
    await spread(backend, layout, 2)
    archive = tmp_path / "log.ndjson.gz"
    written = await export_layout(redis, layout, archive)
    assert [w.partition for w in written] == list(range(layout.width))
    # Restored into a deployment of its own, entry by entry: every partition as it was.
    copy = Layout(prefix=layout.prefix[:-1] + "-copy}", count=layout.count)
    for i, keys in enumerate(layout.partitions):
        entries = stream_entries(await redis.xrange(keys.events))
        assert (written[i].count, written[i].last) == (len(entries), text(entries[-1][0]))
        for entry_id, fields in read_entries(archive, i):
            await redis.xadd(copy.partition(i).events, fields, id=entry_id)
        assert stream_entries(await redis.xrange(copy.partition(i).events)) == entries
        # What replay folds for partition i: its own entries, none of another partition's.
        source = ArchiveThenLive([archive], nothing_live, partition=i)
        assert await source(None, 10_000, None) == [decode_entry(*e) for e in entries]
    assert sum(1 for _ in read_entries(archive)) == sum(w.count for w in written)


async def nothing_live(after: str | None, count: int, block_ms: int | None) -> list[StoredEvent]:
    return []


async def test_a_one_partition_archive_and_report_are_what_they_were(backend: Backend, tmp_path: Path) -> None:
    redis, layout = backend.redis, Layout(prefix=backend.keys.prefix)
    await spread(backend, layout, 3)
    await export(redis, layout.home, tmp_path / "before.ndjson")
    [written] = await export_layout(redis, layout, tmp_path / "now.ndjson")
    assert (tmp_path / "now.ndjson").read_bytes() == (tmp_path / "before.ndjson").read_bytes()
    header = json.loads((tmp_path / "now.ndjson").read_text().splitlines()[0])
    assert header == {"archive": "backstream-log", "version": 1, "prefix": layout.prefix, "since": "-", "until": "+"}
    # Read as partition 0 of any deployment: a log written before partitions existed.
    assert [i for i, _ in read_entries(tmp_path / "now.ndjson", 0)] == await log_ids(redis, layout.home)
    assert list(read_entries(tmp_path / "now.ndjson", 1)) == [] and written.count == 3
    report = await apply_layout_retention(redis, layout, horizon_ms=0)
    [only] = report.partitions
    assert only.partition is None and "partition" not in msgspec.to_builtins(only)


def backstream(backend: Backend, *args: str, **more_env: str) -> subprocess.CompletedProcess[str]:
    """Run `backstream ARGS` on `backend`'s store as a user would, with `more_env` set too."""
    env = {**os.environ, "REDIS_URL": backend.url or "", "BACKSTREAM_PREFIX": backend.keys.prefix, **more_env}
    return subprocess.run(
        [sys.executable, "-m", "orchestrator.cli", *args], env=env, capture_output=True, text=True, timeout=120
    )


async def test_export_and_retention_commands_cover_every_partition(real_backend: Backend, tmp_path: Path) -> None:
    backend, layout = real_backend, partitioned(real_backend)
    redis = backend.redis
    # The deployment's record, as its first process leaves it: the commands read their layout there.
    recorded = await load_layout(redis, layout.prefix, requested=layout.count, cluster=backend.name == "cluster")
    assert recorded.partitions == layout.partitions
    await spread(backend, layout, 1)
    await fold_every_partition(redis, layout)
    total = sum([await redis.xlen(keys.events) for keys in layout.partitions])
    archive = tmp_path / "log.ndjson"
    exported = backstream(backend, "export", str(archive))
    assert exported.returncode == 0, exported.stderr
    assert exported.stdout == f"exported {total:,} events of {layout.width} partitions to {archive}\n"
    for i, keys in enumerate(layout.partitions):
        assert text(await redis.get(keys.archived_through)) == (await log_ids(redis, keys))[-1]
        assert [e for e, _ in read_entries(archive, i)] == await log_ids(redis, keys)

    applied = backstream(backend, "retention", "--horizon", "0s")
    assert applied.returncode == 0, applied.stderr
    shown = json.loads(applied.stdout)
    assert [p["partition"] for p in shown["partitions"]] == list(range(layout.width))
    assert shown["events_trimmed"] == total and shown["tasks_compacted"] == 0
    assert [await redis.xlen(keys.events) for keys in layout.partitions] == [0] * layout.width
