"""An in-process Backstream on one test's store: the real API app, workers and projector."""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import AsyncIterator
from typing import Any

import httpx

from api.app import create_app
from consumers.engine.adapters import EngineCatalog, EngineSpecChecker
from consumers.engine.datasets import Catalog
from consumers.engine.runner import start_run
from consumers.projector import Projector
from consumers.worker.loop import Worker
from orchestrator.settings import Settings
from orchestrator.storage.commands import Commands
from orchestrator.storage.connections import Connections
from orchestrator.storage.readmodel import Projection
from orchestrator.storage.results.location import results_for
from orchestrator.storage.workqueue import WorkQueue
from tests.conftest import Backend


class _SharedConnections(Connections):
    """The test's own clients, handed to the app instead of ones it would open."""

    def __init__(self, backend: Backend, settings: Settings) -> None:
        self.settings = settings
        self.commands = backend.redis
        self.blocking = backend.blocking
        self.cluster = backend.name == "cluster"


class System:
    def __init__(self, backend: Backend, *, data_dir: str | None = None, **settings: Any) -> None:
        self.backend = backend
        self.settings = Settings(prefix=backend.keys.prefix, data_dir=data_dir, **settings)
        # The API's ports over the engine, as the composition root (orchestrator.cli) builds them.
        data = Catalog.from_env_dir(data_dir)
        self.checker, self.catalog = EngineSpecChecker(data), EngineCatalog(data)
        self.commands = Commands(backend.redis, backend.layout)
        self.queue = WorkQueue(backend.redis, backend.layout, reader=backend.blocking)
        self.projection = Projection(backend.redis, backend.layout, follow_live=True)
        self.connections = _SharedConnections(backend, self.settings)

    def worker(self, name: str = "w1", concurrency: int = 2) -> Worker:
        # Its own catalog, as a worker process has: it reads the data files when it runs.
        catalog = Catalog.from_env_dir(self.settings.data_dir)
        return Worker(
            self.queue,
            functools.partial(start_run, catalog=catalog),
            self.settings,
            name=name,
            concurrency=concurrency,
            results=results_for(self.settings),
        )

    async def run_workers(self) -> None:
        """Run one worker in burst mode until no work is left, then fold everything."""
        await self.worker().run(burst=True)
        await self.project()

    async def project(self) -> None:
        await Projector(self.projection).run(burst=True)

    @contextlib.asynccontextmanager
    async def client(self) -> AsyncIterator[httpx.AsyncClient]:
        app = create_app(self.settings, checker=self.checker, catalog=self.catalog, connections=self.connections)
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
                yield client

    async def wait_for_event(self, task_id: str, event_type: str, timeout_s: float = 20.0) -> None:
        """Block on the log (XREAD) until the task has an event of this type."""
        keys = self.backend.keys
        deadline = asyncio.get_running_loop().time() + timeout_s
        last = "0-0"
        while True:
            if any(type(e.event).__name__.lower() == event_type for e in await self.projection.task_events(task_id)):
                return
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                raise TimeoutError(f"task {task_id} had no {event_type} event within {timeout_s}s")
            reply = await self.backend.blocking.xread(
                {keys.events: last}, count=100, block=int(min(remaining, 0.5) * 1000)
            )
            if reply:
                last = reply[0][1][-1][0]
