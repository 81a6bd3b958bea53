"""The read side over partitions: lists, dead letters, the all-tasks SSE feed and /metrics merge
every partition's keys, with cursors that stay exact (P=4 on a standalone server, P=16 on the
cluster), and an id naming a partition the deployment lacks is an unknown task."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import re
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from api.app import create_app
from consumers.projector import Projector
from orchestrator.cli.main import build_parser
from orchestrator.domain.events import Cancelled, Event, Progress, Started
from orchestrator.domain.ids import id_order
from orchestrator.domain.spec import BacktestSpec
from orchestrator.domain.state import TaskState
from orchestrator.settings import Settings
from orchestrator.storage.codec import text
from orchestrator.storage.commands import Commands
from orchestrator.storage.hashform import index_member
from orchestrator.storage.keys import WORKER_GROUP
from orchestrator.storage.partitions import Layout, load_layout, partition_of, task_id_in
from orchestrator.storage.readmodel import BadCursor, LogCursor, Projection, ReadModel
from tests.conftest import Backend
from tests.harness import System
from tests.log_entries import entry_fields
from tests.processes import InProcessServer
from tests.test_live import sse
from tests.test_metrics import value

pytestmark = pytest.mark.also_on_cluster

DEADLINE_S = 20
SYMBOLS = ("GOOG", "AAPL", "MSFT")


def spec(i: int) -> BacktestSpec:
    return BacktestSpec(strategy="sma_cross", symbol=SYMBOLS[i % 3], params={"fast": 10, "slow": 20 + i})


@pytest.fixture
async def layout(backend: Backend) -> Layout:
    """The cluster's 16 partitions, or 4 on a standalone server (fake or real), recorded as the
    deployment's (what the API reads as it starts)."""
    count = backend.layout.count if backend.layout.count > 1 else 4
    return await load_layout(backend.redis, backend.keys.prefix, requested=count, cluster=count > 4)


async def submit(backend: Backend, layout: Layout, count: int, start: int = 0) -> list[str]:
    commands = Commands(backend.redis, layout)
    return [(await commands.submit(None, spec(i))).task_id for i in range(start, start + count)]


async def project(backend: Backend, layout: Layout) -> None:
    """Fold every partition's log into its projection (one projector per partition)."""
    for keys in layout.partitions:
        await Projector(Projection(backend.redis, keys)).run(burst=True)


async def every_page(reads: ReadModel, limit: int, **query: Any) -> list[TaskState]:
    listed: list[TaskState] = []
    cursor = None
    while True:
        page, cursor = await reads.list_tasks(limit=limit, cursor=cursor, **query)
        listed += page
        if cursor is None:
            return listed


async def test_the_list_pages_every_task_once_newest_first_over_the_partitions(
    backend: Backend, layout: Layout
) -> None:
    task_ids = await submit(backend, layout, 90)
    assert len({partition_of(t) for t in task_ids}) > 2  # spread over the partitions
    await project(backend, layout)
    reads = ReadModel(backend.redis, layout)

    listed = await every_page(reads, 7, status=None)
    assert sorted(s.task_id for s in listed) == sorted(task_ids)  # each exactly once
    members = [index_member(s) for s in listed]
    assert members == sorted(members, reverse=True)  # newest first by submit id, ties by task id
    orders = [id_order(s.submitted_id) for s in listed]
    assert orders == sorted(orders, reverse=True)
    assert await every_page(reads, 500, status="queued") == listed  # one page holds them all

    # Filtered by symbol (no index): every match exactly once, however small the scan is.
    goog = [s for s in listed if s.spec.symbol == "GOOG"]
    assert await every_page(reads, 4, status=None, symbol="goog", scan=11, batch=5) == goog
    sweep = [s for s in listed if s.spec.symbol == "MSFT" and s.spec.strategy == "sma_cross"]
    assert await every_page(reads, 100, status="queued", symbol="MSFT", strategy="sma_cross", batch=3) == sweep
    assert (await reads.all_tasks("queued")) == listed[::-1]  # oldest submit first


async def test_an_id_naming_a_partition_the_deployment_lacks_is_an_unknown_task(
    backend: Backend, layout: Layout
) -> None:
    system = System(backend, partitions=layout.count)
    stranger = task_id_in(layout.width + 3)
    reads = ReadModel(backend.redis, layout)
    assert await reads.current(stranger) is None and await reads.history(stranger) is None
    assert await reads.task_events(stranger) == [] and await reads.result(stranger) is None
    async with system.client() as http:
        for method, path in (("GET", ""), ("GET", "/events"), ("GET", "/stream"), ("DELETE", ""), ("POST", "/retry")):
            reply = await http.request(method, f"/api/backtests/tasks/{stranger}{path}")
            assert reply.status_code == 404 and reply.json()["error"] == "task_not_found", path
        assert (await http.get(f"/api/backtests/tasks/{stranger}?as_of=0")).status_code == 404
        assert (await http.get(f"/tasks/{stranger}")).status_code == 404  # the dashboard's page


async def test_dead_letters_merge_newest_first_and_a_page_never_splits_an_id(backend: Backend, layout: Layout) -> None:
    # Three partitions' dead-letter streams, two of them holding letters of the same ids.
    written = {0: ["1-0", "3-0", "5-0"], 1: ["2-0", "3-0"], 2: ["3-0", "4-0", "5-0"]}
    for partition, ids in written.items():
        for entry_id in ids:
            fields = {"task_id": task_id_in(partition), "attempt": 1, "reason": "boom", "failed_event": entry_id}
            await backend.redis.xadd(layout.partition(partition).dead_letters, fields, id=entry_id)
    reads = ReadModel(backend.redis, layout)
    everything = sorted(((i, p) for p, ids in written.items() for i in ids), key=lambda e: id_order(e[0]))[::-1]
    for limit in (1, 2, 3, 100):
        seen: list[tuple[str, int]] = []
        before = None
        while page := await reads.dead_letters(limit=limit, before=before):
            assert len(page) < limit + layout.width
            seen += [(letter["id"], partition_of(letter["task_id"])) for letter in page]
            before = page[-1]["id"]
        assert sorted(seen) == sorted(everything) and len(seen) == len(set(seen)), limit
        assert [id_order(i) for i, _ in seen] == [id_order(i) for i, _ in everything]


@contextlib.asynccontextmanager
async def served(system: System) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(system.settings, checker=system.checker, catalog=system.catalog, connections=system.connections)
    async with InProcessServer(app) as server, httpx.AsyncClient(base_url=server.url, timeout=DEADLINE_S) as http:
        yield http


async def collect(http: httpx.AsyncClient, count: int, headers: dict[str, str]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    async with asyncio.timeout(DEADLINE_S), http.stream("GET", "/api/stream", headers=headers) as response:
        assert response.status_code == 200, await response.aread()
        async for event in sse(response):
            out.append(event)
            if len(out) == count:
                return out
    return out


async def test_the_all_tasks_feed_resumes_from_a_position_per_partition(backend: Backend, layout: Layout) -> None:
    system = System(backend, partitions=layout.count)
    first = await submit(backend, layout, 24)
    async with served(system) as http:
        head = await collect(http, 10, {"Last-Event-ID": "0"})
        # Ids are cursors: one position per partition, each event's own among them.
        for event in head:
            positions = event["id"].split(",")
            assert len(positions) == layout.width
            own = positions[partition_of(event["data"]["task_id"])]
            assert id_order(own) == id_order(event["data"]["id"])
        # Away for a while: more tasks come, in every partition.
        later = await submit(backend, layout, 24, start=24)
        rest = await collect(http, 48 - 10, {"Last-Event-ID": head[-1]["id"]})
        # Live: read from every partition's stream as it comes.
        reading = asyncio.create_task(collect(http, 5, {"Last-Event-ID": rest[-1]["id"]}))
        live = await submit(backend, layout, 5, start=48)
        tail = await reading
        bad = [
            await http.get("/api/stream", headers={"Last-Event-ID": raw})
            for raw in ("yesterday", ",".join(["0"] * (layout.width + 1)), "1-0,x")
        ]
    got = [(e["data"]["task_id"], e["data"]["id"]) for e in head + rest + tail]
    assert len(got) == len(set(got))  # nothing twice
    assert sorted(t for t, _ in got) == sorted(first + later + live)  # nothing lost
    for reply in bad:
        assert reply.status_code == 422 and reply.json()["fields"][0]["field"] == "Last-Event-ID"


async def test_metrics_sum_the_partitions(backend: Backend, layout: Layout) -> None:
    system = System(backend, partitions=layout.count)
    task_ids = await submit(backend, layout, 40)
    await project(backend, layout)
    async with system.client() as http:
        cancelled = task_ids[:3]
        for task_id in cancelled:
            assert (await http.delete(f"/api/backtests/tasks/{task_id}")).status_code == 200
        await project(backend, layout)
        text = (await http.get("/metrics")).text
        listed = (await http.get("/api/backtests/tasks?status=queued&limit=100")).json()["tasks"]
    samples = {
        (s.name, frozenset(s.labels.items())): s.value for f in text_string_to_metric_families(text) for s in f.samples
    }
    work = sum([await backend.redis.xlen(keys.work) for keys in layout.partitions])
    assert value(samples, "backstream_tasks", status="queued") == 37 == len(listed)
    assert value(samples, "backstream_tasks", status="cancelled") == 3
    assert value(samples, "backstream_tasks_submitted_total") == 40
    assert value(samples, "backstream_tasks_cancelled_total", previous_status="queued") == 3
    assert value(samples, "backstream_log_entries") == 43
    assert value(samples, "backstream_projector_lag_events") == 0
    assert value(samples, "backstream_work_entries") == work > 0
    assert {t["task_id"] for t in listed} == set(task_ids[3:])


async def test_consumer_groups_of_every_partition_are_reported_as_one(backend: Backend, layout: Layout) -> None:
    await submit(backend, layout, 30)
    taken = 0
    for keys in layout.partitions:
        await backend.redis.xgroup_create(keys.work, WORKER_GROUP, id="0", mkstream=True)
        reply = await backend.redis.xreadgroup(WORKER_GROUP, "w1", {keys.work: ">"}, count=1)
        taken += len(reply[0][1]) if reply else 0
    gauges = await ReadModel(backend.redis, layout).gauges()
    [group] = gauges.groups
    assert (group["pending"], group["lag"], group["consumers"]) == (taken, 30 - taken, 1)
    [w1] = gauges.consumers[WORKER_GROUP]
    assert w1["pending"] == taken > 1
    assert gauges.tasks["queued"] == 0 and gauges.lag_events == 30  # nothing projected yet


def test_a_log_cursor_is_the_plain_stream_id_with_one_partition_and_a_list_with_more() -> None:
    one = LogCursor.parse("1700000000000-5", 1)
    assert str(one) == "1700000000000-5" and str(LogCursor.parse("0", 1)) == "0-0"
    many = LogCursor.parse("1700000000000-5,0,1700000000002", 4)
    assert many.positions == ["1700000000000-5", "0-0", "1700000000002-0", "0-0"]
    assert str(many) == "1700000000000-5,0,1700000000002,0"
    assert LogCursor.parse(str(many), 4) == many
    # A plain id is that position in every partition (a time, as `--since` gives it).
    assert LogCursor.parse("1700000000000", 3).positions == ["1700000000000-0"] * 3
    assert many.advance(1, "5-1") and not many.advance(1, "5-0") and many.passed(1, "5-1")
    for bad in ("", "yesterday", "1-0,,2-0", "1-0,2-0,3-0,4-0,5-0"):
        with pytest.raises(BadCursor):
            LogCursor.parse(bad, 4)


async def test_the_dashboard_lists_every_partition_and_follows_from_each_one_s_projection(
    backend: Backend, layout: Layout
) -> None:
    system = System(backend, partitions=layout.count)
    task_ids = await submit(backend, layout, 12)
    await project(backend, layout)
    async with system.client() as http:
        page = (await http.get("/")).text
        workers = await http.get("/workers")
    assert all(t[:8] in page for t in task_ids)
    [since] = re.findall(r'data-since="([^"]*)"', page)
    positions = LogCursor.parse(since, layout.width)
    assert positions == await ReadModel(backend.redis, layout).latest()  # everything is projected
    assert since.count(",") == layout.width - 1
    assert workers.status_code == 200 and since in workers.text


async def test_backstream_tail_follows_every_partition(
    backend: Backend, layout: Layout, capsys: pytest.CaptureFixture[str]
) -> None:
    system = System(backend, partitions=layout.count)
    before = await submit(backend, layout, 12)
    async with served(system) as http:
        settings = Settings(api_url=str(http.base_url))
        argv = ["tail", "--since", "0", "--count", "16", "--json"]
        tail = asyncio.create_task(asyncio.to_thread(_run, build_parser().parse_args(argv), settings))
        after = await submit(backend, layout, 4, start=12)  # while it follows: the live feed's
        assert await asyncio.wait_for(tail, DEADLINE_S) == 0
    printed = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert sorted(e["task_id"] for e in printed) == sorted(before + after)
    assert {e["type"] for e in printed} == {"submitted"}


def _run(args: argparse.Namespace, settings: Settings) -> int:
    return int(args.run(args, settings))


async def test_a_task_stream_is_not_hidden_by_newer_ids_of_another_partition(backend: Backend, layout: Layout) -> None:
    """The feed reads each partition on its own, so it may bring another partition's event with a
    newer id before this task's own: the task's stream still gets every event of its task. (It
    dropped them: under load the cluster's live suite waited for a `completed` it never got.)"""
    system = System(backend, partitions=layout.count)
    [task_id] = await submit(backend, layout, 1)
    own = layout.of(task_id).events
    other = layout.partition((layout.partition_index(task_id) + 1) % layout.width).events
    stranger = task_id_in((layout.partition_index(task_id) + 1) % layout.width)

    async def write(stream: str, event: Event, stream_id: str = "*") -> str:
        return text(await backend.redis.xadd(stream, entry_fields(event), id=stream_id))

    async with (
        served(system) as http,
        asyncio.timeout(DEADLINE_S),
        http.stream("GET", f"/api/backtests/tasks/{task_id}/stream") as task_stream,
        http.stream("GET", "/api/stream") as all_stream,
    ):
        task_events, all_events = sse(task_stream), sse(all_stream)
        assert (await anext(task_events))["data"]["type"] == "submitted"  # subscribed to the feed
        # Until the all-tasks stream follows the feed itself, what reaches it reaches the task's.
        for seq in (2, 3):
            probe = await write(other, Progress(task_id=stranger, seq=seq, attempt=1, progress=seq / 10))
            while (await anext(all_events))["data"]["id"] != probe:
                pass
        ahead = f"{(await backend.redis.time())[0] * 1000 + 3_600_000}-0"  # an hour ahead
        await write(other, Progress(task_id=stranger, seq=4, attempt=1, progress=0.9), ahead)
        while (await anext(all_events))["data"]["id"] != ahead:
            pass
        # Only now this task's own events, older than that one.
        await write(own, Started(task_id=task_id, seq=2, attempt=1, worker="w"))
        await write(own, Cancelled(task_id=task_id, seq=3, attempt=1, previous_status="running"))
        rest = [event async for event in task_events]
    assert [e["data"]["type"] for e in rest[:2]] == ["started", "cancelled"]
    assert rest[-1]["event"] == "end"
