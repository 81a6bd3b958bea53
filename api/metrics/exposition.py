"""GET /metrics: the log follower's counters and the read model's gauges, in Prometheus's text
format; and the cancel-latency timer."""

from __future__ import annotations

import time
from collections.abc import Iterator

import structlog
from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.context import context
from api.metrics.follower import LogFollower
from orchestrator.domain.status import Status
from orchestrator.storage.codec import text
from orchestrator.storage.readmodel.gauges import LAG_COUNT_CAP, Gauges

log = structlog.get_logger("backstream.metrics")

CANCEL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)


class _Snapshot:
    """Gauges read from Redis at scrape time, handed to prometheus-client as a collector."""

    def __init__(self) -> None:
        self.families: list[Metric] = []

    def collect(self) -> Iterator[Metric]:
        """The families read at the last scrape (prometheus-client's collector protocol)."""
        yield from self.families


class ApiMetrics:
    """The metrics of one API process: its own registry (no global state)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.follower = LogFollower(self.registry)
        self.snapshot = _Snapshot()
        self.registry.register(self.snapshot)
        self.cancel_latency = Histogram(
            "backstream_cancel_latency_seconds",
            "From a cancel request reaching the API to the task being "
            "cancelled in the log (its `cancelled` event stored; the worker stops at its next check)",
            ["outcome"],
            buckets=CANCEL_BUCKETS,
            registry=self.registry,
        )


def metrics_of(app: Starlette) -> ApiMetrics:
    """The app's ApiMetrics, made on first use."""
    metrics = getattr(app.state, "metrics", None)
    if metrics is None:
        metrics = app.state.metrics = ApiMetrics()
    return metrics


def _gauge(name: str, doc: str, labels: list[str], samples: list[tuple[list[str], float]]) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, doc, labels=labels)
    for values, value in samples:
        family.add_metric(values, value)
    return family


def _queue_families(g: Gauges) -> list[Metric]:
    return [
        _gauge(
            "backstream_tasks",
            "Tasks by status (the projection's indexes)",
            ["status"],
            [([s], float(g.tasks.get(s, 0))) for s in Status],
        ),
        _gauge("backstream_dead_letters", "Entries in the dead-letter stream", [], [([], float(g.dead_letters))]),
        _gauge("backstream_retries_waiting", "Tasks waiting out a retry delay", [], [([], float(g.retries_waiting))]),
        _gauge("backstream_log_entries", "Entries in the event log", [], [([], float(g.log_entries))]),
        _gauge("backstream_work_entries", "Entries in the work stream", [], [([], float(g.work_entries))]),
        _gauge(
            "backstream_projector_lag_events",
            f"Log entries the projector has not applied (counted up to {LAG_COUNT_CAP})",
            [],
            [([], float(g.lag_events))],
        ),
        _gauge(
            "backstream_projector_lag_seconds",
            "Time between the projector's position and the newest log entry it has not applied",
            [],
            [([], g.lag_seconds)],
        ),
    ]


def _group_families(g: Gauges) -> list[Metric]:
    consumers = g.consumers.items()
    return [
        _gauge(
            "backstream_group_pending",
            "Work items delivered and not yet acknowledged",
            ["group"],
            [([text(x["name"])], float(x["pending"])) for x in g.groups],
        ),
        _gauge(
            "backstream_group_lag",
            "Work items not yet delivered to the group",
            ["group"],
            [([text(x["name"])], float(x["lag"])) for x in g.groups if x.get("lag") is not None],
        ),
        _gauge(
            "backstream_group_consumers",
            "Consumers in the group (alive or not)",
            ["group"],
            [([text(x["name"])], float(x["consumers"])) for x in g.groups],
        ),
        _gauge(
            "backstream_consumer_pending",
            "Work items a consumer holds",
            ["group", "consumer"],
            [([group, text(c["name"])], float(c["pending"])) for group, cs in consumers for c in cs],
        ),
    ]


def _liveness_families(g: Gauges, lease_ms: int) -> list[Metric]:
    return [
        _gauge(
            "backstream_worker_heartbeat_age_seconds",
            "Time since a worker's own heartbeat (alive while under the lease)",
            ["worker"],
            [([name], age) for name, age in sorted(g.workers.ages_s.items())],
        ),
        _gauge(
            "backstream_workers_alive",
            "Workers whose heartbeat is within the lease",
            [],
            [([], len(g.workers.alive(lease_ms)))],
        ),
        _gauge(
            "backstream_projectors_alive",
            "Projectors whose heartbeat is within the lease",
            [],
            [([], len(g.projectors.alive(lease_ms)))],
        ),
        _gauge(
            "backstream_consumer_idle_seconds",
            "Time since a consumer last touched the work stream (before Redis 7.2, reads that "
            "deliver nothing do not count: use backstream_worker_heartbeat_age_seconds for liveness)",
            ["group", "consumer"],
            [([group, text(c["name"])], c["idle"] / 1000) for group, cs in g.consumers.items() for c in cs],
        ),
    ]


def gauge_families(g: Gauges, *, lease_ms: int) -> list[Metric]:
    """The gauges as Prometheus metric families, in the order /metrics has always listed them;
    `lease_ms` decides who counts as alive."""
    return [*_queue_families(g), *_group_families(g), *_liveness_families(g, lease_ms)]


async def metrics(request: Request) -> Response:
    """GET /metrics in Prometheus's text format. Raises redis errors (a 500)."""
    ctx = context(request)
    m = metrics_of(request.app)
    started = time.monotonic()
    await m.follower.catch_up(ctx.projection)
    m.snapshot.families = gauge_families(await ctx.projection.gauges(), lease_ms=ctx.settings.lease_ms)
    log.debug("metrics.scraped", seconds=round(time.monotonic() - started, 4), position=str(m.follower.position))
    return Response(generate_latest(m.registry), media_type=CONTENT_TYPE_LATEST)


class CancelTimer:
    """Pure ASGI: times the requests `cancel` matches (DELETE /api/backtests/tasks/{id}, the route
    named `cancel`) from arrival to the answer's start, into the app's cancel-latency histogram."""

    def __init__(self, app: ASGIApp, *, cancel: BaseRoute) -> None:
        self.app = app
        self.cancel = cancel

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The ASGI entry: times each request the `cancel` route fully matches (seconds, into the
        cancel-latency histogram) and passes every request on unchanged."""
        if scope["type"] != "http" or self.cancel.matches(scope)[0] is not Match.FULL:
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()

        async def timed(message: Message) -> None:
            if message["type"] == "http.response.start":
                outcome = Status.CANCELLED if message["status"] == 200 else "refused"
                metrics_of(scope["app"]).cancel_latency.labels(outcome).observe(time.perf_counter() - started)
            await send(message)

        await self.app(scope, receive, timed)
