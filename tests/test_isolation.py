"""Isolated runs: a task computed in a child process of its own, as a worker runs a task that once
lost its worker. Real child processes; no Redis needed."""

from __future__ import annotations

import os
import signal
import time
from typing import Any

import msgspec
import pytest

from consumers.engine.datasets import Catalog
from consumers.engine.errors import EngineError
from consumers.engine.runner import start_run
from consumers.worker.first_chunks import finished
from consumers.worker.isolation import IsolatedRuns, TaskProcessDied
from consumers.worker.retry import is_retryable
from orchestrator.domain.spec import BacktestSpec

SWEEP = msgspec.convert(
    {"strategy": "sma_cross", "symbol": "AAPL", "params": {"fast": list(range(2, 12)), "slow": list(range(70, 90))}},
    BacktestSpec,
)
LONG = msgspec.convert(
    {"strategy": "sma_cross", "symbol": "AAPL", "params": {"fast": list(range(2, 62)), "slow": list(range(70, 170))}},
    BacktestSpec,
)


def run_to_end(run: Any, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not run.done:
        assert time.monotonic() < deadline, "the isolated run did not finish"
        run.advance(0.01)


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    # Reaped by close(), so not even a zombie is left; a live pid answers.
    return False


def test_an_isolated_run_gives_the_same_outcome_as_one_in_process() -> None:
    runs = IsolatedRuns(None)
    try:
        isolated = runs(SWEEP)
        run_to_end(isolated)
        outcome, result = finished(isolated)
    finally:
        runs.close()
    local = start_run(SWEEP, catalog=Catalog.from_env_dir(None))
    while not local.done:
        local.advance(1.0)
    expected, expected_result = finished(local)
    assert outcome.summary == expected.summary
    assert msgspec.json.decode(result) == msgspec.json.decode(expected_result)


def test_an_error_in_the_child_keeps_its_type_and_whether_to_retry() -> None:
    runs = IsolatedRuns(None)
    unknown = msgspec.convert(
        {"strategy": "sma_cross", "symbol": "NOPE", "params": {"fast": 5, "slow": 20}}, BacktestSpec
    )
    try:
        with pytest.raises(EngineError, match="unknown symbol 'NOPE'") as raised:
            run_to_end(runs(unknown))
    finally:
        runs.close()
    assert type(raised.value).__name__ == "SpecError"  # recorded as the attempt's error_type
    assert not is_retryable(raised.value)


def test_a_child_killed_under_the_task_is_a_retryable_failure_naming_the_signal() -> None:
    runs = IsolatedRuns(None)
    try:
        run = runs(LONG)
        run.advance(0.01)
        os.kill(run._proc.pid, signal.SIGKILL)  # as the OOM killer would
        with pytest.raises(TaskProcessDied, match="killed by SIGKILL") as raised:
            run_to_end(run)
    finally:
        runs.close()
    assert is_retryable(raised.value)


def test_close_kills_a_child_still_computing() -> None:
    """A cancel, a timeout or a shutdown ends the attempt; the worker then closes its runs."""
    runs = IsolatedRuns(None)
    run = runs(LONG)
    run.advance(0.01)
    pid = run._proc.pid
    assert not gone(pid)
    runs.close()
    assert gone(pid)
