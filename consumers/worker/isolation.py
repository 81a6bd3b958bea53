"""Running one task in a child process of its own, so that a task that kills its process (out of
memory, a crash, a resource limit) kills only that process, and its worker sees it happen.

A worker runs an attempt isolated when the task's previous attempt lost its worker (streams.md,
"Attempt accounting"): the worker then knows for certain whether the task itself is deadly. The
child computes the run and writes newline-delimited JSON frames to its stdout:

    {"progress": 0.42}                                       now and then
    {"checkpoint": {...}}                                    the run's state, every checkpoint_s
    {"summary": {...}, "detail": {...}}                      the outcome; then it exits 0
    {"error": "...", "error_type": "DatasetError", "retryable": false}   the run raised

The parent reads them in `IsolatedRun.advance`, which the worker's `Execution` drives like any
`Run`. A child that exits without an outcome or an error was killed: `advance` raises
`TaskProcessDied`, an ordinary retryable failure of the attempt, naming the signal.

Usage: python -m consumers.worker.isolation DATA_DIR  (on stdin `{"spec": …, "checkpoint": … or
null, "checkpoint_s": …}`; DATA_DIR may be "")
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from typing import Any

import msgspec

from consumers.engine.errors import EngineError
from orchestrator.domain.spec import BacktestSpec
from orchestrator.storage.codec import decode_json, encode_json

# How long one `advance` waits for the child: the bound on how late a cancel, a timeout or a
# shutdown reaches an isolated run (the parent polls; the child computes without pauses).
POLL_SECONDS = 0.1
# The child reports progress at most this often.
PROGRESS_SECONDS = 0.2


class _Start(msgspec.Struct, frozen=True):
    """What the child is given on stdin: the spec, the state to resume from (JSON; `null` for
    none), how often to save."""

    spec: BacktestSpec
    checkpoint: msgspec.Raw = msgspec.Raw(b"null")
    checkpoint_s: float = 5.0


class TaskProcessDied(EngineError):
    """The process running the task alone died before it reported an outcome: the task killed
    it (or something killed it under the task). Retried like any transient failure, and charged
    to the task, since its process ran nothing else."""

    retryable = True


class IsolatedTaskError(EngineError):
    """An error the run raised in its child process; subclassed per error type (see `_raised`)
    so the attempt's `error_type` is the original exception's name."""


class IsolatedOutcome(msgspec.Struct, frozen=True):
    """The outcome of a run computed in a child process: its `summary` (headline metrics) and
    its full result (`detail`)."""

    summary: dict[str, Any]
    # The full result as the child sent it: a dict, like an in-process run's, since the parent
    # may read it (a sweep's top rows, the results store's tables) as well as store it.
    detail: dict[str, Any]


class IsolatedRun:
    """A `consumers.worker.attempt.Run` computed by a child process. Not thread-safe: one caller at
    a time, as `Execution` does."""

    def __init__(
        self, spec: BacktestSpec, data_dir: str | None, checkpoint: bytes | None = None, checkpoint_s: float = 5.0
    ) -> None:
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "consumers.worker.isolation", data_dir or ""],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=None,  # the child's own log lines go where the worker's go
        )
        assert self._proc.stdin is not None and self._proc.stdout is not None
        start = _Start(spec=spec, checkpoint=msgspec.Raw(checkpoint or b"null"), checkpoint_s=checkpoint_s)
        self._proc.stdin.write(encode_json(start))
        self._proc.stdin.close()
        self._out = self._proc.stdout.fileno()
        self._buffer = b""
        self._outcome: IsolatedOutcome | None = None
        self._checkpoint: bytes | None = None
        self.progress = 0.0

    @property
    def done(self) -> bool:
        """True once the child has reported its outcome."""
        return self._outcome is not None

    def advance(self, max_seconds: float) -> None:
        """Wait up to POLL_SECONDS (the child computes meanwhile) and take in what it reported.
        Raises the run's own error, or TaskProcessDied if the child died without a word."""
        del max_seconds  # the child's computing is not ours to slice
        deadline = time.monotonic() + POLL_SECONDS
        while self._outcome is None:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._out], [], [], left)[0]:
                return
            chunk = os.read(self._out, 1 << 16)
            if not chunk:
                self._died()
            self._buffer += chunk
            *lines, self._buffer = self._buffer.split(b"\n")
            for line in lines:
                self._take(line)

    def checkpoint(self) -> bytes | None:
        """The last state the child saved (JSON bytes; None before its first)."""
        return self._checkpoint

    def outcome(self) -> IsolatedOutcome:
        """The outcome the child reported; only once `done`."""
        assert self._outcome is not None, "outcome() before done"
        return self._outcome

    def close(self) -> None:
        """Kill the child if it is still computing (the attempt was cancelled, timed out or
        released) and reap it."""
        if self._proc.poll() is None:
            self._proc.kill()
        self._proc.wait()
        if self._proc.stdout is not None:
            self._proc.stdout.close()

    def _take(self, line: bytes) -> None:
        frame = decode_json(line)
        if "progress" in frame:
            self.progress = float(frame["progress"])
        elif "checkpoint" in frame:
            self._checkpoint = None if frame["checkpoint"] is None else encode_json(frame["checkpoint"])
        elif "error" in frame:
            self._proc.wait()
            raise _raised(frame["error_type"], frame["error"], bool(frame["retryable"]))
        else:
            self._proc.wait()
            self._outcome = IsolatedOutcome(summary=frame["summary"], detail=frame["detail"])

    def _died(self) -> None:
        code = self._proc.wait()
        if code < 0:
            name = signal.Signals(-code).name
            reason = f"killed by {name} ({signal.strsignal(-code)})"
        else:
            reason = f"exited with status {code}"
        raise TaskProcessDied(
            f"the task's own process was {reason} before it finished: the task kills the process "
            "that runs it (out of memory, a crash, a resource limit)"
        )


def _raised(error_type: str, message: str, retryable: bool) -> IsolatedTaskError:
    kind: type[IsolatedTaskError] = type(error_type, (IsolatedTaskError,), {"retryable": retryable})
    return kind(message)


class IsolatedRuns:
    """Starts isolated runs for one attempt (a `StartRun`) and kills whatever is left of them
    when the attempt ends (`close`)."""

    def __init__(self, data_dir: str | None, checkpoint_s: float = 5.0) -> None:
        self.data_dir = data_dir
        self.checkpoint_s = checkpoint_s
        self._runs: list[IsolatedRun] = []

    def __call__(self, spec: BacktestSpec, checkpoint: bytes | None = None) -> IsolatedRun:
        """Start `spec` (from `checkpoint` when given) in a child process of its own; the run is
        tracked so `close` can end it."""
        run = IsolatedRun(spec, self.data_dir, checkpoint, self.checkpoint_s)
        self._runs.append(run)
        return run

    def close(self) -> None:
        """Kill and reap every child still computing."""
        for run in self._runs:
            run.close()
        self._runs.clear()


def _frame(value: Any) -> None:
    sys.stdout.buffer.write(encode_json(value) + b"\n")
    sys.stdout.buffer.flush()


def main(data_dir: str) -> int:
    """The child: compute the run of the spec on stdin, reporting as the module docstring says.

    It dies with its worker: once the worker is gone, its next report (every PROGRESS_SECONDS)
    fails on the closed pipe (BrokenPipeError). (Not PR_SET_PDEATHSIG: that fires when the
    parent's *thread* that started it ends, which would kill a healthy run.)"""
    from consumers.engine.datasets import Catalog
    from consumers.engine.runner import start_run

    try:
        start = msgspec.json.decode(sys.stdin.buffer.read(), type=_Start)
        checkpoint = None if bytes(start.checkpoint) == b"null" else bytes(start.checkpoint)
        run = start_run(start.spec, catalog=Catalog.from_env_dir(data_dir or None), checkpoint=checkpoint)
        reported = saved = time.monotonic()
        while not run.done:
            run.advance(PROGRESS_SECONDS)
            if time.monotonic() - reported >= PROGRESS_SECONDS:
                _frame({"progress": run.progress})
                reported = time.monotonic()
            if time.monotonic() - saved >= start.checkpoint_s and not run.done:
                _frame({"checkpoint": run.checkpoint()})
                saved = time.monotonic()
        outcome = run.outcome()
    except Exception as e:
        retryable = bool(e.retryable) if isinstance(e, EngineError) else True
        _frame({"error": str(e) or type(e).__name__, "error_type": type(e).__name__, "retryable": retryable})
        return 0
    _frame({"summary": outcome.summary, "detail": outcome.detail})
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else ""))
    except BrokenPipeError:
        os._exit(1)  # the worker is gone: nobody to report to (and stdout cannot be flushed)
