"""`GET /api/strategies`: the strategies this API validates against, with their parameters."""

from __future__ import annotations

import msgspec
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from api.context import context


async def list_strategies(request: Request) -> Response:
    """Every installed strategy (built-ins first, then plugins) as
    `{"name", "summary", "origin", "params": [{"name", "type", "minimum", "maximum",
    "exclusive_minimum", "exclusive_maximum", "default", "description"}]}`, the sweep objectives,
    and plugins that failed to load (`{"entry_point", "error"}`), so an operator sees why one is
    missing: `orchestrator.domain.views.Strategies`. A request may name only these strategies;
    workers each list theirs on /workers."""
    return JSONResponse(msgspec.to_builtins(context(request).catalog.strategies()))


routes = [Route("/api/strategies", list_strategies, name="strategies")]
