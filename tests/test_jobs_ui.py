"""A job as its readers show it (streams.md, "Jobs"): `GET …/chunks`, `backstream submit --symbols
… --wait` and `status`, and the dashboard's pages, on jobs a real worker fans out and runs."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import io
import re
from collections.abc import AsyncIterator
from typing import Any

import httpx
import msgspec
import pytest

from api.app import create_app
from consumers.engine.adapters import EngineJobPlanner
from consumers.engine.datasets import Catalog
from consumers.engine.runner import start_run
from consumers.worker.loop import Worker
from orchestrator.cli.main import build_parser
from orchestrator.client import Client
from orchestrator.client.progress import ProgressBar
from orchestrator.domain.events import Completed, Failed
from orchestrator.domain.jobs import ChunkEnd, FanOut
from orchestrator.domain.spec import BacktestSpec, Chunk
from orchestrator.domain.state import JobState
from orchestrator.settings import Settings
from orchestrator.storage.partitions import chunk_id
from orchestrator.storage.results.location import results_for
from tests.conftest import Backend
from tests.harness import System
from tests.processes import InProcessServer

# 600 admissible combinations a symbol over four years: a few chunks at CHUNK_SECONDS each.
UNIVERSE: dict[str, Any] = {
    "strategy": "sma_cross",
    "symbols": ["AAPL", "IBM"],
    "params": {"fast": list(range(2, 22)), "slow": list(range(30, 60))},
    "start": "2005-01-01",
    "end": "2008-12-31",
}
CHUNK_SECONDS = 0.005
PLAIN: dict[str, Any] = {"strategy": "sma_cross", "symbol": "GOOG", "params": {"fast": 10, "slow": 20}}


@pytest.fixture
def system(backend: Backend) -> System:
    return System(backend, heartbeat_ms=20, progress_interval_ms=20)


def planning_worker(system: System) -> Worker:
    """A worker that fans jobs out, as `backstream worker` builds it (orchestrator/cli/roles.py)."""
    catalog = Catalog.from_env_dir(None)
    return Worker(
        system.queue,
        functools.partial(start_run, catalog=catalog),
        system.settings,
        name="w1",
        concurrency=2,
        results=results_for(system.settings),
        planner=EngineJobPlanner(catalog, CHUNK_SECONDS),
    )


# A line that is a task id alone (what `submit` prints).
UUID_LINE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


async def run_job(system: System, http: httpx.AsyncClient, body: dict[str, Any]) -> dict[str, Any]:
    """Submit `body`, run a planning worker in burst mode until no work is left, fold the log;
    the job as the API shows it then."""
    job_id = (await http.post("/api/backtests", json=body)).json()["task_id"]
    await planning_worker(system).run(burst=True)
    await system.project()
    task: dict[str, Any] = (await http.get(f"/api/backtests/tasks/{job_id}")).json()
    return task


async def test_chunks_are_listed_in_chunk_order_a_page_at_a_time(system: System) -> None:
    async with system.client() as http:
        job = await run_job(system, http, UNIVERSE)
        assert job["status"] == "completed", job
        total = job["job"]["chunks"]
        assert total >= 3 and job["job"]["done"] == total
        first = (await http.get(f"/api/backtests/tasks/{job['task_id']}/chunks", params={"limit": 2})).json()
        assert first["job_id"] == job["task_id"] and first["total"] == total and first["next_cursor"] == 2
        seen = first["chunks"]
        cursor = first["next_cursor"]
        while cursor is not None:
            page = (await http.get(f"/api/backtests/tasks/{job['task_id']}/chunks?limit=2&cursor={cursor}")).json()
            seen += page["chunks"]
            cursor = page["next_cursor"]
        assert [c["task_id"] for c in seen] == [chunk_id(job["task_id"], i) for i in range(total)]
        assert [c["spec"]["chunk"]["index"] for c in seen] == list(range(total))
        assert {c["spec"]["symbol"] for c in seen} == {"AAPL", "IBM"}
        assert all(c["status"] == "completed" and c["worker"] == "w1" for c in seen)
        whole = (await http.get(f"/api/backtests/tasks/{job['task_id']}/chunks?limit=500")).json()
        assert whole["chunks"] == seen and whole["next_cursor"] is None


async def test_chunks_refuses_what_is_not_a_job_and_bad_pages(system: System) -> None:
    async with system.client() as http:
        job = await run_job(system, http, UNIVERSE)
        chunks = f"/api/backtests/tasks/{job['task_id']}/chunks"
        for query, field in (
            ("cursor=abc", "cursor"),
            ("cursor=-1", "cursor"),
            ("limit=0", "limit"),
            ("limit=501", "limit"),
        ):
            reply = await http.get(f"{chunks}?{query}")
            assert reply.status_code == 422 and reply.json()["fields"][0]["field"] == field, (query, reply.text)
        beyond = await http.get(f"{chunks}?cursor={job['job']['chunks']}")
        assert beyond.status_code == 422 and beyond.json()["fields"][0]["field"] == "cursor"
        # A chunk, and a task that ran as one task, are no jobs.
        for task_id in (chunk_id(job["task_id"], 0), await _plain_task(system, http)):
            reply = await http.get(f"/api/backtests/tasks/{task_id}/chunks")
            assert reply.status_code == 422, reply.text
            assert reply.json()["error"] == "not_a_job" and reply.json()["fields"][0]["field"] == "task_id"
        # A chunk is cancelled and retried with its job only.
        for method, path in (("DELETE", ""), ("POST", "/retry")):
            reply = await http.request(method, f"/api/backtests/tasks/{chunk_id(job['task_id'], 0)}{path}")
            assert reply.status_code == 400 and reply.json()["fields"][0]["field"] == "task_id", reply.text
            assert job["task_id"] in reply.json()["message"]
        unknown = await http.get("/api/backtests/tasks/00000000-0000-8000-8000-000000000000/chunks")
        assert unknown.status_code == 404 and unknown.json()["error"] == "task_not_found"
        # A universe not planned yet may still fan out: no chunks so far.
        queued = (await http.post("/api/backtests", json=UNIVERSE)).json()["task_id"]
        pending = (await http.get(f"/api/backtests/tasks/{queued}/chunks")).json()
        assert pending == {"job_id": queued, "total": 0, "chunks": [], "next_cursor": None}


async def _plain_task(system: System, http: httpx.AsyncClient) -> str:
    task_id: str = (await http.post("/api/backtests", json=PLAIN)).json()["task_id"]
    await system.run_workers()
    return task_id


# --- the command line -------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def served(system: System) -> AsyncIterator[str]:
    """The API on a real socket and a planning worker running until the block ends."""
    app = create_app(system.settings, checker=system.checker, catalog=system.catalog, connections=system.connections)
    async with InProcessServer(app) as server:
        worker = planning_worker(system)
        running = asyncio.create_task(worker.run())
        try:
            yield server.url
        finally:
            worker.stop()
            await asyncio.wait_for(running, 20)


async def backstream(settings: Settings, *argv: str) -> int:
    """Run a client command as `backstream …` does, in a thread (it blocks on HTTP)."""
    args = build_parser().parse_args(list(argv))
    return int(await asyncio.to_thread(args.run, args, settings))


def _grid_args(body: dict[str, Any]) -> list[str]:
    return [arg for name, values in body["params"].items() for arg in ("-p", f"{name}={values[0]}:{values[-1]}")]


async def test_submit_a_universe_waits_with_chunks_and_best(system: System, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["submit", "sma_cross", "--symbols", "AAPL,IBM", *_grid_args(UNIVERSE), "--start", "2005-01-01"]
    argv += ["--end", "2008-12-31", "--objective", "return_pct", "--failure-tolerance", "0.5", "--wait"]
    async with served(system) as url:
        code = await backstream(Settings(api_url=url), *argv)
        out, err = capsys.readouterr()
        assert code == 0, err
        bars = [line for line in err.splitlines() if line.startswith("[")]
        assert bars[-1].startswith("[" + "#" * 30 + "] 100.0%  completed  chunks ")
        total = int(re.search(r"chunks (\d+) done, 0 failed of (\d+)", bars[-1])[2])  # type: ignore[index]
        assert total >= 3 and f"chunks {total} done, 0 failed of {total}  best fast=" in bars[-1]
        assert re.search(r"best fast=\d+ slow=\d+ on (AAPL|IBM)", bars[-1])
        # On the way: the chunks done so far and the best among them (a line per tenth of progress).
        running = [line for line in bars if "%  running  chunks " in line]
        assert running and all(f"failed of {total}" in line for line in running), bars
        on_the_way = [(int(m[1]), line) for line in running if (m := re.search(r"chunks (\d+) done", line))]
        assert any(0 < done < total and "  best fast=" in line for done, line in on_the_way), running
        best = re.search(r'best of 1200 combinations by return_pct: \{"fast": \d+, "slow": \d+\} on (AAPL|IBM)', out)
        assert best, out
        assert "symbols       AAPL,IBM" in out and f"chunks        {total} done, 0 failed of {total}" in out
        assert "metric" in out and "return_pct" in out and "missing" not in out
        job_id = re.search(r"task\s+(\S+)", out)[1]  # type: ignore[index]
        assert await backstream(Settings(api_url=url), "status", job_id) == 0
        shown = capsys.readouterr().out
        assert f"chunks        {total} done, 0 failed of {total}" in shown
        assert "universe      2 symbols: AAPL, IBM" in shown
        assert await backstream(Settings(api_url=url), "status", chunk_id(job_id, 1)) == 0
        assert f"chunk         1 of job {job_id}: combinations " in capsys.readouterr().out


async def test_submit_names_its_data_once(system: System, capsys: pytest.CaptureFixture[str]) -> None:
    async with served(system) as url:
        for given in ([], ["AAPL", "--all-symbols"], ["AAPL", "--symbols", "IBM"], ["--symbols", "A", "--all-symbols"]):
            assert await backstream(Settings(api_url=url), "submit", "sma_cross", *given) == 1
            err = capsys.readouterr().err
            assert "give exactly one of SYMBOL, --symbols A,B,… or --all-symbols" in err, err
        assert (
            await backstream(Settings(api_url=url), "submit", "sma_cross", "--direction", "min", "--all-symbols") == 0
        )
        # The id is a line of its own; the in-process worker's log lines come before and after it.
        task_id = next(line for line in capsys.readouterr().out.splitlines() if UUID_LINE.fullmatch(line))
        async with httpx.AsyncClient(base_url=url) as http:
            spec = (await http.get(f"/api/backtests/tasks/{task_id}")).json()["spec"]
        assert spec["symbols"] == "*" and spec["direction"] == "min"


class _PlainBar:
    """A bar written before jobs: `show` takes no `job`."""

    def __init__(self) -> None:
        self.shown: list[tuple[str, float]] = []

    def show(self, status: str, progress: float, attempt: int, worker: str | None) -> None:
        self.shown.append((status, progress))

    def done(self) -> None:
        pass


async def test_the_python_client_submits_a_universe_and_follows_it(system: System) -> None:
    async with served(system) as url:
        client = Client(url)
        run = await asyncio.to_thread(
            lambda: client.submit("sma_cross", symbols=["AAPL", "IBM"], params=UNIVERSE["params"], start="2005-01-01")
        )
        out = io.StringIO()
        task = await asyncio.to_thread(lambda: run.wait(bar=ProgressBar(out)))
        plain = _PlainBar()
        again = await asyncio.to_thread(lambda: client.run(run.task_id).wait(bar=plain))
        chunks = await asyncio.to_thread(client.run(run.task_id).chunks)
    assert task.status == "completed" and isinstance(task.job, JobState) and task.job.done == task.job.chunks
    assert [c.spec.chunk.index for c in chunks if c.spec.chunk] == list(range(task.job.chunks))
    assert {c.status for c in chunks} == {"completed"} and {c.spec.symbol for c in chunks} == {"AAPL", "IBM"}
    assert f"chunks {task.job.chunks} done, 0 failed of {task.job.chunks}  best " in out.getvalue().splitlines()[-1]
    assert again.status == "completed" and plain.shown[-1] == ("completed", 1.0)


# --- a job with failed chunks, its chunks finished by hand at the store (as test_jobs_store.py) --


async def tolerated_job(system: System) -> str:
    """A job of three chunks on AAPL, IBM, AAPL whose middle one failed for good, tolerated
    (failure_tolerance 0.5): completed, its middle range missing. Its id."""
    await system.queue.ensure_group()
    spec = msgspec.convert({**UNIVERSE, "failure_tolerance": 0.5}, BacktestSpec)
    job_id = (await system.commands.submit(None, spec)).task_id
    (taken,) = await system.queue.take(worker="w1", count=1)
    symbols = ["AAPL", "IBM", "AAPL"]
    chunks = [
        msgspec.structs.replace(spec, symbol=s, symbols=None, chunk=Chunk(parent=job_id, index=i, start=i, stop=i + 1))
        for i, s in enumerate(symbols)
    ]
    plan = FanOut(chunks=chunks, symbols=["AAPL", "IBM"], combinations=3, per_chunk=1)
    assert await system.queue.fan_out(job_id, 1, message_id=taken.message_id, plan=plan, tolerance=0.5) is None
    for item in sorted(await system.queue.take(worker="w2", count=3), key=lambda t: t.claim.spec.chunk.index):  # type: ignore[union-attr]
        chunk = item.claim.spec
        assert chunk is not None and chunk.chunk is not None
        if chunk.chunk.index == 1:
            failed = Failed(task_id=item.task_id, attempt=1, error="boom", error_type="ValueError")
            await system.queue.finish(failed, message_id=item.message_id, spec=chunk)
            continue
        best = {"symbol": chunk.symbol, "metrics": {"return_pct": 1.0 + chunk.chunk.index}, "best_params": {"fast": 5}}
        done = Completed(task_id=item.task_id, attempt=1, result={**best, "rank": {}})
        end = ChunkEnd(score=1.0 + chunk.chunk.index, bankrupt=False, best=best)
        await system.queue.finish(done, message_id=item.message_id, spec=chunk, end=end)
    return job_id


async def test_a_jobs_missing_ranges_show_in_status_and_on_its_page(
    system: System, capsys: pytest.CaptureFixture[str]
) -> None:
    job_id = await tolerated_job(system)
    await system.project()
    app = create_app(system.settings, checker=system.checker, catalog=system.catalog, connections=system.connections)
    async with InProcessServer(app) as server:
        assert await backstream(Settings(api_url=server.url), "status", job_id) == 0
        out = capsys.readouterr().out
        assert "status        completed" in out and "chunks        2 done, 1 failed of 3" in out
        assert "missing       IBM combinations 1–2" in out
        assert '{"fast": 5} on AAPL' in out  # the best: chunk 2's
        async with httpx.AsyncClient(base_url=server.url) as http:
            page = (await http.get(f"/tasks/{job_id}")).text
            listed = (await http.get("/")).text
            chunk_page = (await http.get(f"/tasks/{chunk_id(job_id, 1)}")).text
            later = (await http.get(f"/tasks/{job_id}?chunks=1")).text
            beyond = (await http.get(f"/tasks/{job_id}?chunks=9")).text
            huge = await http.get(f"/tasks/{job_id}?chunks={'9' * 5000}")  # int() refuses 4,300+ digits
    assert '<b class="done">2</b> done, <b class="failed">1</b> failed' in page
    assert "Missing (chunks that failed):\nIBM combinations 1–2</p>" in page
    assert 'on <b class="symbol">AAPL</b>' in page  # the best: chunk 2's
    assert [int(i) for i in re.findall(r'data-chunk="(\d+)"', page)] == [0, 1, 2]
    assert '<span class="badge failed">failed</span>' in page
    assert "job of 3 chunks" in listed and chunk_id(job_id, 0) not in listed
    assert f'href="/tasks/{job_id}">{job_id}</a>' in chunk_page
    # A page of chunks from `?chunks=` on (an index past the last lists from the first).
    assert [int(i) for i in re.findall(r'data-chunk="(\d+)"', later)] == [1, 2]
    assert f'id="chunks-previous" href="/tasks/{job_id}?chunks=0"' in later and "Chunks 1 to 2 of 3" in later
    assert [int(i) for i in re.findall(r'data-chunk="(\d+)"', beyond)] == [0, 1, 2]
    assert huge.status_code == 200 and [int(i) for i in re.findall(r'data-chunk="(\d+)"', huge.text)] == [0, 1, 2]
