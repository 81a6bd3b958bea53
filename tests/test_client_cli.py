"""The HTTP client commands against a real server: submit --wait, status, cancel, ls, tail."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from api.app import create_app
from orchestrator.cli.main import build_parser
from orchestrator.settings import ApiToken, Settings
from tests.conftest import Backend
from tests.harness import System
from tests.processes import InProcessServer

BODY: dict[str, Any] = {"strategy": "sma_cross", "symbol": "GOOG", "params": {"fast": 10, "slow": 20}}
# 1,640 combinations: long enough (about half a second) for the bar to move between its ends.
SWEEP = ["-p", "fast=" + ",".join(map(str, range(2, 82, 2))), "-p", "slow=" + ",".join(map(str, range(100, 182, 2)))]


@pytest.fixture
def system(backend: Backend) -> System:
    return System(backend, heartbeat_ms=20, progress_interval_ms=20)


@contextlib.asynccontextmanager
async def served(system: System, *, worker: bool = False) -> AsyncIterator[str]:
    app = create_app(system.settings, checker=system.checker, catalog=system.catalog, connections=system.connections)
    async with InProcessServer(app) as server:
        running = system.worker(concurrency=1) if worker else None
        task = asyncio.create_task(running.run()) if running else None
        try:
            yield server.url
        finally:
            if running and task:
                running.stop()
                await asyncio.wait_for(task, 20)


async def backstream(settings: Settings, *argv: str) -> int:
    """Run a client command as `backstream …` does, in a thread (it blocks on HTTP)."""
    args = build_parser().parse_args(list(argv))
    return int(await asyncio.to_thread(args.run, args, settings))


async def test_submit_wait_shows_progress_then_the_metrics(system: System, capsys: pytest.CaptureFixture[str]) -> None:
    async with served(system, worker=True) as url:
        code = await backstream(
            Settings(api_url=url), "submit", "sma_cross", "AAPL", *SWEEP, "--commission", "0.002", "--wait"
        )
    out, err = capsys.readouterr()
    assert code == 0, err
    bars = [line for line in err.splitlines() if line.startswith("[")]
    assert bars[0].endswith("queued") and bars[-1] == "[" + "#" * 30 + "] 100.0%  completed"
    assert any("running  attempt 1 on w1" in line for line in bars)
    assert any(0 < float(line.split("]")[1].split("%")[0]) < 100 for line in bars), bars  # it moved
    assert "status        completed" in out and "best of 1640 combinations by sqn" in out
    assert "metric" in out and "sharpe" in out and "num_trades" in out


async def test_submit_shows_the_bars_the_result_used(system: System, capsys: pytest.CaptureFixture[str]) -> None:
    async with served(system, worker=True) as url:
        argv = ["submit", "buy_and_hold", "aapl", "--start", "2005-01-03", "--end", "2005-06-30", "--wait"]
        assert await backstream(Settings(api_url=url), *argv) == 0
        adjusted = capsys.readouterr().out
        assert await backstream(Settings(api_url=url), *argv, "--unadjusted") == 0
        raw = capsys.readouterr().out
    assert "symbol        AAPL" in adjusted  # stored under the dataset's own name
    assert "computed on AAPL (bundled) 2005-01-03 to 2005-06-30, 125 bars, adjusted, sha256 " in adjusted
    assert "125 bars, not adjusted (not_requested), sha256 " in raw


async def test_status_cancel_and_ls(system: System, capsys: pytest.CaptureFixture[str]) -> None:
    async with served(system) as url:
        async with httpx.AsyncClient(base_url=url) as http:
            ids = [(await http.post("/api/backtests", json=BODY)).json()["task_id"] for _ in range(2)]
        settings = Settings(api_url=url)  # as BACKSTREAM_URL would set it
        capsys.readouterr()
        assert await backstream(settings, "cancel", ids[0]) == 0
        assert capsys.readouterr().out == f"{ids[0]} cancelled\n"
        assert await backstream(settings, "cancel", ids[0]) == 0  # cancelling twice is fine
        capsys.readouterr()
        assert await backstream(settings, "status", ids[0]) == 0
        out = capsys.readouterr().out
        assert f"task          {ids[0]}" in out and "status        cancelled" in out
        assert "params        fast=10 slow=20" in out
        await system.project()
        capsys.readouterr()  # the projector's log lines
        assert await backstream(settings, "ls", "--status", "queued") == 0
        lines = capsys.readouterr().out.splitlines()
        assert lines[0].split() == [
            "task",
            "status",
            "progress",
            "symbol",
            "strategy",
            "return_pct",
            "attempt",
            "worker",
            "created",
        ]
        assert [line.split()[0] for line in lines[2:]] == [ids[1]]
        assert await backstream(settings, "ls") == 0
        assert [line.split()[0] for line in capsys.readouterr().out.splitlines()[2:]] == ids[::-1]


async def test_tail_prints_live_events(system: System, capsys: pytest.CaptureFixture[str]) -> None:
    async with served(system) as url:
        tail = asyncio.create_task(backstream(Settings(api_url=url), "tail", "--since", "0-0", "--count", "2"))
        async with httpx.AsyncClient(base_url=url) as http:
            ids = [(await http.post("/api/backtests", json=BODY)).json()["task_id"] for _ in range(2)]
        assert await asyncio.wait_for(tail, 20) == 0
    # (The server's own log lines share stdout here; tail's lines start with an ISO time.)
    lines = [line for line in capsys.readouterr().out.splitlines() if line.split()[0].endswith("Z")]
    assert [line.split()[1:3] for line in lines] == [[i[:8], "submitted"] for i in ids]
    assert "strategy=sma_cross symbol=GOOG params=fast=10 slow=20" in lines[0]


async def test_errors_are_clear_and_exit_1(system: System, capsys: pytest.CaptureFixture[str]) -> None:
    async with served(system) as url:
        code = await backstream(
            Settings(), "submit", "sma_cross", "GOOG", "-p", "fast=30", "-p", "slow=20", "--url", url
        )
        assert code == 1
        assert "422 validation_failed: params" in capsys.readouterr().err
    code = await backstream(Settings(api_url=url), "status", "00000000-0000-0000-0000-000000000000")
    assert code == 1 and "cannot reach the Backstream API" in capsys.readouterr().err


async def test_token_is_sent(backend: Backend, capsys: pytest.CaptureFixture[str]) -> None:
    system = System(backend, tokens=(ApiToken("alice", "s3cret", True),))
    async with served(system) as url:
        assert await backstream(Settings(api_url=url), "ls") == 1
        assert "401 unauthorized" in capsys.readouterr().err
        assert await backstream(Settings(api_url=url, api_token="s3cret"), "ls") == 0
        assert await backstream(Settings(api_url=url), "ls", "--token", "s3cret") == 0
