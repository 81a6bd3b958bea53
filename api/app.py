"""The HTTP API: create_app(settings, ...) builds a Starlette app from a plain routes list."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route, Router

from api import auth, live, metrics, openapi, results, strategies, tasks
from api.auth import OPEN_MOUNTS, OPEN_ROUTES, TokenAuth
from api.context import AppContext, context
from api.csrf import SameOriginOnly
from api.dashboard.routes import routes as dashboard_routes
from api.errors import EXCEPTION_HANDLERS
from orchestrator.domain.ports import Catalog, SpecChecker
from orchestrator.settings import Settings
from orchestrator.storage.commands import Commands
from orchestrator.storage.connections import Connections, connect
from orchestrator.storage.partitions import deployment_layout
from orchestrator.storage.readmodel import ReadModel
from orchestrator.storage.results.location import results_for


async def healthz(request: Request) -> Response:
    """`GET /healthz`: 200 `{"status": "ok"}` when Redis answers a PING (the read model's);
    otherwise 503 `{"status": "unavailable", "error"}` with Retry-After: 2."""
    try:
        await context(request).projection.ping()
    except Exception as e:  # any failure to get an answer means unhealthy
        return JSONResponse({"status": "unavailable", "error": str(e)}, status_code=503, headers={"Retry-After": "2"})
    return JSONResponse({"status": "ok"})


routes = [
    Route("/healthz", healthz, name="healthz"),
    *tasks.routes,
    *results.routes,
    *strategies.routes,
    *live.routes,
    *metrics.routes,
    *openapi.routes,
    *dashboard_routes,
    *auth.routes,
]


def _route(router: Router, name: str) -> BaseRoute:
    """The route of `router` named `name`. Raises LookupError when none has that name."""
    for route in router.routes:
        if getattr(route, "name", None) == name:
            return route
    raise LookupError(f"no route is named {name!r}")


def create_app(
    settings: Settings,
    *,
    checker: SpecChecker,
    catalog: Catalog,
    connections: Connections | None = None,
) -> Starlette:
    """The API app. `checker` decides whether a request can run and `catalog` lists strategies and
    datasets (the engine implements both: consumers.engine.adapters; the composition root hands
    them in). Given `connections`, it uses them (embedded mode shares them with the other roles);
    otherwise its lifespan opens its own and closes them on shutdown."""

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        """Builds the AppContext; closes only the connections it opened."""
        conns = connections or await connect(settings, long_running=True)
        layout = await deployment_layout(conns)
        app.state.ctx = AppContext(
            settings=settings,
            commands=Commands(conns.commands, layout, replica_acks=settings.replica_acks),
            projection=ReadModel(conns.commands, layout, follow_live=True),
            checker=checker,
            catalog=catalog,
            blocking=conns.blocking,
            results=results_for(settings),
        )
        try:
            yield
        finally:
            if connections is None:
                await conns.close()

    # The middleware sees paths before routing: it gets them from the routes' names.
    router = Router(routes)
    open_paths = {str(router.url_path_for(name)) for name in OPEN_ROUTES}
    open_prefixes = [str(router.url_path_for(name, path="/")) for name in OPEN_MOUNTS]
    middleware = [
        # First: a page of another origin changes nothing, signed in or not.
        Middleware(
            SameOriginOnly,
            allowed_origins=settings.allowed_origins,
            form_paths={str(router.url_path_for("signin"))},
        ),
        Middleware(TokenAuth, tokens=settings.tokens, open_paths=open_paths, open_prefixes=open_prefixes),
        Middleware(metrics.CancelTimer, cancel=_route(router, "cancel")),
    ]
    return Starlette(routes=routes, exception_handlers=EXCEPTION_HANDLERS, lifespan=lifespan, middleware=middleware)
