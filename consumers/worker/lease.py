"""The lease timer of an attempt: renewals on the event loop's clock while a thread computes."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import structlog

log = structlog.get_logger("backstream.worker")


class LeaseTimer:
    """Calls `renew` whenever `interval` seconds have passed since `last_renewal()`, on the event
    loop, until stopped (`async with`) or `renew` returns False; past `deadline` plus one
    interval it calls `time_out` instead, once. Times are seconds of `time.monotonic()`. A timer
    handle, not a task, between renewals: a task done within one interval costs a heap push and
    a cancel. An unexpected error in `renew` is logged and renewing goes on."""

    def __init__(
        self,
        interval: float,
        deadline: float,
        *,
        last_renewal: Callable[[], float],
        renew: Callable[[], Awaitable[bool]],
        time_out: Callable[[], Awaitable[None]],
    ) -> None:
        self.interval = interval
        self.deadline = deadline
        self._last_renewal = last_renewal
        self._renew = renew
        self._time_out = time_out
        self._handle: asyncio.TimerHandle | None = None
        self._busy: asyncio.Future[None] | None = None
        self._stopped = False

    async def __aenter__(self) -> LeaseTimer:
        self._schedule()
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._stopped = True
        if self._handle is not None:
            self._handle.cancel()
        if self._busy is not None:
            await asyncio.wait([self._busy])

    def _schedule(self) -> None:
        if not self._stopped:
            delay = max(0.0, self._last_renewal() + self.interval - time.monotonic())
            self._handle = asyncio.get_running_loop().call_later(delay, self._due)

    def _due(self) -> None:
        self._handle = None
        if self._stopped:
            return
        now = time.monotonic()
        if now > self.deadline + self.interval:
            self._busy = asyncio.ensure_future(self._time_out())
        elif now < self._last_renewal() + self.interval:
            self._schedule()  # renewed meanwhile (a progress report)
        else:
            self._busy = asyncio.ensure_future(self._renew_then_schedule())

    async def _renew_then_schedule(self) -> None:
        try:
            renewed = await self._renew()
        except Exception:  # a bug, not a refusal: say so, and keep the lease rather than lose it
            log.exception("task.lease_renewal_failed")
            renewed = True
        if renewed:
            self._schedule()
