"""The HTTP API: create_app(settings, ...) builds a Starlette app from a plain routes list."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import msgspec
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from api import auth, dashboard, live, metrics, openapi, results, strategies, tasks
from api.auth import SIGNIN_PATH, TokenAuth
from api.csrf import SameOriginOnly
from api.errors import EXCEPTION_HANDLERS
from orchestrator.settings import Settings
from orchestrator.storage.commands import Commands
from orchestrator.storage.connections import Connections
from orchestrator.storage.keys import Keys
from orchestrator.storage.projection import Projection
from orchestrator.storage.results import results_for
from orchestrator.storage.store import EventStore


class AppContext(msgspec.Struct):
    """What the handlers use, built once per app."""

    settings: Settings
    store: EventStore
    commands: Commands
    projection: Projection
    catalog: Any
    # For reads that block (live streams): its own connections, so they never starve commands.
    blocking: Any
    # Where full results are (orchestrator.storage.results.ResultStore); None: only Redis-stored results.
    results: Any = None


async def healthz(request: Request) -> Response:
    try:
        await request.app.state.ctx.store.redis.ping()
    except Exception as e:  # any failure to get an answer means unhealthy
        return JSONResponse({"status": "unavailable", "error": str(e)}, status_code=503, headers={"Retry-After": "2"})
    return JSONResponse({"status": "ok"})


routes = [
    Route("/healthz", healthz),
    *tasks.routes,
    *results.routes,
    *strategies.routes,
    *live.routes,
    *metrics.routes,
    *openapi.routes,
    *dashboard.routes,
    *auth.routes,
]


def create_app(settings: Settings, *, catalog: Any, connections: Connections | None = None) -> Starlette:
    """The API app. Given `connections`, it uses them (embedded mode shares them with the other
    roles); otherwise its lifespan opens its own and closes them on shutdown."""

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        conns = connections or Connections(settings)
        keys = Keys(prefix=settings.prefix)
        app.state.ctx = AppContext(
            settings=settings,
            store=EventStore(conns.commands, keys),
            commands=Commands(conns.commands, keys),
            projection=Projection(conns.commands, keys, follow_live=True),
            catalog=catalog,
            blocking=conns.blocking,
            results=results_for(settings),
        )
        try:
            yield
        finally:
            if connections is None:
                await conns.close()

    middleware = [
        # First: a page of another origin changes nothing, signed in or not.
        Middleware(SameOriginOnly, allowed_origins=settings.allowed_origins, form_paths={SIGNIN_PATH}),
        Middleware(TokenAuth, tokens=settings.tokens),
        Middleware(metrics.CancelTimer),
    ]
    return Starlette(routes=routes, exception_handlers=EXCEPTION_HANDLERS, lifespan=lifespan, middleware=middleware)
