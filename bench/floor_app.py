"""The floor for HTTP submit latency: a bare Starlette endpoint that does one XADD on the same Redis,
served by the same uvicorn setup as Backstream's API (`python -m bench.floor_app --port P`)."""

from __future__ import annotations

import argparse
import contextlib
import os
from collections.abc import AsyncIterator

import redis.asyncio as aioredis
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route


def create_app(redis_url: str, stream: str) -> Starlette:
    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        app.state.redis = aioredis.Redis.from_url(redis_url, protocol=2, socket_timeout=5.0)
        try:
            yield
        finally:
            await app.state.redis.aclose()

    async def submit(request: Request) -> Response:
        body = await request.body()
        entry_id = await request.app.state.redis.xadd(stream, {"body": body})
        return JSONResponse({"id": entry_id.decode(), "status": "queued"}, status_code=202)

    return Starlette(routes=[Route("/api/backtests", submit, methods=["POST"])], lifespan=lifespan)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    app = create_app(os.environ["REDIS_URL"], os.environ.get("BACKSTREAM_PREFIX", "{bs}") + ":floor")
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_config=None, access_log=False, lifespan="on")
