"""What an attempt is given (a claimed task, the run that computes it) and how it is told to stop."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import msgspec

from orchestrator.domain.spec import BacktestSpec


class Run(Protocol):
    """A backtest (or any task) that computes in chunks: what a worker needs of the engine."""

    @property
    def done(self) -> bool:
        """True once the run has computed everything."""
        ...

    @property
    def progress(self) -> float:
        """How far the run is, from 0 to 1."""
        ...

    def advance(self, max_seconds: float) -> None:
        """Compute for about `max_seconds` seconds (one chunk) or until done."""
        ...

    def outcome(self) -> Any:
        """The finished run's outcome, with `.summary` (dict) and `.detail` (dict)."""
        ...


# Starts the run of a spec, from the start or (with `checkpoint=`, JSON bytes a run's
# `checkpoint()` saved) where an earlier attempt was; `consumers.engine.runner.start_run` bound
# to a data catalog. A run may offer `checkpoint()`: its state now, as a msgspec Struct or JSON
# bytes (None when it has none worth saving).
StartRun = Callable[..., Run]


class Assignment(msgspec.Struct, frozen=True):
    """A claimed attempt of a task: its work item `message_id` and, unless the spec does not
    decode here, its spec."""

    task_id: str
    attempt: int
    message_id: str
    spec: BacktestSpec | None  # None: claimed, but unreadable here (`unreadable` says why)
    # Attempts charged to the task before this one (retryable errors since submit or requeue).
    failures: int = 0
    unreadable: str = ""


class Stop(Exception):
    """The attempt must stop here without writing anything more (cancelled, or claim lost)."""


class UnreadableSpec(Exception):
    """The task's spec does not decode in this worker (a newer version wrote it, say). Retried
    like a crash: another attempt may land on a worker that reads it."""

    retryable = True
