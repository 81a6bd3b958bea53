"""The client's methods as coroutines, for asyncio code and notebooks' top-level await. Each call
runs the blocking HTTP request in a worker thread, so no async HTTP library is needed."""

from __future__ import annotations

import asyncio
from typing import Any

from orchestrator.client.http import DEFAULT_URL
from orchestrator.client.progress import Bar
from orchestrator.client.results import Result
from orchestrator.client.runs import Client, Run
from orchestrator.domain.spec import BacktestSpec
from orchestrator.domain.views import Dataset, EventView, TaskPage, TaskView


class AsyncRun:
    """A submitted task, with Run's methods as coroutines (each runs the blocking call in a thread)."""

    def __init__(self, run: Run) -> None:
        self.sync = run
        self.task_id = run.task_id

    async def status(self) -> TaskView:
        """Run.status."""
        return await asyncio.to_thread(self.sync.status)

    async def wait(self, *, progress: bool = True, bar: Bar | None = None) -> TaskView:
        """Run.wait."""
        return await asyncio.to_thread(lambda: self.sync.wait(progress=progress, bar=bar))

    async def result(self) -> Result:
        """Run.result."""
        return await asyncio.to_thread(self.sync.result)

    async def events(self) -> list[EventView]:
        """Run.events."""
        return await asyncio.to_thread(self.sync.events)

    async def cancel(self) -> TaskView:
        """Run.cancel."""
        return await asyncio.to_thread(self.sync.cancel)

    async def retry(self) -> TaskView:
        """Run.retry."""
        return await asyncio.to_thread(self.sync.retry)


class AsyncClient:
    """Client's methods as coroutines, for asyncio code and notebooks' top-level await. Each call
    runs the blocking HTTP request in a worker thread, so no async HTTP library is needed."""

    def __init__(self, url: str = DEFAULT_URL, token: str | None = None) -> None:
        self.sync = Client(url, token)

    async def submit(self, strategy: str | BacktestSpec, symbol: str | None = None, **kwargs: Any) -> AsyncRun:
        """Client.submit."""
        return AsyncRun(await asyncio.to_thread(lambda: self.sync.submit(strategy, symbol, **kwargs)))

    def run(self, task_id: str) -> AsyncRun:
        """Client.run."""
        return AsyncRun(self.sync.run(task_id))

    async def task(self, task_id: str) -> TaskView:
        """Client.task."""
        return await asyncio.to_thread(self.sync.task, task_id)

    async def page(self, **kwargs: Any) -> TaskPage:
        """Client.page."""
        return await asyncio.to_thread(lambda: self.sync.page(**kwargs))

    async def tasks(self, **kwargs: Any) -> list[TaskView]:
        """Client.tasks."""
        return await asyncio.to_thread(lambda: self.sync.tasks(**kwargs))

    async def datasets(self) -> list[Dataset]:
        """Client.datasets."""
        return await asyncio.to_thread(self.sync.datasets)
