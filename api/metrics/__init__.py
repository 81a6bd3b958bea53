"""Metrics and readiness: `follower` (counters folded from the log), `exposition` (GET /metrics
from the follower and the read model's gauges; the cancel timer), `ready` (GET /readyz)."""

from starlette.routing import Route

from api.metrics.exposition import ApiMetrics, CancelTimer, metrics, metrics_of
from api.metrics.ready import Readiness, readiness, readyz

routes = [
    Route("/metrics", metrics, name="metrics"),
    Route("/readyz", readyz, name="readyz"),
]

__all__ = ["ApiMetrics", "CancelTimer", "Readiness", "metrics_of", "readiness", "routes"]
