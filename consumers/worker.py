"""The worker: a member of the consumer group that claims, runs, heartbeats and finishes tasks."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import msgspec
import structlog

from consumers.engine.errors import EngineError
from consumers.engine.runner import start_run
from orchestrator.codec import encode_json
from orchestrator.events import Completed, Failed
from orchestrator.keys import WORKER_GROUP
from orchestrator.settings import Settings
from orchestrator.spec import BacktestSpec
from orchestrator.store import EventStore

log = structlog.get_logger("backstream.worker")

# How much computing one chunk of a backtest may do before the worker looks up again: the
# bound on how long a cancel waits for the running task to notice it.
CHUNK_SECONDS = 0.02

# An idle read blocks this long before the loop checks for a stop request and due reclaims.
READ_BLOCK_MS = 1000


class WorkItem(msgspec.Struct, frozen=True):
    message_id: str
    task_id: str
    spec: BacktestSpec | None
    # True when the item came from another (presumed dead) consumer's pending list.
    reclaim: bool


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _work_item(message_id: Any, fields: dict[Any, Any] | None, reclaim: bool) -> WorkItem:
    fields = {_text(k): v for k, v in (fields or {}).items()}
    spec_raw = fields.get("spec")
    return WorkItem(
        message_id=_text(message_id),
        task_id=_text(fields.get("task_id", b"")),
        spec=msgspec.json.decode(spec_raw, type=BacktestSpec) if spec_raw else None,
        reclaim=reclaim,
    )


class Worker:
    """Runs up to `concurrency` tasks at once; the backtest kernel computes in threads so the
    event loop keeps heartbeating and answering cancels."""

    def __init__(
        self,
        store: EventStore,
        reader: Any,
        catalog: Any,
        settings: Settings,
        *,
        name: str,
        concurrency: int = 1,
    ) -> None:
        self.store = store
        self.reader = reader  # a client without a socket timeout, for blocking reads
        self.catalog = catalog
        self.settings = settings
        self.name = name
        self.concurrency = concurrency
        self._running: set[asyncio.Task[None]] = set()
        self._stopping = asyncio.Event()
        self._next_reclaim = 0.0
        self.completed = 0

    def stop(self) -> None:
        self._stopping.set()

    async def run(self, *, burst: bool = False) -> None:
        """Take and run work until stopped; in burst mode, until no work is left."""
        await self.store.ensure_group()
        log.info("worker.started", worker=self.name, concurrency=self.concurrency)
        # A worker restarted under the same name first takes back what it held before.
        pending = await self._own_pending()
        while not self._stopping.is_set():
            free = self.concurrency - len(self._running)
            if free <= 0:
                await asyncio.wait(self._running, return_when=asyncio.FIRST_COMPLETED)
                continue
            items = pending[:free] or await self._reclaim(free) or await self._read_new(free, burst)
            pending = pending[len(items):] if pending else pending
            if not items:
                if not burst:
                    continue
                if not self._running:
                    break
                await asyncio.wait(self._running, return_when=asyncio.FIRST_COMPLETED)
                continue
            for item in items:
                task = asyncio.create_task(self._handle(item))
                self._running.add(task)
                task.add_done_callback(self._running.discard)
        if self._running:
            await asyncio.wait(self._running)
        log.info("worker.stopped", worker=self.name, completed=self.completed)

    async def _read_new(self, count: int, burst: bool) -> list[WorkItem]:
        reply = await self.reader.xreadgroup(
            WORKER_GROUP, self.name, {self.store.keys.work: ">"}, count=count,
            block=None if burst else READ_BLOCK_MS,
        )
        return [_work_item(mid, fields, False) for _, entries in reply or [] for mid, fields in entries]

    async def _own_pending(self) -> list[WorkItem]:
        reply = await self.reader.xreadgroup(
            WORKER_GROUP, self.name, {self.store.keys.work: "0"}, count=10_000
        )
        return [_work_item(mid, fields, True) for _, entries in reply or [] for mid, fields in entries]

    async def _reclaim(self, count: int) -> list[WorkItem]:
        """Take over work whose owner has not renewed its lease (XAUTOCLAIM, paging through the
        whole pending list). Entries whose work item was deleted are acknowledged and dropped."""
        now = time.monotonic()
        if now < self._next_reclaim:
            return []
        self._next_reclaim = now + self.settings.lease_ms / 2000
        redis, keys = self.store.redis, self.store.keys
        items: list[WorkItem] = []
        cursor = "0-0"
        while len(items) < count:
            reply = await redis.xautoclaim(
                keys.work, WORKER_GROUP, self.name, min_idle_time=self.settings.lease_ms,
                start_id=cursor, count=count - len(items),
            )
            cursor = _text(reply[0])
            items += [_work_item(mid, fields, True) for mid, fields in reply[1] if fields]
            deleted = reply[2] if len(reply) > 2 else []
            if deleted:
                await redis.xack(keys.work, WORKER_GROUP, *deleted)
            if cursor == "0-0":
                break
        if items:
            log.info("worker.reclaimed", worker=self.name, count=len(items))
        return items

    async def _drop(self, item: WorkItem) -> None:
        redis, keys = self.store.redis, self.store.keys
        await redis.xack(keys.work, WORKER_GROUP, item.message_id)
        await redis.xdel(keys.work, item.message_id)

    async def _handle(self, item: WorkItem) -> None:
        structlog.contextvars.bind_contextvars(task_id=item.task_id, worker=self.name)
        if item.spec is None:
            log.warning("task.malformed_work_item", message_id=item.message_id)
            await self._drop(item)
            return
        claim = await self.store.claim(
            item.task_id, worker=self.name, token=uuid.uuid4().hex, message_id=item.message_id,
            reclaim=item.reclaim,
        )
        if claim.outcome != "ok":
            log.info("task.not_claimed", outcome=claim.outcome)
            if claim.outcome in ("terminal", "missing"):
                await self._drop(item)
            return
        structlog.contextvars.bind_contextvars(attempt=claim.attempt)
        log.info("task.claimed", reclaim=item.reclaim)
        try:
            await self._execute(item, item.spec, claim.attempt)
        except Exception:
            log.exception("task.worker_error")
            raise

    async def _execute(self, item: WorkItem, spec: BacktestSpec, attempt: int) -> None:
        started = time.monotonic()
        heartbeat_s = self.settings.heartbeat_ms / 1000
        progress_s = self.settings.progress_interval_ms / 1000
        try:
            run = await asyncio.to_thread(start_run, spec, self.catalog)
            last_beat = last_progress = time.monotonic()
            reported = 0.0
            while not run.done:
                await asyncio.to_thread(run.advance, CHUNK_SECONDS)
                if run.done:
                    break
                if not await self._still_mine(item.task_id, attempt):
                    return
                now = time.monotonic()
                report = now - last_progress >= progress_s and run.progress > reported
                if report or now - last_beat >= heartbeat_s:
                    fenced = await self.store.heartbeat(
                        item.task_id, attempt, worker=self.name, message_id=item.message_id,
                        progress=run.progress if report else None,
                    )
                    if fenced is not None:
                        log.warning("task.write_refused", write="heartbeat", status=fenced.status,
                                    current_attempt=fenced.attempt)
                        return
                    last_beat = now
                    if report:
                        last_progress, reported = now, run.progress
            outcome = run.outcome()
            event: Completed | Failed = Completed(task_id=item.task_id, attempt=attempt, result=outcome.summary)
            result = encode_json(outcome.detail)
        except EngineError as e:
            event, result = Failed(task_id=item.task_id, attempt=attempt, error=str(e),
                                   error_type=type(e).__name__), b""
        except Exception as e:  # a bug or a resource problem in the engine: recorded, not lost
            log.exception("task.engine_crashed")
            event, result = Failed(task_id=item.task_id, attempt=attempt, error=f"{type(e).__name__}: {e}",
                                   error_type=type(e).__name__), b""
        fenced = await self.store.finish(event, message_id=item.message_id, result=result)
        if fenced is not None:
            log.warning("task.write_refused", write=type(event).__name__.lower(), status=fenced.status,
                        current_attempt=fenced.attempt)
            return
        self.completed += 1
        log.info("task.finished", outcome=type(event).__name__.lower(),
                 seconds=round(time.monotonic() - started, 4))

    async def _still_mine(self, task_id: str, attempt: int) -> bool:
        """Between chunks: is the task still running under this attempt? (A cancel or a
        takeover stops the run here; nothing more is written for it.)"""
        status, current = await self.store.redis.hmget(self.store.keys.control(task_id), "status", "attempt")
        if _text(status) == "running" and int(current or 0) == attempt:
            return True
        log.info("task.stopped", reason="cancelled" if _text(status) == "cancelled" else "lost_claim",
                 status=_text(status))
        return False
