"""What every handler reads: the app's context, built once by `create_app`'s lifespan."""

from __future__ import annotations

from dataclasses import dataclass

from starlette.requests import HTTPConnection

from orchestrator.domain.ports import Catalog, SpecChecker
from orchestrator.settings import Settings
from orchestrator.storage.commands import Commands
from orchestrator.storage.connections import RedisClient
from orchestrator.storage.readmodel import ReadModel
from orchestrator.storage.results.store import ResultStore


@dataclass(frozen=True, slots=True)
class AppContext:
    """The app's collaborators, typed. `commands` appends the API's events (submit, cancel,
    retry); `projection` is
    the read model every reader of a task's state asks; `checker` and `catalog` are the engine's
    ports (blocking: call them off the event loop); `blocking` is a client without a socket timeout
    for blocking reads (live streams), so they never starve commands; `results` is where full
    results are (None: only Redis-stored results)."""

    settings: Settings
    commands: Commands
    projection: ReadModel
    checker: SpecChecker
    catalog: Catalog
    blocking: RedisClient
    results: ResultStore | None = None


def context(conn: HTTPConnection) -> AppContext:
    """The context of the app serving `conn` (a Request or a WebSocket). Raises RuntimeError when
    the app's lifespan has not run (no context yet)."""
    ctx = getattr(conn.app.state, "ctx", None)
    if not isinstance(ctx, AppContext):
        raise RuntimeError("the app has no context: run it with its lifespan (create_app builds it there)")
    return ctx
