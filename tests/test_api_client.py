"""The Python client library against a real HTTP server: sync and async, typed answers, results
as DataFrames (and without pandas), errors carrying the API's field errors."""

from __future__ import annotations

import asyncio
import io
import json
import subprocess
import sys
from typing import Any

import httpx
import pytest

from orchestrator.client import AsyncClient, Client, Refused, Result
from orchestrator.client.progress import ProgressBar, Watch
from orchestrator.domain.events import Completed, Progress, RetryScheduled, Started, StoredEvent, Submitted
from orchestrator.domain.history import event_view
from orchestrator.domain.spec import BacktestSpec
from orchestrator.domain.views import TaskView
from tests.conftest import Backend
from tests.harness import System
from tests.test_client_cli import served

SMA = {"fast": 10, "slow": 20}


@pytest.fixture
def system(backend: Backend) -> System:
    return System(backend, heartbeat_ms=20, progress_interval_ms=20)


async def test_submit_wait_and_read_a_backtest(system: System) -> None:
    async with served(system, worker=True) as url:
        client = Client(url)

        def research() -> tuple[TaskView, Result, list[str], str, list[str]]:
            out = io.StringIO()
            run = client.submit("sma_cross", "AAPL", params=SMA, commission=0.002, start="2005-01-01")
            task = run.wait(bar=ProgressBar(out))
            columns = list(httpx.get(f"{url}/api/backtests/tasks/{task.task_id}/result").json()["equity_curve"])
            return task, run.result(), [e.type for e in run.events()], out.getvalue(), columns

        task, result, types, bar, api_columns = await asyncio.to_thread(research)
    assert isinstance(task, TaskView) and task.status == "completed" and task.progress == 1.0
    assert isinstance(task.spec, BacktestSpec) and task.spec.commission == 0.002 and task.spec.params == SMA
    assert bar.splitlines()[0].endswith("queued") and bar.splitlines()[-1].endswith("100.0%  completed")
    assert types == ["submitted", "started", "completed"]
    assert result.kind == "backtest" and result.metrics["num_trades"] == task.result["metrics"]["num_trades"]
    # The frame has the API's columns, in the API's order.
    assert list(result.equity.columns) == api_columns
    assert api_columns[:4] == ["time", "equity", "drawdown_pct", "position"]
    assert len(result.equity) == result.data["bars"] and len(result.trades) == result.metrics["num_trades"]
    assert result.equity["equity"].iloc[-1] == pytest.approx(result.metrics["equity_final"])


async def test_a_sweep_table_and_the_task_list(system: System) -> None:
    async with served(system, worker=True) as url:
        client = Client(url)

        def research() -> Result:
            sweep = client.submit("sma_cross", "IBM", params={"fast": [5, 10, 15], "slow": [30, 50]})
            other = client.submit("buy_and_hold", "GOOG")
            sweep.wait(progress=False)
            other.wait(progress=False)
            return sweep.result()

        result = await asyncio.to_thread(research)
        await system.project()  # the list reads the projection
        ibm = await asyncio.to_thread(lambda: client.tasks(symbol="ibm", limit=5))
        newest = await asyncio.to_thread(lambda: client.tasks(limit=1))
    assert result.kind == "sweep" and len(result.table) == 6
    assert {"fast", "slow", "objective", "return_pct"} <= set(result.table.columns)
    assert result.params == dict(result.table.iloc[0][["fast", "slow"]].astype(int))  # best first
    assert [t.spec.symbol for t in ibm] == ["IBM"] and [t.spec.symbol for t in newest] == ["GOOG"]
    frame = Client(url).metrics_frame(ibm)
    assert list(frame["task_id"]) == [ibm[0].task_id] and "return_pct" in frame.columns


async def test_refusals_carry_the_field_errors(system: System) -> None:
    async with served(system) as url:
        client = Client(url)
        with pytest.raises(Refused) as refused:
            await asyncio.to_thread(client.submit, "sma_cross", "AAPL", params={"fast": 30, "slow": 20})
        assert refused.value.status == 422 and refused.value.error == "validation_failed"
        assert [f.field for f in refused.value.fields] == ["params.fast"]
        assert "fast" in refused.value.fields[0].message and "422 validation_failed" in str(refused.value)
        with pytest.raises(Refused) as unknown:
            await asyncio.to_thread(client.task, "not-a-task")
        assert unknown.value.status == 404 and unknown.value.error == "task_not_found"
        assert unknown.value.fields[0].field == "task_id"


async def test_async_client(system: System) -> None:
    async with served(system, worker=True) as url:
        client = AsyncClient(url)
        run = await client.submit("sma_cross", "GOOG", params=SMA)
        task = await run.wait(progress=False)
        result = await run.result()
        await system.project()
        assert task.status == "completed" and result.metrics["num_trades"] > 0
        assert [t.task_id for t in await client.tasks(strategy="sma_cross")] == [run.task_id]
        assert "AAPL" in {d.symbol for d in await client.datasets()}


async def test_results_without_pandas_are_the_apis_columns(system: System, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pandas", None)  # `import pandas` now fails, as when not installed
    async with served(system, worker=True) as url:
        client = Client(url)
        run = await asyncio.to_thread(client.submit, "buy_and_hold", "AAPL")
        await asyncio.to_thread(run.wait, progress=False)
        result = await asyncio.to_thread(run.result)
        raw = (await asyncio.to_thread(httpx.get, f"{url}/api/backtests/tasks/{run.task_id}/result")).json()
    assert isinstance(result.equity, dict) and result.equity == raw["equity_curve"]
    assert isinstance(result.trades, dict) and len(result.trades["pnl"]) == result.metrics["num_trades"]


def test_the_client_imports_nothing_of_the_server() -> None:
    """Dependencies point inward: the client speaks HTTP and shares only orchestrator's types."""
    code = (
        "import sys, orchestrator.client; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('api', 'consumers', 'redis', 'starlette')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def _wire(stored: StoredEvent) -> dict[str, Any]:
    """An event as the API streams it (JSON and back)."""
    return json.loads(json.dumps(event_view(stored)))


def test_following_a_task_folds_its_stream_with_the_domains_fold() -> None:
    spec = BacktestSpec(strategy="sma_cross", symbol="AAPL", params=SMA)
    stream = [
        StoredEvent("1-0", Submitted(task_id="t", seq=1, spec=spec)),
        StoredEvent("2-0", Started(task_id="t", seq=2, attempt=1, worker="w1")),
        StoredEvent("3-0", Progress(task_id="t", seq=3, attempt=1, progress=0.4)),
        StoredEvent("4-0", RetryScheduled(task_id="t", seq=4, attempt=1, error="boom")),
        StoredEvent("5-0", Started(task_id="t", seq=5, attempt=2, worker="w2")),
        StoredEvent("6-0", Completed(task_id="t", seq=6, attempt=2, result={"metrics": {}})),
    ]
    watch = Watch(lambda: pytest.fail("the stream folds: nothing to ask the API"))
    shown = [watch.see(_wire(stored)) for stored in stream]
    assert [(s.status, s.progress, s.attempt) for s in shown] == [
        ("queued", 0.0, 0),
        ("running", 0.0, 1),
        ("running", 0.4, 1),
        ("queued", 0.0, 1),
        ("running", 0.0, 2),
        ("completed", 1.0, 2),
    ]
    assert shown[4].worker == "w2"


def test_a_stream_that_cannot_be_folded_is_answered_by_the_api() -> None:
    """A stream that starts after retention trimmed the task's first events: the API decides."""
    spec = BacktestSpec(strategy="sma_cross", symbol="AAPL", params=SMA)
    answer = TaskView(
        task_id="t", status="running", progress=0.7, created_at="", started_at=None, finished_at=None, attempt=3,
        worker="w9", error=None, error_retryable=None, result=None, spec=spec, submitted_by=None,
    )  # fmt: skip
    watch = Watch(lambda: answer)
    shown = watch.see(_wire(StoredEvent("9-0", Progress(task_id="t", seq=9, attempt=3, progress=0.6))))
    assert shown == ("running", 0.7, 3, "w9")
