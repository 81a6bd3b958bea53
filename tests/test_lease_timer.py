"""The lease timer: renewals on the event loop's clock while a thread computes, whatever it does."""

from __future__ import annotations

import asyncio
import threading
import time

import structlog.testing

from consumers.worker.lease import LeaseTimer


def compute_until(flag: threading.Event, limit_s: float) -> int:
    """Pure-Python work (it holds the GIL between switches) until `flag` is set or the limit."""
    x, end = 0, time.monotonic() + limit_s
    while not flag.is_set() and time.monotonic() < end:
        x += 1
    return x


class Renewals:
    def __init__(self, wanted: int, answer: bool = True) -> None:
        self.count = 0
        self.last = time.monotonic()
        self.wanted = wanted
        self.answer = answer
        self.enough = threading.Event()
        self.timed_out = 0

    def last_renewal(self) -> float:
        return self.last

    async def renew(self) -> bool:
        self.count += 1
        self.last = time.monotonic()
        if self.count >= self.wanted:
            self.enough.set()
        return self.answer

    async def time_out(self) -> None:
        self.timed_out += 1
        self.enough.set()


async def test_renews_while_a_thread_computes_one_long_step() -> None:
    """One step in a thread, running until it has seen three renewals (or 20 s: then the
    renewals waited for the step, as they did when they were sent between chunks)."""
    r = Renewals(wanted=3)
    async with LeaseTimer(0.02, time.monotonic() + 60, last_renewal=r.last_renewal, renew=r.renew, time_out=r.time_out):
        await asyncio.to_thread(compute_until, r.enough, 20.0)
    assert r.count >= 3 and r.timed_out == 0


async def test_a_refused_renewal_stops_the_timer() -> None:
    r = Renewals(wanted=1, answer=False)
    async with LeaseTimer(0.01, time.monotonic() + 60, last_renewal=r.last_renewal, renew=r.renew, time_out=r.time_out):
        await asyncio.to_thread(r.enough.wait, 20.0)
        # Long enough for several more intervals: none is renewed.
        await asyncio.to_thread(compute_until, threading.Event(), 0.1)
    assert r.count == 1


async def test_past_the_deadline_it_times_out_once_instead_of_renewing() -> None:
    r = Renewals(wanted=10**9)
    async with LeaseTimer(
        0.01, time.monotonic() + 0.05, last_renewal=r.last_renewal, renew=r.renew, time_out=r.time_out
    ):
        await asyncio.to_thread(compute_until, r.enough, 20.0)
        renewed = r.count
        await asyncio.to_thread(compute_until, threading.Event(), 0.1)
    assert r.timed_out == 1 and r.count == renewed


async def test_a_short_body_leaves_nothing_behind() -> None:
    r = Renewals(wanted=1)
    timer = LeaseTimer(10.0, time.monotonic() + 60, last_renewal=r.last_renewal, renew=r.renew, time_out=r.time_out)
    async with timer:
        pass  # a body that ends at once
    assert r.count == 0 and r.timed_out == 0
    assert not [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]


async def test_an_unexpected_error_in_a_renewal_is_logged_and_renewing_goes_on() -> None:
    r = Renewals(wanted=3)
    plain = r.renew

    async def flaky() -> bool:
        if r.count == 0:
            r.count += 1
            raise RuntimeError("a bug in the renewal")
        return await plain()

    with structlog.testing.capture_logs() as logs:
        async with LeaseTimer(
            0.01, time.monotonic() + 60, last_renewal=r.last_renewal, renew=flaky, time_out=r.time_out
        ):
            await asyncio.to_thread(compute_until, r.enough, 20.0)
    assert r.count >= 3
    assert [e["event"] for e in logs if e["log_level"] == "error"] == ["task.lease_renewal_failed"]
