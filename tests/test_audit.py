"""Audit and replay: schema evolution, determinism, time travel, archive, retention, rebuild."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from consumers.maintenance.archive import export, read_entries
from consumers.maintenance.replay import rebuild, snapshot, verify_replay
from consumers.maintenance.retention import apply_retention
from consumers.projector import Projector
from orchestrator.domain.errors import EventDecodeError, ProjectionGapError
from orchestrator.domain.events import Failed
from orchestrator.domain.state import fold
from orchestrator.domain.timeline import as_of_id, state_as_of
from orchestrator.storage.codec import decode_entry
from orchestrator.storage.hashform import to_hash
from orchestrator.storage.readmodel import Projection
from tests.conftest import Backend
from tests.folding import fold_log, verify
from tests.harness import System
from tests.test_replay import LOGS, entries, write_log

SHORT: dict[str, Any] = {"strategy": "sma_cross", "symbol": "GOOG", "params": {"fast": 10, "slow": 20}}


def folded_bytes(log: list[dict[str, Any]]) -> dict[str, dict[str, bytes]]:
    return {k: to_hash(v) for k, v in fold(decode_entry(e["id"], e["fields"]) for e in log).items()}


def test_old_and_new_schema_versions_fold_to_the_same_state() -> None:
    old = entries("mixed")
    assert any(e["fields"]["type"] == "failed" and e["fields"]["v"] == "1" for e in old)
    new = []
    for e in old:
        if e["fields"]["type"] == "failed":
            data = {**json.loads(e["fields"]["data"]), "retryable": False}
            e = {"id": e["id"], "fields": {**e["fields"], "v": "2", "data": json.dumps(data)}}
        new.append(e)
    assert folded_bytes(old) == folded_bytes(new)
    upcast = decode_entry(old[10]["id"], old[10]["fields"]).event
    assert isinstance(upcast, Failed) and upcast.retryable is False
    transient = {**old[10]["fields"], "data": json.dumps({"error": "boom", "error_type": "OSError"})}
    assert decode_entry("1-0", transient).event.retryable is True  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"type": "teleported"}, "unknown event type 'teleported'"),
        ({"type": "failed", "v": "9"}, "schema version 9 is newer"),
    ],
)
async def test_unreadable_event_stops_the_projector(backend: Backend, fields: dict[str, str], message: str) -> None:
    log = entries("mixed")[:3]
    log.append({"id": "1764380000400-0", "fields": {**log[2]["fields"], "seq": "3", **fields}})
    await write_log(backend, log)
    projection = Projection(backend.redis, backend.keys)
    with pytest.raises(EventDecodeError, match=message):
        await fold_log(projection, batch_size=2)
    assert await projection.position() == log[1]["id"]  # stopped before the batch it cannot read


_FOLD_IN_A_PROCESS = """
import asyncio, hashlib, json, sys, fakeredis
from tests.folding import fold_log
from consumers.maintenance.replay import snapshot
from orchestrator.storage.keys import Keys
from orchestrator.storage.readmodel import Projection
async def main():
    redis = fakeredis.aioredis.FakeRedis(server=fakeredis.FakeServer(), protocol=2)
    keys = Keys(prefix="{det}")
    for line in open(sys.argv[1]):
        e = json.loads(line)
        await redis.xadd(keys.events, e["fields"], id=e["id"])
    await fold_log(Projection(redis, keys), batch_size=int(sys.argv[2]))
    snap = await snapshot(redis, keys)
    digest = hashlib.sha256()
    for key in sorted(snap):
        for field in sorted(snap[key]):
            digest.update(f"{key}\\0{field}\\0".encode() + snap[key][field] + b"\\0")
    print(digest.hexdigest())
asyncio.run(main())
"""


def test_folding_is_deterministic_across_processes() -> None:
    digests = set()
    for seed, batch in (("1", "1"), ("2", "1000"), ("random", "3")):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        out = subprocess.run(
            [sys.executable, "-c", _FOLD_IN_A_PROCESS, str(LOGS / "mixed.jsonl"), batch],
            env=env,
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        )
        digests.add(out.stdout.strip().splitlines()[-1])
    assert len(digests) == 1 and len(digests.pop()) == 64


async def test_state_as_of_each_event_equals_the_projection_right_after_it(backend: Backend) -> None:
    log = entries("mixed")
    await write_log(backend, log)
    projection = Projection(backend.redis, backend.keys)
    projector = Projector(projection, batch_size=1)
    events = [decode_entry(e["id"], e["fields"]) for e in log]
    for stored in events:
        assert await projector.step() == 1
        task_id = stored.event.task_id
        captured = await backend.redis.hgetall(backend.keys.projected_task(task_id))
        mine = [e for e in events if e.event.task_id == task_id]
        as_of = state_as_of(mine, as_of_id(stored.id))
        assert as_of is not None
        assert {k.decode(): v for k, v in captured.items()} == to_hash(as_of)


async def test_as_of_over_http(backend: Backend) -> None:
    system = System(backend)
    async with system.client() as http:
        task_id = (await http.post("/api/backtests", json=SHORT)).json()["task_id"]
        await system.run_workers()
        history = (await http.get(f"/api/backtests/tasks/{task_id}/events")).json()["events"]
        statuses = ("queued", "running", "completed")
        ms = [int(event["id"].split("-")[0]) for event in history]
        for event, status, event_ms in zip(history, statuses, ms, strict=True):
            then = (await http.get(f"/api/backtests/tasks/{task_id}", params={"as_of": event["id"]})).json()
            assert then["status"] == status
            # A time covers its whole millisecond: the state after the last event within it.
            at_time = (await http.get(f"/api/backtests/tasks/{task_id}", params={"as_of": event["time"]})).json()
            assert at_time["status"] == statuses[max(i for i, m in enumerate(ms) if m <= event_ms)]
        before = await http.get(f"/api/backtests/tasks/{task_id}", params={"as_of": "2001-01-01T00:00:00Z"})
        assert before.status_code == 404
        bad = await http.get(f"/api/backtests/tasks/{task_id}", params={"as_of": "yesterday"})
        assert bad.status_code == 422 and bad.json()["fields"][0]["field"] == "as_of"


async def test_archive_plus_live_log_replays_as_one_history(backend: Backend, tmp_path: Path) -> None:
    log = entries("mixed")
    await write_log(backend, log)
    await fold_log(Projection(backend.redis, backend.keys))
    archive = tmp_path / "log.ndjson.gz"
    count, last = await export(backend.redis, backend.keys, archive)
    assert count == len(log) and last == log[-1]["id"]
    assert [i for i, _ in read_entries(archive)] == [e["id"] for e in log]
    # Trim the first half of the live log: alone it no longer tells the whole story...
    await backend.redis.xtrim(backend.keys.events, minid=log[8]["id"], approximate=False)
    with pytest.raises(ProjectionGapError):
        await verify(backend.redis, backend.keys)
    # ...but the archive and the live log together do.
    assert await verify(backend.redis, backend.keys, archives=[archive]) == []


@pytest.mark.redis
async def test_retention_trims_only_what_is_archived_and_projected(real_backend: Backend, tmp_path: Path) -> None:
    backend = real_backend
    system = System(backend)
    async with system.client() as http:
        ids = [(await http.post("/api/backtests", json=SHORT)).json()["task_id"] for _ in range(20)]
        await system.run_workers()
        unfinished = (await http.post("/api/backtests", json=SHORT)).json()["task_id"]
        keys = backend.keys
        nothing = await apply_retention(backend.redis, keys, horizon_ms=0)
        assert nothing.keep_from is None and nothing.limited_by == "archive"
        await export(backend.redis, keys, tmp_path / "a.ndjson")
        await backend.redis.set(keys.archived_through, (await backend.redis.xrevrange(keys.events, count=1))[0][0])
        # The projector has not folded the last submit yet: retention stops below it.
        log_memory_before = await backend.redis.memory_usage(keys.events)
        report = await apply_retention(backend.redis, keys, horizon_ms=0)
        assert report.limited_by == "projection proj"
        assert report.tasks_compacted == 20 and report.events_trimmed == 60
        # The report's figures are the whole server's (shared here, so they move with other
        # clients); the log's own memory is this test's to check.
        assert isinstance(report.used_memory_before, int) and isinstance(report.used_memory_after, int)
        assert await backend.redis.memory_usage(keys.events) < log_memory_before
        assert await backend.redis.xlen(keys.events) == 1
        for task_id in ids:
            task = (await http.get(f"/api/backtests/tasks/{task_id}")).json()
            assert task["status"] == "completed"
            assert (await http.get(f"/api/backtests/tasks/{task_id}/result")).status_code == 200
        # A compacted task is still a finished one: cancelling it is refused, not "unknown".
        refused = await http.delete(f"/api/backtests/tasks/{ids[0]}")
        assert refused.status_code == 400 and refused.json()["fields"][0]["message"] == "task is completed"
        archived = (await http.get(f"/api/backtests/tasks/{ids[0]}/events")).json()["archived"]
        assert archived["events"] == 3 and archived["log_starts_at"] == report.keep_from
        assert (await http.get(f"/api/backtests/tasks/{unfinished}")).json()["status"] == "queued"
        await system.project()
        assert await verify(backend.redis, keys, archives=[tmp_path / "a.ndjson"]) == []


@pytest.mark.redis
async def test_rebuild_under_live_load_switches_atomically(real_backend: Backend) -> None:
    backend = real_backend
    system = System(backend, progress_interval_ms=10)
    async with system.client() as http:
        ids = [(await http.post("/api/backtests", json=SHORT)).json()["task_id"] for _ in range(30)]
        await system.run_workers()
        worker = system.worker(concurrency=2)
        projector = Projector(system.projection)
        background = [asyncio.create_task(worker.run()), asyncio.create_task(projector.run())]
        missing: list[str] = []

        async def load() -> None:
            for _ in range(60):
                ids.append((await http.post("/api/backtests", json=SHORT)).json()["task_id"])
                for task_id in ids[-10:]:
                    if (await http.get(f"/api/backtests/tasks/{task_id}")).status_code != 200:
                        missing.append(task_id)
                page = (await http.get("/api/backtests/tasks?limit=5")).json()["tasks"]
                missing.extend(t["task_id"] for t in page if t["task_id"] not in ids)

        rebuilt, _ = await asyncio.gather(rebuild(backend.redis, backend.keys), load())
        await asyncio.wait_for(_drain(system, worker, projector, background), timeout=60)
        assert missing == []
        assert rebuilt.projection.startswith("proj-")
        assert (await backend.redis.get(backend.keys.live_projection)).decode() == rebuilt.projection
        assert await backend.redis.exists(backend.keys.with_projection("proj").projected_index()) == 0
        checked = await verify_replay(backend.redis, backend.keys)
        assert checked.differences == [] and checked.projection == rebuilt.projection
        live = await snapshot(backend.redis, backend.keys.with_projection(rebuilt.projection))
        assert len([k for k in live if k.startswith("task:")]) == len(ids)


async def test_reads_of_one_task_follow_a_rebuild(backend: Backend) -> None:
    system = System(backend)
    async with system.client() as http:
        task_id = (await http.post("/api/backtests", json=SHORT)).json()["task_id"]
        await system.run_workers()
        reader = Projection(backend.redis, backend.keys, follow_live=True)
        assert (await reader.current(task_id)).status == "completed"
        rebuilt = await rebuild(backend.redis, backend.keys)
        # The old projection is deleted by now: a reader that only reads single tasks must
        # have moved to the new one, not fall back to folding the task's whole log.
        assert (await reader.current(task_id)).status == "completed"
        assert reader.keys.projection_name == rebuilt.projection
        assert (await http.get(f"/api/backtests/tasks/{task_id}")).json()["status"] == "completed"


async def _drain(system: System, worker: Any, projector: Projector, background: list[Any]) -> None:
    worker.stop()
    await background[0]
    while (await system.projection.position()) != (
        await system.backend.redis.xrevrange(system.backend.keys.events, count=1)
    )[0][0].decode():
        await projector.step()
    projector.stop()
    background[1].cancel()
    await asyncio.gather(background[1], return_exceptions=True)
