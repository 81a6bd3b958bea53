"""A worker's compute threads: its CPU-bound work runs on a fixed number of them, in turn.

A worker's concurrency is how many tasks it holds at once, to overlap their round trips; its
computing is bound by the GIL to one core per process anyway. Threads computing side by side
in one process only hand the GIL back and forth: at concurrency 4 on two cores a sweep cost
three times the CPU and its 10 ms chunks shrank to ~1 ms (issue 21). So every chunk, first
chunk batch and outcome build of a worker runs on one of `threads` compute threads (default 1,
BACKSTREAM_COMPUTE_THREADS), and tasks take turns on them in the order they asked (FIFO). Scale
computing with worker processes, one per core.

A task waiting for its turn is not idle towards its store: its lease timer renews on the event
loop, and `turn` calls `while_waiting` every `every` seconds (the worker's cancel check), so a
cancel reaches a queued task without its turn (within 50 ms in the worker).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")

# The name of a compute thread begins with this (it shows in py-spy and in thread listings).
THREAD_NAME = "backstream-compute"


class ComputeThreads:
    """`threads` compute threads shared by a worker's tasks, or, with `threads=None`, no limit
    and no turns (for work that mostly waits, like an isolated run's child process).

    Use: `async with compute.turn(): await compute.call(fn, *args)`. Not thread-safe: called
    from the event loop only. Raises ValueError for `threads` < 1."""

    def __init__(self, threads: int | None) -> None:
        if threads is not None and threads < 1:
            raise ValueError(f"compute threads must be at least 1, got {threads}")
        self.threads = threads
        self._executor: ThreadPoolExecutor | None = None  # started on first use, again after close()
        self._free = threads or 0
        self._waiting: collections.deque[asyncio.Future[None]] = collections.deque()

    @contextlib.asynccontextmanager
    async def turn(
        self, while_waiting: Callable[[], Awaitable[None]] | None = None, every: float = 0.01
    ) -> AsyncIterator[None]:
        """Hold one compute thread for the body; wait in line for it if none is free, calling
        `while_waiting` every `every` seconds meanwhile (what it raises ends the wait)."""
        if self.threads is None:
            yield
            return
        granted = self._request()
        try:
            while not granted.done():
                await asyncio.wait([granted], timeout=every)
                if not granted.done() and while_waiting is not None:
                    await while_waiting()
            yield
        finally:
            self._give_back(granted)

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run `fn(*args)` on a compute thread (call it within a `turn`)."""
        if self.threads is None:
            return await asyncio.to_thread(fn, *args)
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=self.threads, thread_name_prefix=THREAD_NAME)
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def close(self) -> None:
        """Stop the threads once their current call returns (a step cannot be interrupted)."""
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None

    def _request(self) -> asyncio.Future[None]:
        granted: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self._free > 0 and not self._waiting:
            self._free -= 1
            granted.set_result(None)
        else:
            self._waiting.append(granted)
        return granted

    def _give_back(self, granted: asyncio.Future[None]) -> None:
        if not granted.done():  # left the line before its turn came
            granted.cancel()
            self._waiting.remove(granted)
            return
        while self._waiting:
            nxt = self._waiting.popleft()
            if not nxt.done():
                nxt.set_result(None)
                return
        self._free += 1
