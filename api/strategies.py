"""`GET /api/strategies`: the strategies this API validates against, with their parameters."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from consumers.engine.metrics import OBJECTIVES
from consumers.engine.registry import strategies


async def list_strategies(request: Request) -> Response:
    """Every installed strategy (built-ins first, then plugins) as
    `{"name", "summary", "origin", "params": [{"name", "type", "minimum", "maximum",
    "exclusive_minimum", "exclusive_maximum", "default", "description"}]}`, the sweep objectives,
    and plugins that failed to load (`{"entry_point", "error"}`), so an operator sees why one is
    missing. A request may name only these strategies; workers each list theirs on /workers."""
    known = strategies()
    return JSONResponse(
        {
            "strategies": [s.as_json() for s in known.values()],
            "objectives": list(OBJECTIVES),
            "load_failures": [{"entry_point": f.entry_point, "error": f.error} for f in known.failures],
        }
    )


routes = [Route("/api/strategies", list_strategies, name="strategies")]
