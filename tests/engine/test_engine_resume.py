"""Chunked runs, checkpoints and resumes give exactly the uninterrupted result."""

from __future__ import annotations

import gc
import time
from typing import Any

import msgspec
import numpy as np
import pytest
from bt_oracle import write_csv

from consumers.engine.checkpoint import Checkpoint
from consumers.engine.datasets import Catalog
from consumers.engine.errors import CheckpointError
from consumers.engine.runner import Outcome, resume_run, start_run
from orchestrator.domain.spec import BacktestSpec

SPECS = [
    # About a thousand decisions: several kernel chunks.
    BacktestSpec(strategy="momentum", symbol="GOOGBT", params={"lookback": 1, "threshold": 0.0}, commission=0.001),
    # Several batches of the compiled fast path (fast_sweep.BATCH combinations each).
    BacktestSpec(
        strategy="sma_cross",
        symbol="AAPL",
        params={"fast": list(range(2, 22)), "slow": list(range(30, 42))},
        objective="sharpe",
    ),
    # Fast batches with bankrupt combinations between them, which take the interpreted kernel.
    BacktestSpec(
        strategy="sma_cross",
        symbol="ROCKET",
        params={"fast": [2, 5, 20], "slow": [60, 8, 90, 30]},
        constraint="fast < slow",
    ),
    # Position management: stops, targets, a trailing stop and time exits between the decisions.
    BacktestSpec(
        strategy="momentum",
        symbol="GOOGBT",
        params={"lookback": 1, "threshold": 0.0},
        commission=0.001,
        stop_loss_pct=1.0,
        take_profit_pct=2.0,
        trailing_stop_pct=1.5,
        max_bars=3,
        size=0.5,
        margin=0.5,
    ),
]


def uninterrupted(catalog: Catalog, spec: BacktestSpec) -> Outcome:
    run = start_run(spec, catalog)
    while not run.done:
        run.advance(10.0)
    return run.outcome()


@pytest.mark.parametrize("spec", SPECS, ids=["single", "sweep", "sweep-fallback", "managed"])
def test_resume_after_every_chunk_gives_identical_result(catalog: Catalog, spec: BacktestSpec) -> None:
    expected = uninterrupted(catalog, spec)
    run = start_run(spec, catalog)
    chunks = resumes = 0
    progress = [run.progress]
    while not run.done:
        run.advance(0.0)
        chunks += 1
        progress.append(run.progress)
        checkpoint = run.checkpoint()
        if run.done or (checkpoint.kernel is not None and checkpoint.kernel.done):
            # Settlement and statistics are not checkpointed (they are redone after a resume),
            # so resuming at every one of those steps would never finish.
            continue
        # What a worker would store, and what a retried task would read back.
        saved = msgspec.json.encode(checkpoint)
        run = resume_run(spec, catalog, msgspec.json.decode(saved, type=Checkpoint))
        resumes += 1
    assert chunks > 3 and resumes > 3
    assert progress == sorted(progress) and progress[-1] == 1.0
    assert run.outcome() == expected
    assert msgspec.json.decode(msgspec.json.encode(expected.detail)) == expected.detail


def test_checkpoint_of_another_request_is_refused(catalog: Catalog) -> None:
    run = start_run(SPECS[0], catalog)
    run.advance(0.0)
    other = msgspec.structs.replace(SPECS[0], commission=0.002)
    with pytest.raises(CheckpointError) as info:
        resume_run(other, catalog, run.checkpoint())
    assert info.value.retryable is False


def test_advance_returns_within_the_cancel_budget_on_a_long_series(tmp_path: Any) -> None:
    """100,000 bars (~400 years of days), ~50k trades: no advance() computes for more than 100 ms.

    Measured in this thread's CPU time, not wall time, so other load on the machine (which
    only delays the thread) does not decide the outcome; the chunk bound is about work. Not the
    process's: threads earlier tests left running (a server, a compute thread) add theirs."""
    import pandas as pd

    rng = np.random.default_rng(3)
    n = 100_000
    close = np.round(100 * np.exp(np.cumsum(rng.normal(0, 0.01, n))), 4)
    frame = pd.DataFrame(
        {"Open": close, "High": close * 1.01, "Low": close * 0.99, "Close": close, "Volume": 1.0},
        index=pd.date_range("1500-01-01", periods=n, freq="D"),
    )
    write_csv(frame, tmp_path / "LONG.csv")
    catalog = Catalog.from_env_dir(str(tmp_path))
    catalog.load("LONG")
    run = start_run(BacktestSpec(strategy="momentum", symbol="LONG", params={"lookback": 1, "threshold": 0.0}), catalog)
    slowest = 0.0
    # What earlier tests left on this process's heap is not the engine's work, but a full garbage
    # collection walks all of it: set it aside, so that only this run's own objects are collected.
    gc.collect()
    gc.freeze()
    try:
        while not run.done:
            t0 = time.thread_time()
            run.advance(0.02)
            slowest = max(slowest, time.thread_time() - t0)
    finally:
        gc.unfreeze()
    assert slowest < 0.1
    assert run.outcome().summary["metrics"]["num_trades"] > 10_000
