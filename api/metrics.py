"""Prometheus metrics derived from the event log and Redis at scrape time, and /readyz."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Iterator
from typing import Any

import msgspec
import redis.exceptions
import structlog
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from orchestrator.domain.errors import EventDecodeError
from orchestrator.domain.events import (
    Cancelled,
    Completed,
    Failed,
    Released,
    Requeued,
    RetryScheduled,
    Started,
    StoredEvent,
    Submitted,
)
from orchestrator.storage.codec import decode_entry, text
from orchestrator.storage.presence import read_beats

log = structlog.get_logger("backstream.metrics")

STATUSES = ("queued", "running", "completed", "failed", "cancelled")
PAGE = 1000
# Counting the log entries the projector has not applied stops here (XRANGE cost is bounded).
LAG_COUNT_CAP = 10_000
# From sub-second backtests to hour-long sweeps.
DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900, 1800, 3600)
WAIT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900)
CANCEL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)


def _ms(entry_id: str) -> int:
    return int(entry_id.split("-", 1)[0])


class LogFollower:
    """Folds the event log, from its start, into counters and histograms: exact (each event is
    counted once, in log order) and the same after an API restart (a new follower re-reads the
    log). Reads incrementally with XRANGE after its position, at each scrape."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.position = "0-0"
        self.folded = 0
        self._lock = asyncio.Lock()
        self._runnable_at: dict[str, int] = {}  # task -> ms it became runnable (queued)
        self._started_at: dict[str, int] = {}  # task -> ms its current attempt started
        r = registry
        self.submitted = Counter("backstream_tasks_submitted", "Tasks submitted", registry=r)
        self.completed = Counter("backstream_tasks_completed", "Tasks completed", registry=r)
        self.failed = Counter(
            "backstream_tasks_failed", "Tasks failed for good (after their retries)", ["error_type"], registry=r
        )
        self.cancelled = Counter(
            "backstream_tasks_cancelled", "Tasks cancelled, by the status they had", ["previous_status"], registry=r
        )
        self.retries = Counter("backstream_attempts_retried", "Failed attempts scheduled to run again", registry=r)
        self.requeued = Counter("backstream_tasks_requeued", "Failed tasks sent back by a user (retry)", registry=r)
        self.released = Counter(
            "backstream_tasks_released", "Unfinished tasks given back by a stopping worker", registry=r
        )
        self.started = Counter("backstream_attempts_started", "Attempts started (claims)", registry=r)
        self.reclaims = Counter(
            "backstream_reclaims", "Attempts that took a task over from a worker whose lease expired", registry=r
        )
        self.duration = Histogram(
            "backstream_task_duration_seconds",
            "Run time of an attempt, from its `started` to its outcome",
            ["outcome"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.queue_wait = Histogram(
            "backstream_queue_wait_seconds",
            "From a task becoming runnable (submitted, requeued, released, retry due) to its `started`",
            buckets=WAIT_BUCKETS,
            registry=r,
        )

    async def catch_up(self, redis: Any, stream: str) -> None:
        async with self._lock:
            while True:
                entries = await redis.xrange(stream, f"({self.position}", "+", count=PAGE)
                for entry_id, fields in entries:
                    try:
                        self.fold(decode_entry(entry_id, fields))
                    except EventDecodeError as e:  # newer writer: skip it here, the projector stops
                        log.warning("metrics.undecodable", entry=text(entry_id), error=str(e))
                    self.position = text(entry_id)
                if len(entries) < PAGE:
                    return

    def fold(self, stored: StoredEvent) -> None:
        at, event, task_id = stored.at_ms, stored.event, stored.event.task_id
        self.folded += 1
        match event:
            case Submitted():
                self.submitted.inc()
                self._runnable_at[task_id] = at
            case Started(reclaimed=reclaimed):
                self.started.inc()
                if reclaimed:
                    self.reclaims.inc()
                queued = self._runnable_at.pop(task_id, None)
                if queued is not None and not reclaimed:
                    self.queue_wait.observe(max(at - queued, 0) / 1000)
                self._started_at[task_id] = at
            case Completed():
                self.completed.inc()
                self._ended(task_id, at, "completed")
            case Failed(error_type=error_type):
                self.failed.labels(error_type).inc()
                self._ended(task_id, at, "failed")
            case RetryScheduled(delay_ms=delay_ms):
                self.retries.inc()
                self._attempt_done(task_id, at, "retry")
                self._runnable_at[task_id] = at + delay_ms
            case Released():
                self.released.inc()
                self._attempt_done(task_id, at, "released")
                self._runnable_at[task_id] = at
            case Requeued():
                self.requeued.inc()
                self._runnable_at[task_id] = at
            case Cancelled(previous_status=previous):
                self.cancelled.labels(previous or "unknown").inc()
                self._ended(task_id, at, "cancelled")

    def _attempt_done(self, task_id: str, at: int, outcome: str) -> None:
        started = self._started_at.pop(task_id, None)
        if started is not None:
            self.duration.labels(outcome).observe(max(at - started, 0) / 1000)

    def _ended(self, task_id: str, at: int, outcome: str) -> None:
        self._attempt_done(task_id, at, outcome)
        self._runnable_at.pop(task_id, None)


class _Snapshot:
    """Gauges read from Redis at scrape time, handed to prometheus-client as a collector."""

    def __init__(self) -> None:
        self.families: list[Metric] = []

    def collect(self) -> Iterator[Metric]:
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


def metrics_of(app: Any) -> ApiMetrics:
    metrics = getattr(app.state, "metrics", None)
    if metrics is None:
        metrics = app.state.metrics = ApiMetrics()
    return metrics


def _gauge(name: str, doc: str, labels: list[str], samples: list[tuple[list[str], float]]) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, doc, labels=labels)
    for values, value in samples:
        family.add_metric(values, value)
    return family


async def consumer_groups(client: Any, stream: str) -> tuple[list[dict[str, Any]], dict[str, list[dict[str, Any]]]]:
    try:
        groups = await client.xinfo_groups(stream)
    except redis.exceptions.ResponseError as e:  # no such key: no worker has started yet
        if "no such key" in str(e).lower():
            return [], {}
        raise
    consumers = {}
    for group in groups:
        name = text(group["name"])
        consumers[name] = await client.xinfo_consumers(stream, name)
    return groups, consumers


async def projector_lag(
    redis: Any, stream: str, position: str | None, *, cap: int = LAG_COUNT_CAP
) -> tuple[int, float]:
    """Log entries after the projector's position (counted up to `cap`), and the age in
    seconds of the newest entry it has not applied relative to its position."""
    after = position or "0-0"
    pending = await redis.xrange(stream, f"({after}", "+", count=cap)
    if not pending:
        return 0, 0.0
    newest = _ms(text(pending[-1][0]))
    return len(pending), max(newest - _ms(after), 0) / 1000 if position else 0.0


async def read_gauges(ctx: Any) -> list[Metric]:
    store, projection = ctx.store, ctx.projection
    keys = store.keys
    redis = store.redis
    position = await projection.position()  # also follows a rebuilt live projection
    pkeys = projection.keys
    async with redis.pipeline(transaction=False) as pipe:
        for status in STATUSES:
            pipe.zcard(pkeys.projected_index(status))
        pipe.xlen(keys.dead_letters)
        pipe.zcard(keys.delayed)
        pipe.xlen(keys.events)
        pipe.xlen(keys.work)
        replies = await pipe.execute()
    counts, (dead, delayed, log_len, work_len) = replies[: len(STATUSES)], replies[len(STATUSES) :]
    lag_events, lag_seconds = await projector_lag(redis, keys.events, position)
    groups, consumers = await consumer_groups(redis, keys.work)
    workers = await read_beats(redis, keys.worker_heartbeats)
    projectors = await read_beats(redis, keys.projector_heartbeats)
    lease = ctx.settings.lease_ms
    families: list[Metric] = [
        _gauge(
            "backstream_tasks",
            "Tasks by status (the projection's indexes)",
            ["status"],
            [([s], float(c)) for s, c in zip(STATUSES, counts, strict=True)],
        ),
        _gauge("backstream_dead_letters", "Entries in the dead-letter stream", [], [([], float(dead))]),
        _gauge("backstream_retries_waiting", "Tasks waiting out a retry delay", [], [([], float(delayed))]),
        _gauge("backstream_log_entries", "Entries in the event log", [], [([], float(log_len))]),
        _gauge("backstream_work_entries", "Entries in the work stream", [], [([], float(work_len))]),
        _gauge(
            "backstream_projector_lag_events",
            f"Log entries the projector has not applied (counted up to {LAG_COUNT_CAP})",
            [],
            [([], float(lag_events))],
        ),
        _gauge(
            "backstream_projector_lag_seconds",
            "Time between the projector's position and the newest log entry it has not applied",
            [],
            [([], lag_seconds)],
        ),
        _gauge(
            "backstream_group_pending",
            "Work items delivered and not yet acknowledged",
            ["group"],
            [([text(g["name"])], float(g["pending"])) for g in groups],
        ),
        _gauge(
            "backstream_group_lag",
            "Work items not yet delivered to the group",
            ["group"],
            [([text(g["name"])], float(g["lag"])) for g in groups if g.get("lag") is not None],
        ),
        _gauge(
            "backstream_group_consumers",
            "Consumers in the group (alive or not)",
            ["group"],
            [([text(g["name"])], float(g["consumers"])) for g in groups],
        ),
        _gauge(
            "backstream_consumer_pending",
            "Work items a consumer holds",
            ["group", "consumer"],
            [([g, text(c["name"])], float(c["pending"])) for g, cs in consumers.items() for c in cs],
        ),
        _gauge(
            "backstream_worker_heartbeat_age_seconds",
            "Time since a worker's own heartbeat (alive while under the lease)",
            ["worker"],
            [([name], age) for name, age in sorted(workers.ages_s.items())],
        ),
        _gauge(
            "backstream_workers_alive",
            "Workers whose heartbeat is within the lease",
            [],
            [([], len(workers.alive(lease)))],
        ),
        _gauge(
            "backstream_projectors_alive",
            "Projectors whose heartbeat is within the lease",
            [],
            [([], len(projectors.alive(lease)))],
        ),
        _gauge(
            "backstream_consumer_idle_seconds",
            "Time since a consumer last touched the work stream (before Redis 7.2, reads that "
            "deliver nothing do not count: use backstream_worker_heartbeat_age_seconds for liveness)",
            ["group", "consumer"],
            [([g, text(c["name"])], c["idle"] / 1000) for g, cs in consumers.items() for c in cs],
        ),
    ]
    return families


async def metrics(request: Request) -> Response:
    ctx = request.app.state.ctx
    m = metrics_of(request.app)
    started = time.monotonic()
    await m.follower.catch_up(ctx.store.redis, ctx.store.keys.events)
    m.snapshot.families = await read_gauges(ctx)
    log.debug("metrics.scraped", seconds=round(time.monotonic() - started, 4), position=m.follower.position)
    return Response(generate_latest(m.registry), media_type=CONTENT_TYPE_LATEST)


class Readiness(msgspec.Struct, frozen=True):
    """What /readyz found. `reasons` is empty when ready; each names a check and what is wrong."""

    reasons: list[dict[str, str]]
    projector_lag_events: int  # log entries not yet projected, counted up to 100
    projector_lag_s: float  # age of the oldest of them, by Redis's clock
    projectors_alive: int
    workers_alive: int


async def readiness(ctx: Any) -> Readiness:
    """Is the read side keeping up? Not when no projector has beaten within the lease
    (stopped, or never started), nor when the oldest log entry not yet projected is older
    than `ready_max_lag_s` (stuck or far behind). Raises redis errors."""
    settings, redis, keys = ctx.settings, ctx.store.redis, ctx.store.keys
    position = await ctx.projection.position()
    # A probe runs often: it reads at most a hundred entries to say how far behind it is.
    behind = await redis.xrange(keys.events, f"({position or '0-0'}", "+", count=100)
    projectors = await read_beats(redis, keys.projector_heartbeats)
    workers = await read_beats(redis, keys.worker_heartbeats)
    lag_s = max(projectors.now_ms - _ms(text(behind[0][0])), 0) / 1000 if behind else 0.0
    reasons = []
    alive = projectors.alive(settings.lease_ms)
    if not alive:
        ages = projectors.ages_s.values()
        last = f"the last one {min(ages):.0f} s ago" if ages else "none ever"
        reasons.append(
            {"check": "projector", "message": f"no projector has sent a heartbeat within the lease ({last})"}
        )
    if lag_s > settings.ready_max_lag_s:
        reasons.append(
            {
                "check": "projector_lag",
                "message": f"the oldest event not yet projected is {lag_s:.1f} s old, over the "
                f"{settings.ready_max_lag_s:g} s allowed (BACKSTREAM_READY_MAX_LAG_S)",
            }
        )
    return Readiness(
        reasons=reasons,
        projector_lag_events=len(behind),
        projector_lag_s=lag_s,
        projectors_alive=len(alive),
        workers_alive=len(workers.alive(settings.lease_ms)),
    )


async def readyz(request: Request) -> Response:
    """Ready to take traffic: Redis answers, the server is not shutting down, and a projector
    is alive and keeping up (so lists and the dashboard show what was written). The body says
    why when not. (/healthz only says the process and Redis are up.)"""
    ctx = request.app.state.ctx
    feed = getattr(request.app.state, "live", None)
    if feed is not None and feed.closed:
        return JSONResponse({"status": "shutting_down"}, status_code=503, headers={"Retry-After": "2"})
    try:
        found = await readiness(ctx)
    except (redis.exceptions.RedisError, OSError) as e:  # any failure to answer means not ready
        return JSONResponse({"status": "unavailable", "error": str(e)}, status_code=503, headers={"Retry-After": "2"})
    body = {"status": "not_ready" if found.reasons else "ready", **msgspec.to_builtins(found)}
    if found.reasons:
        return JSONResponse(body, status_code=503, headers={"Retry-After": "2"})
    return JSONResponse(body)


_CANCEL_PATH = re.compile(r"^/api/backtests/tasks/[^/]+$")


class CancelTimer:
    """Pure ASGI: times DELETE /api/backtests/tasks/{id} from arrival to the answer's start."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] != "DELETE" or not _CANCEL_PATH.match(scope["path"]):
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()

        async def timed(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                outcome = "cancelled" if message["status"] == 200 else "refused"
                metrics_of(scope["app"]).cancel_latency.labels(outcome).observe(time.perf_counter() - started)
            await send(message)

        await self.app(scope, receive, timed)


routes = [
    Route("/metrics", metrics),
    Route("/readyz", readyz),
]
