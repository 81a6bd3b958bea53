"""Live updates as Server-Sent Events: `feed` (one blocking read of the log per API process,
fanned out), `sse` (the streams and their routes), `coalesce` (progress at most every 250 ms)."""

from api.live.coalesce import Coalescer
from api.live.feed import PAGE, QUEUE_EVENTS, READ_BLOCK_MS, LiveFeed, close_streams
from api.live.sse import COALESCE_S, routes

__all__ = ["COALESCE_S", "PAGE", "QUEUE_EVENTS", "READ_BLOCK_MS", "Coalescer", "LiveFeed", "close_streams", "routes"]
