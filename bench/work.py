"""The work every system's worker runs: one SMA-crossover backtest on a short bundled series, or nothing."""

from __future__ import annotations

import datetime as dt
import functools
from typing import Any

# One year of daily GOOG bars (~250), SMA(10, 20): a small, realistic unit of backtest work.
SMA_SPEC_FIELDS: dict[str, Any] = {
    "strategy": "sma_cross",
    "symbol": "GOOG",
    "params": {"fast": 10, "slow": 20},
    "start": "2012-01-01",
    "end": "2012-12-31",
}


@functools.cache
def _catalog() -> Any:
    # Parsed once per process, like the worker's catalog: the data load is not part of a task.
    from consumers.engine.datasets import Catalog

    return Catalog.from_env_dir(None)


@functools.cache
def sma_spec() -> Any:
    from orchestrator.domain.spec import BacktestSpec

    f = SMA_SPEC_FIELDS
    return BacktestSpec(
        strategy=f["strategy"],
        symbol=f["symbol"],
        params=dict(f["params"]),
        start=dt.date.fromisoformat(f["start"]),
        end=dt.date.fromisoformat(f["end"]),
    )


def _run_to_end(spec: Any) -> dict[str, Any]:
    from consumers.engine.runner import start_run

    run = start_run(spec, _catalog())
    while not run.done:
        run.advance(0.02)
    outcome = run.outcome()
    return {"summary": outcome.summary, "detail": outcome.detail}


def sma_work() -> dict[str, Any]:
    """Run the engine's SMA crossover to completion, exactly as a Backstream worker does (same
    `start_run`, same chunked `advance`). Returns what Backstream stores for it: the summary
    (the headline metrics, ~0.2 KB, in the `completed` event) and the detail (~16 KB JSON: equity curve, trades)."""
    return _run_to_end(sma_spec())


# A long backtest for the cancel scenario: a parameter sweep over the whole AAPL history (seconds).
LONG_SPEC_FIELDS: dict[str, Any] = {
    "strategy": "sma_cross",
    "symbol": "AAPL",
    "params": {"fast": list(range(2, 100)), "slow": list(range(10, 400, 4))},
    "constraint": "fast < slow",
}


@functools.cache
def long_spec() -> Any:
    import msgspec

    from orchestrator.domain.spec import BacktestSpec

    return msgspec.convert(LONG_SPEC_FIELDS, BacktestSpec)


def long_work() -> dict[str, Any]:
    """The long backtest of the cancel scenario, run to completion unless the system stops it."""
    return _run_to_end(long_spec())


def noop() -> None:
    """No work at all: measures the job system alone."""
    return None


def warm_up() -> None:
    """Load the data and import the engine before the clock starts."""
    sma_work()
