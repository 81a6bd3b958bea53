"""The first chunk of every task claimed at the same moment is computed in one thread hop.

Most backtests are done within their first chunk. A worker that claims a batch of them would
otherwise hop to a thread once per task, and its compute threads would fight over the GIL; here
they run one after another in a single hop, which also builds their outcomes off the event loop,
and encodes those going to the results store (a second hop per task, for the encoding alone,
cost the event loop a turn, an executor round trip and a wake-up).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import msgspec

from consumers.worker.compute import ComputeThreads
from orchestrator.domain.spec import BacktestSpec
from orchestrator.storage.batching import resolve
from orchestrator.storage.codec import encode_json


class FirstChunk(msgspec.Struct):
    """A run after its first chunk; finished within it when `outcome` is set."""

    run: Any  # consumers.worker.attempt.Run
    # Set when the run finished within the chunk: its outcome and the encoded full result (JSON
    # for Redis in `result`, or what the `encode` given to `compute` returned, in `encoded`).
    outcome: Any = None
    result: bytes = b""
    encoded: Any = None


class _Start(NamedTuple):
    """A run to start: its spec, the checkpoint it resumes from (None: from the start), and what
    encodes its full result for the results store if it finishes within the chunk (None: JSON
    for Redis)."""

    spec: BacktestSpec
    checkpoint: bytes | None
    encode: Callable[[dict[str, Any]], Any] | None = None


class FirstChunks:
    """Coalesces the first chunks requested in one turn of the event loop into one thread hop.

    A hop stops starting further runs once it has computed for `chunk_seconds`; the ones left
    go into the next hop, so a cancel still waits for at most about one chunk of other work.
    A hop runs on one of the worker's compute threads, in its turn (consumers/worker/compute.py)."""

    def __init__(
        self,
        start_run: Callable[..., Any],
        chunk_seconds: float,
        compute: ComputeThreads,
    ) -> None:
        self.start_run = start_run
        self.chunk_seconds = chunk_seconds
        self.threads = compute
        self._queue: list[tuple[_Start, asyncio.Future[FirstChunk]]] = []
        self._flush_scheduled = False

    async def compute(
        self,
        spec: BacktestSpec,
        checkpoint: bytes | None = None,
        encode: Callable[[dict[str, Any]], Any] | None = None,
    ) -> FirstChunk:
        """Start the run of `spec` (from `checkpoint`, a state an earlier attempt saved, when
        given) and compute its first chunk, in the next hop. If the run finishes within it, its
        full result is encoded in the same hop: by `encode(detail)` into `FirstChunk.encoded`
        when given (for the results store), else as JSON for Redis into `FirstChunk.result`.
        Raises what starting or computing the run, or `encode`, raised (the task's own failure)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[FirstChunk] = loop.create_future()
        self._queue.append((_Start(spec, checkpoint, encode), future))
        self._schedule()
        return await future

    def _schedule(self) -> None:
        if not self._flush_scheduled and self._queue:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(lambda: asyncio.ensure_future(self._flush()))

    async def _flush(self) -> None:
        batch: list[tuple[_Start, asyncio.Future[FirstChunk]]] = []
        try:
            async with self.threads.turn():
                # Taken once the turn has come: runs requested while the hop waited join it.
                batch, self._queue, self._flush_scheduled = self._queue, [], False
                batch = [(start, future) for start, future in batch if not future.cancelled()]
                done = await self.threads.call(self._compute_batch, [start for start, _ in batch])
        except Exception as e:  # the hop itself failed: every caller hears of it
            for _, future in batch:
                resolve(future, e)
            return
        for (_, future), outcome in zip(batch, done, strict=False):
            resolve(future, outcome)
        # Runs the hop had no time for go first into the next one.
        self._queue[:0] = batch[len(done) :]
        self._schedule()

    def _compute_batch(self, starts: list[_Start]) -> list[FirstChunk | Exception]:
        out: list[FirstChunk | Exception] = []
        deadline = time.monotonic() + self.chunk_seconds
        for start in starts:
            if out and time.monotonic() >= deadline:
                break
            try:
                out.append(self._first_chunk(start))
            except Exception as e:  # the task's own failure, classified by its execution
                out.append(e)
        return out

    def _first_chunk(self, start: _Start) -> FirstChunk:
        if start.checkpoint is None:
            run = self.start_run(start.spec)
        else:
            run = self.start_run(start.spec, checkpoint=start.checkpoint)
        run.advance(self.chunk_seconds)
        if not run.done:
            return FirstChunk(run)
        outcome, result = finished(run, encode=start.encode is None)
        encoded = None if start.encode is None else start.encode(outcome.detail)
        return FirstChunk(run, outcome, result, encoded)


def finished(run: Any, encode: bool = True) -> tuple[Any, bytes]:
    """A finished run's outcome, and its full result encoded as JSON for Redis (b"" when not
    `encode`: the results store encodes it as Parquet)."""
    outcome = run.outcome()
    return outcome, encode_json(outcome.detail) if encode else b""
