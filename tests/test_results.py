"""Full results in the results store (a local directory and a real S3 server on loopback):
stored as Parquet plus a manifest, named by the `completed` event, served in JSON, CSV and
Parquet with ETags, ranges and sweep queries; old results in Redis stay readable."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import time
import urllib.request
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from consumers.engine.datasets import Catalog
from consumers.engine.runner import start_run
from consumers.maintenance.archive import export
from consumers.maintenance.result_retention import ResultPolicy, apply_result_retention
from consumers.maintenance.retention import apply_retention
from orchestrator.domain.spec import BacktestSpec
from orchestrator.domain.state import fold
from orchestrator.storage.codec import decode_entry, encode_json
from orchestrator.storage.results.encoding import RESULT_SCHEMA_VERSION
from orchestrator.storage.results.location import results_for
from tests.conftest import Backend
from tests.harness import System
from tests.objectstores import S3Server
from tests.processes import free_port

pytestmark = pytest.mark.redis

SINGLE: dict[str, Any] = {
    "strategy": "sma_cross",
    "symbol": "GOOG",
    "params": {"fast": 10, "slow": 20},
    "start": "2005-01-01",
    "end": "2012-12-31",
    "cash": 10000,
    "commission": 0.002,
}
SWEEP: dict[str, Any] = {
    **SINGLE,
    "params": {"fast": [5, 10, 15, 20], "slow": [20, 40, 60, 80, 100]},
    "objective": "sharpe",
}


@pytest.fixture(scope="module")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    server = S3Server(tmp_path_factory.mktemp("weed"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


def make_bucket(server: S3Server) -> str:
    bucket = "t" + uuid.uuid4().hex[:12]
    urllib.request.urlopen(urllib.request.Request(f"{server.endpoint}/{bucket}", method="PUT"), timeout=10).close()
    return bucket


def s3_options(server: S3Server) -> dict[str, str]:
    return {
        "AWS_ENDPOINT_URL": server.endpoint,
        "AWS_ACCESS_KEY_ID": "any",
        "AWS_SECRET_ACCESS_KEY": "any",
        "AWS_REGION": "us-east-1",
    }


@pytest.fixture(params=["file", "s3"])
async def system(request: pytest.FixtureRequest, real_backend: Backend, tmp_path: Path) -> AsyncIterator[System]:
    """The real app, worker and projector on real Redis, with results in a local directory or
    in a bucket of a real S3 server."""
    if request.param == "file":
        yield System(real_backend, results_url=f"file://{tmp_path}/results")
    else:
        server: S3Server = request.getfixturevalue("s3_server")
        yield System(
            real_backend, results_url=f"s3://{make_bucket(server)}/results", results_options=s3_options(server)
        )


def engine_detail(body: dict[str, Any]) -> dict[str, Any]:
    """What the engine computes for a request: the full result the API served from Redis."""
    import msgspec

    run = start_run(msgspec.convert(body, BacktestSpec), Catalog.from_env_dir(None))
    while not run.done:
        run.advance(1.0)
    detail: dict[str, Any] = json.loads(encode_json(run.outcome().detail))
    return detail


async def submit_and_run(system: System, http: Any, body: dict[str, Any]) -> str:
    task_id: str = (await http.post("/api/backtests", json=body)).json()["task_id"]
    await system.run_workers()
    return task_id


async def test_full_result_lives_in_the_store_and_reads_back_as_the_same_json(system: System) -> None:
    async with system.client() as http:
        single = await submit_and_run(system, http, SINGLE)
        sweep = await submit_and_run(system, http, SWEEP)
        for task_id, body in ((single, SINGLE), (sweep, SWEEP)):
            task = (await http.get(f"/api/backtests/tasks/{task_id}")).json()
            assert task["status"] == "completed" and task["result_location"] == "store"
            # Redis holds no full result: only the summary and the address, in the event.
            assert await system.backend.redis.exists(system.backend.keys.result(task_id)) == 0
            completed = [
                e for e in await system.projection.task_events(task_id) if type(e.event).__name__ == "Completed"
            ]
            ref = completed[0].event.result_ref  # type: ignore[union-attr]
            assert ref is not None and ref.key.startswith(f"{task_id}/1-") and ref.schema_version == 1
            got = await http.get(f"/api/backtests/tasks/{task_id}/result")
            assert got.status_code == 200 and got.headers["content-type"] == "application/json"
            assert got.json() == engine_detail(body)
            results = results_for(system.settings)
            assert results is not None
            manifest = await results.manifest(ref)
            assert manifest["schema_version"] == RESULT_SCHEMA_VERSION and manifest["task_id"] == task_id
            for name, entry in manifest["tables"].items():
                data = await results.file_bytes(ref, entry["file"])
                assert hashlib.sha256(data).hexdigest() == entry["sha256"] and len(data) == entry["bytes"]
                assert pq.read_table(io.BytesIO(data)).num_rows == entry["rows"] == ref.tables[name]
            expected_tables = {"equity", "trades", "sweep"} if task_id == sweep else {"equity", "trades"}
            assert set(manifest["tables"]) == expected_tables
        # The sweep's summary carries its top rows by the objective, with the main metrics.
        summary = (await http.get(f"/api/backtests/tasks/{sweep}")).json()["result"]
        table = engine_detail(SWEEP)["table"]
        assert [row["params"] for row in summary["top"]] == [row["params"] for row in table[:10]]
        assert summary["top"][0]["sharpe"] == table[0]["sharpe"] and "num_trades" in summary["top"][0]


async def test_tables_download_as_json_csv_and_parquet_with_etag_and_ranges(system: System) -> None:
    async with system.client() as http:
        task_id = await submit_and_run(system, http, SINGLE)
        url = f"/api/backtests/tasks/{task_id}/result"
        trades = engine_detail(SINGLE)["trades"]
        as_json = await http.get(url, params={"table": "trades"})
        assert as_json.json() == trades
        as_csv = await http.get(url, params={"table": "trades", "format": "csv"})
        assert as_csv.headers["content-type"].startswith("text/csv")
        rows = list(csv.DictReader(io.StringIO(as_csv.text)))
        assert [float(r["pnl"]) for r in rows] == pytest.approx(trades["pnl"], rel=1e-15)
        assert [r["entry_time"] for r in rows] == trades["entry_time"]
        as_parquet = await http.get(url, params={"table": "equity", "format": "parquet"})
        equity = pq.read_table(io.BytesIO(as_parquet.content)).to_pydict()
        assert equity == engine_detail(SINGLE)["equity_curve"]
        assert "attachment" in as_parquet.headers["content-disposition"]
        # ETag: the same query again is 304 without a body; another query has another tag.
        etag = as_parquet.headers["etag"]
        again = await http.get(url, params={"table": "equity", "format": "parquet"}, headers={"If-None-Match": etag})
        assert again.status_code == 304 and again.content == b""
        assert as_csv.headers["etag"] != etag
        # Ranges: bytes 100-199 of the Parquet file, and the last 50, read from the store.
        part = await http.get(url, params={"table": "equity", "format": "parquet"}, headers={"Range": "bytes=100-199"})
        assert part.status_code == 206 and part.content == as_parquet.content[100:200]
        size = len(as_parquet.content)
        assert part.headers["content-range"] == f"bytes 100-199/{size}"
        tail = await http.get(url, params={"table": "equity", "format": "parquet"}, headers={"Range": "bytes=-50"})
        assert tail.status_code == 206 and tail.content == as_parquet.content[-50:]
        beyond = await http.get(
            url, params={"table": "equity", "format": "parquet"}, headers={"Range": f"bytes={size}-"}
        )
        assert beyond.status_code == 416 and beyond.headers["content-range"] == f"bytes */{size}"
        csv_part = await http.get(url, params={"table": "trades", "format": "csv"}, headers={"Range": "bytes=0-9"})
        assert csv_part.status_code == 206 and csv_part.content == as_csv.content[:10]
        # A single backtest has no sweep table: 404 naming the table.
        missing = await http.get(url, params={"table": "sweep"})
        assert missing.status_code == 404 and missing.json()["fields"][0]["field"] == "table"


async def test_sweep_table_sorts_filters_and_pages_over_http(system: System) -> None:
    async with system.client() as http:
        task_id = await submit_and_run(system, http, SWEEP)
        url = f"/api/backtests/tasks/{task_id}/result"
        table = engine_detail(SWEEP)["table"]
        got = await http.get(
            url, params={"table": "sweep", "sort": "-return_pct", "limit": "5", "where": "num_trades>=10"}
        )
        assert got.status_code == 200
        kept = [r for r in table if r["num_trades"] is not None and r["num_trades"] >= 10]
        expected = sorted(kept, key=lambda r: -r["return_pct"])[:5]
        assert got.json() == expected and got.headers["x-matched-rows"] == str(len(kept))
        two = await http.get(
            url, params={"table": "sweep", "where": "params.fast==10,max_drawdown_pct>-100", "sort": "params.slow"}
        )
        assert [r["params"] for r in two.json()] == sorted(
            (r["params"] for r in table if r["params"]["fast"] == 10), key=lambda p: p["slow"]
        )
        paged = await http.get(url, params={"table": "sweep", "sort": "-return_pct", "limit": "3", "offset": "2"})
        assert paged.json() == sorted(table, key=lambda r: -r["return_pct"])[2:5]
        as_csv = await http.get(url, params={"table": "sweep", "format": "csv", "limit": "2"})
        header = as_csv.text.splitlines()[0].split(",")
        assert '"params.fast"' in header and '"sharpe"' in header and len(as_csv.text.splitlines()) == 3
        for params, field in (
            ({"where": "num_trades>=10;drop"}, "where"),
            ({"where": "__import__('os')>1"}, "where"),
            ({"where": "nosuch>1"}, "where"),
            ({"where": ""}, "where"),
            ({"sort": "-nosuch"}, "sort"),
            ({"limit": "0"}, "limit"),
            ({"limit": "ten"}, "limit"),
            ({"offset": "-1"}, "offset"),
        ):
            bad = await http.get(url, params={"table": "sweep", **params})
            assert bad.status_code == 422, (params, bad.text)
            assert bad.json()["fields"][0]["field"] == field
        for params, field in (
            ({"format": "xml"}, "format"),
            ({"table": "nope"}, "table"),
            ({"format": "csv"}, "table"),
            ({"table": "trades", "sort": "pnl"}, "sort"),
            ({"bogus": "1"}, "bogus"),
        ):
            bad = await http.get(url, params=params)
            assert bad.status_code == 422 and bad.json()["fields"][0]["field"] == field


async def test_a_result_stored_in_redis_stays_readable_in_every_format(real_backend: Backend, tmp_path: Path) -> None:
    before = System(real_backend)  # no results store: the full result goes to Redis, as it used to
    async with before.client() as http:
        task_id = await submit_and_run(before, http, SWEEP)
    assert await real_backend.redis.exists(real_backend.keys.result(task_id)) == 1
    after = System(real_backend, results_url=f"file://{tmp_path}/results")
    async with after.client() as http:
        url = f"/api/backtests/tasks/{task_id}/result"
        assert (await http.get(f"/api/backtests/tasks/{task_id}")).json()["result_location"] == "redis"
        assert (await http.get(url)).json() == engine_detail(SWEEP)
        rows = (await http.get(url, params={"table": "sweep", "sort": "-sharpe", "limit": "3"})).json()
        assert rows == engine_detail(SWEEP)["table"][:3]
        parquet = await http.get(url, params={"table": "trades", "format": "parquet"})
        assert pq.read_table(io.BytesIO(parquet.content)).to_pydict() == engine_detail(SWEEP)["best"]["trades"]
        etag = parquet.headers["etag"]
        again = await http.get(url, params={"table": "trades", "format": "parquet"}, headers={"If-None-Match": etag})
        assert again.status_code == 304


async def events_of(system: System, task_id: str) -> list[str]:
    return [str(type(e.event).__struct_config__.tag) for e in await system.projection.task_events(task_id)]


async def keys_in_store(system: System, key: str) -> list[str]:
    results = results_for(system.settings)
    assert results is not None
    return [o.path async for o in results.objects(f"{key}/")]


async def test_retention_deletes_by_count_size_and_age_records_it_and_reads_say_410(system: System) -> None:
    results = results_for(system.settings)
    assert results is not None
    async with system.client() as http:
        tasks = []
        for fast in (5, 10, 15):  # oldest first
            tasks.append(await submit_and_run(system, http, {**SINGLE, "params": {"fast": fast, "slow": 30}}))
        states = await system.projection.load(tasks)
        refs = {t: states[t].result_ref for t in tasks}
        assert all(refs.values())

        async def retain(policy: ResultPolicy, **kw: Any) -> list[tuple[str, str]]:
            report = await apply_result_retention(system.commands, system.projection, results, policy, **kw)
            await system.project()
            return [(d.task_id, d.reason) for d in report.deleted]

        # Dry run: says what would go, writes nothing.
        report = await apply_result_retention(
            system.commands, system.projection, results, ResultPolicy(max_count=2), dry_run=True
        )
        assert [(d.task_id, d.reason) for d in report.deleted] == [(tasks[0], "count")]
        assert await keys_in_store(system, refs[tasks[0]].key) != []  # type: ignore[union-attr]
        assert await retain(ResultPolicy(max_count=2)) == [(tasks[0], "count")]
        assert (await events_of(system, tasks[0]))[-2:] == ["completed", "result_deleted"]
        assert await keys_in_store(system, refs[tasks[0]].key) == []  # type: ignore[union-attr]
        gone = await http.get(f"/api/backtests/tasks/{tasks[0]}/result")
        assert gone.status_code == 410 and gone.json()["error"] == "result_deleted"
        assert gone.json()["fields"][0]["field"] == "task_id"
        gone_csv = await http.get(
            f"/api/backtests/tasks/{tasks[0]}/result", params={"table": "trades", "format": "csv"}
        )
        assert gone_csv.status_code == 410
        task = (await http.get(f"/api/backtests/tasks/{tasks[0]}")).json()
        assert task["status"] == "completed" and task["result_location"] == "deleted" and task["result"]["metrics"]
        # A second run with the same policy deletes nothing and records nothing.
        assert await retain(ResultPolicy(max_count=2)) == []
        assert (await events_of(system, tasks[0])).count("result_deleted") == 1
        # Size: only the newest fits.
        newest_bytes = refs[tasks[2]].bytes  # type: ignore[union-attr]
        assert await retain(ResultPolicy(max_bytes=newest_bytes)) == [(tasks[1], "size")]
        # Age: everything older than a minute, a minute from now.
        later = int(time.time() * 1000) + 120_000
        assert await retain(ResultPolicy(max_age_ms=60_000), now_ms=later) == [(tasks[2], "age")]
        assert [(await http.get(f"/api/backtests/tasks/{t}/result")).status_code for t in tasks] == [410, 410, 410]
        # Replaying the log gives exactly the projected states (the fold of result_deleted agrees).
        log = [decode_entry(i, f) for i, f in await system.backend.redis.xrange(system.backend.keys.events)]
        assert {t: fold(log)[t] for t in tasks} == await system.projection.load(tasks)


async def test_orphans_are_collected_after_the_grace_period_and_named_results_never(system: System) -> None:
    results = results_for(system.settings)
    assert results is not None
    async with system.client() as http:
        named = await submit_and_run(system, http, SINGLE)
        # Completed but not yet projected: only the log names its result.
        unprojected = (await http.post("/api/backtests", json={**SINGLE, "params": {"fast": 7, "slow": 30}})).json()
        await system.worker().run(burst=True)
        # An upload whose outcome was never recorded (the worker died in between), and one of a
        # second attempt that was fenced.
        orphan = await results.put(str(uuid.uuid4()), 1, engine_detail(SINGLE))
        fenced = await results.put(named, 2, engine_detail(SINGLE))
        now = int(time.time() * 1000)
        policy = ResultPolicy(orphan_grace_ms=3_600_000)
        soon = await apply_result_retention(system.commands, system.projection, results, policy, now_ms=now)
        assert soon.orphans_deleted == [] and soon.deleted == []
        later = await apply_result_retention(
            system.commands, system.projection, results, policy, now_ms=now + 7_200_000
        )
        assert sorted(later.orphans_deleted) == sorted([orphan.key, fenced.key]) and later.deleted == []
        assert await keys_in_store(system, orphan.key) == [] and await keys_in_store(system, fenced.key) == []
        await system.project()
        for task_id in (named, unprojected["task_id"]):
            assert (await http.get(f"/api/backtests/tasks/{task_id}/result")).status_code == 200


async def test_deleting_the_result_of_a_task_retention_compacted(real_backend: Backend, tmp_path: Path) -> None:
    system = System(real_backend, results_url=f"file://{tmp_path}/results")
    results = results_for(system.settings)
    assert results is not None
    keys = real_backend.keys
    async with system.client() as http:
        task_id = await submit_and_run(system, http, SINGLE)
        last = (await real_backend.redis.xrevrange(keys.events, count=1))[0][0].decode()
        await export(real_backend.redis, keys, tmp_path / "archive.ndjson")
        await real_backend.redis.set(keys.archived_through, last)
        assert (await apply_retention(real_backend.redis, keys, horizon_ms=0)).tasks_compacted == 1
        assert await real_backend.redis.exists(keys.control(task_id)) == 0
        report = await apply_result_retention(system.commands, system.projection, results, ResultPolicy(max_count=0))
        assert [d.task_id for d in report.deleted] == [task_id]
        await system.project()
        state = (await system.projection.load([task_id]))[task_id]
        assert state.result_deleted_at is not None and state.seq == 4 and state.status == "completed"
        assert (await http.get(f"/api/backtests/tasks/{task_id}/result")).status_code == 410
        again = await apply_result_retention(system.commands, system.projection, results, ResultPolicy(max_count=0))
        assert again.deleted == []


async def test_an_unreachable_store_answers_503_and_vanished_objects_410_never_500(
    real_backend: Backend, tmp_path: Path, s3_server: S3Server
) -> None:
    bucket = make_bucket(s3_server)
    system = System(real_backend, results_url=f"s3://{bucket}/results", results_options=s3_options(s3_server))
    async with system.client() as http:
        task_id = await submit_and_run(system, http, SINGLE)
    # The same deployment, its API pointed at an S3 endpoint where nothing listens.
    dead = {**s3_options(s3_server), "AWS_ENDPOINT_URL": f"http://127.0.0.1:{free_port()}"}
    down = System(real_backend, results_url=f"s3://{bucket}/results", results_options=dead, results_timeout_s=2)
    async with down.client() as http:
        for params in ({}, {"table": "trades", "format": "csv"}, {"table": "equity", "format": "parquet"}):
            got = await http.get(f"/api/backtests/tasks/{task_id}/result", params=params)
            assert got.status_code == 503 and got.json()["error"] == "results_store_unavailable", got.text
            assert got.headers["retry-after"]
    # Objects deleted behind the system's back (no result_deleted event): 410, saying so.
    results = results_for(system.settings)
    assert results is not None
    ref = (await system.projection.load([task_id]))[task_id].result_ref
    assert ref is not None and await results.delete(ref.key) == 3
    async with system.client() as http:
        gone = await http.get(f"/api/backtests/tasks/{task_id}/result", params={"table": "trades"})
        assert gone.status_code == 410 and "no longer in the results store" in gone.json()["message"]


def test_a_version_1_completed_event_reads_as_version_2_without_a_result_ref() -> None:
    """`completed` v2 only added `result_ref`: a v1 entry (every log written before) decodes, on
    the fast path and the careful one alike, to the same event with `result_ref` None."""
    from orchestrator.domain.errors import EventDecodeError
    from orchestrator.domain.events import Completed
    from orchestrator.storage.codec import _decode_carefully

    fields = {b"type": b"completed", b"v": b"1", b"task_id": b"t-1", b"seq": b"3", b"attempt": b"1"}
    fields[b"data"] = b'{"result":{"metrics":{"sharpe":1.5}}}'
    expected = Completed(task_id="t-1", seq=3, attempt=1, result={"metrics": {"sharpe": 1.5}})
    assert decode_entry("1-0", fields).event == expected
    assert _decode_carefully("1-0", fields).event == expected
    # A version newer than this code knows is still refused, not read as the current one.
    with pytest.raises(EventDecodeError, match="schema version 3 is newer"):
        decode_entry("1-0", {**fields, b"v": b"3"})
