"""Backstream's side of each scenario, run in the Backstream environment (redis-py 8):
submit through the client or HTTP and follow the log to completion; HTTP submit latency; cancels.

    python -m bench.bs_driver <scenario> '<json args>'   prints one JSON object
"""

from __future__ import annotations

import asyncio
import json
import random
import sys
import time
import uuid
from typing import Any

import msgspec
import redis.asyncio as aioredis

from bench.procs import WorkerLogs, entry_ms, percentile
from bench.work import LONG_SPEC_FIELDS, SMA_SPEC_FIELDS, sma_spec
from orchestrator.domain.events import Cancelled
from orchestrator.domain.spec import BacktestSpec
from orchestrator.storage.commands import Commands
from orchestrator.storage.keys import Keys
from orchestrator.storage.partitions import Layout
from orchestrator.storage.readmodel.log import task_events
from orchestrator.storage.workqueue import WorkQueue


async def _last_id(r: Any, stream: str) -> bytes:
    last = await r.xrevrange(stream, "+", "-", count=1)
    return last[0][0] if last else b"0-0"


async def throughput(
    redis_url: str,
    prefix: str,
    n: int,
    via: str = "client",
    api_url: str | None = None,
    concurrency: int = 32,
    timeout: float = 300.0,
) -> dict[str, Any]:
    """Submit `n` SMA specs (through Commands.submit or POST /api/backtests, `concurrency` in
    flight) and follow the event log until each has its `completed` event.

    Times: a task's submit time is the client's clock just before its submit call; its completion
    time is the millisecond time of its `completed` event's stream id (Redis's clock, same host)."""
    keys = Keys(prefix=prefix)
    r = aioredis.Redis.from_url(redis_url, protocol=2, socket_timeout=30)
    reader = aioredis.Redis.from_url(redis_url, protocol=2, socket_timeout=None)
    layout = Layout(prefix=prefix)
    store = Commands(r, layout)
    await WorkQueue(r, layout).ensure_group()
    spec: BacktestSpec = sma_spec()
    body = msgspec.json.encode(spec)
    proj_done = keys.projected_index("completed")
    proj_before = await r.zcard(proj_done)
    start_id = await _last_id(r, keys.events)
    submitted: dict[str, float] = {}
    completed: dict[str, int] = {}
    counts = {"events": 0, "errors": 0}
    submit_done = asyncio.Event()

    async def follow() -> None:
        last = start_id
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            reply = await reader.xread({keys.events: last}, count=10_000, block=100)
            for _, entries in reply or []:
                for entry_id, fields in entries:
                    last = entry_id
                    counts["events"] += 1
                    if fields[b"type"] == b"completed":
                        completed[fields[b"task_id"].decode()] = entry_ms(entry_id)
            if submit_done.is_set() and len(completed) >= n and all(t in completed for t in submitted):
                return
        raise TimeoutError(f"{len(completed)} of {n} tasks completed within {timeout}s")

    async def by_client() -> None:
        gate = asyncio.Semaphore(concurrency)

        async def one() -> None:
            async with gate:
                task_id = str(uuid.uuid4())
                submitted[task_id] = time.time()
                await store.submit(task_id, spec, body=body)

        await asyncio.gather(*(one() for _ in range(n)))

    async def by_http() -> None:
        import aiohttp

        left = iter(range(n))
        conn = aiohttp.TCPConnector(limit=concurrency)
        async with aiohttp.ClientSession(api_url, connector=conn) as http:

            async def loop() -> None:
                for _ in left:
                    t = time.time()
                    async with http.post(
                        "/api/backtests", data=body, headers={"content-type": "application/json"}
                    ) as resp:
                        payload = await resp.json()
                        if resp.status != 202:
                            counts["errors"] += 1
                            continue
                    submitted[payload["task_id"]] = t

            await asyncio.gather(*(loop() for _ in range(concurrency)))

    follower = asyncio.create_task(follow())
    t0 = time.time()
    await (by_http() if via == "http" else by_client())
    t_submitted = time.time()
    submit_done.set()
    await follower
    t_seen = time.time()
    # The projection must catch up too: the full history and its projection are what we claim.
    while await r.zcard(proj_done) < proj_before + len(submitted) and time.time() - t_seen < 60:
        await asyncio.sleep(0.005)
    t_projected = time.time()
    first = min(submitted.values())
    last_done = max(completed[t] for t in submitted) / 1000
    lat = [completed[t] / 1000 - s for t, s in submitted.items()]
    await r.aclose()
    await reader.aclose()
    span = last_done - first
    return {
        "tasks": len(submitted),
        "errors": counts["errors"],
        "seconds": span,
        "tasks_per_s": len(submitted) / span if span > 0 else None,
        "submit_per_s": len(submitted) / (t_submitted - t0),
        "p50_ms": 1000 * percentile(lat, 0.5),
        "p99_ms": 1000 * percentile(lat, 0.99),
        "events": counts["events"],
        "events_per_task": counts["events"] / max(1, len(submitted)),
        "events_per_s": counts["events"] / span if span > 0 else None,
        "projection_lag_ms": 1000 * max(0.0, t_projected - max(last_done, t_seen - 0.0)),
    }


async def http_latency(url: str, n: int, concurrency: int, path: str = "/api/backtests") -> dict[str, Any]:
    """POST the SMA spec `n` times with `concurrency` in flight; per-request latency."""
    import aiohttp

    body = json.dumps(SMA_SPEC_FIELDS).encode()
    lat: list[float] = []
    errors = 0
    left = iter(range(n))
    conn = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(url, connector=conn) as http:
        for _ in range(min(50, n)):  # warm the connection pool and the server
            async with http.post(path, data=body, headers={"content-type": "application/json"}) as resp:
                await resp.read()

        async def loop() -> None:
            nonlocal errors
            for _ in left:
                t = time.perf_counter()
                try:
                    async with http.post(path, data=body, headers={"content-type": "application/json"}) as resp:
                        await resp.read()
                        ok = resp.status == 202
                except aiohttp.ClientError:
                    ok = False
                lat.append(time.perf_counter() - t)
                errors += not ok

        t0 = time.perf_counter()
        await asyncio.gather(*(loop() for _ in range(concurrency)))
        wall = time.perf_counter() - t0
    return {
        "requests": n,
        "errors": errors,
        "p50_ms": 1000 * percentile(lat, 0.5),
        "p99_ms": 1000 * percentile(lat, 0.99),
        "requests_per_s": n / wall,
    }


async def cancel_latency(
    redis_url: str, prefix: str, api_url: str, worker_logs: list[str], n: int, parallel: int = 1
) -> dict[str, Any]:
    """Cancel `n` running long backtests over HTTP, `parallel` at a time (one per worker process).

    For each: submit, wait until the control hash says running, let it compute 20-60 ms, then
    t0 = just before `DELETE`. Measured from t0: the HTTP answer; the `cancelled` event's stream id
    time; the worker's `task.stopped` log line (it saw the cancel between chunks and stopped
    computing; fencing makes that its last action for the task). Also counted: events appended for
    the task after `cancelled` (must be 0)."""
    import aiohttp

    keys = Keys(prefix=prefix)
    r = aioredis.Redis.from_url(redis_url, protocol=2, socket_timeout=30)
    tail = WorkerLogs(worker_logs)
    body = json.dumps(LONG_SPEC_FIELDS).encode()
    rows: list[dict[str, float]] = []
    problems: list[str] = []
    left = iter(range(n))
    rng = random.Random(1)

    async with aiohttp.ClientSession(api_url) as http:

        async def one() -> None:
            async with http.post("/api/backtests", data=body, headers={"content-type": "application/json"}) as resp:
                task_id = (await resp.json())["task_id"]
            deadline = time.monotonic() + 30
            while await r.hget(keys.control(task_id), "status") != b"running":
                if time.monotonic() > deadline:
                    problems.append(f"{task_id} never started")
                    return
                await asyncio.sleep(0.002)
            await asyncio.sleep(rng.uniform(0.02, 0.06))
            t0 = time.time()
            async with http.delete(f"/api/backtests/tasks/{task_id}") as resp:
                await resp.read()
                ok = resp.status == 200
            t_http = time.time()
            if not ok:
                problems.append(f"{task_id}: DELETE answered {resp.status}")
                return
            deadline = time.monotonic() + 10
            while not (stopped := [t for t, event in tail.lines.get(task_id, []) if event == "task.stopped"]):
                tail.poll()
                if time.monotonic() > deadline:
                    problems.append(f"{task_id}: no task.stopped logged")
                    return
                await asyncio.sleep(0.002)
            events = await task_events(r, keys, task_id)
            types = [(e.id, type(e.event)) for e in events]
            cancelled_at = next(i for i, (_, t) in enumerate(types) if t is Cancelled)
            rows.append(
                {
                    "http_ms": 1000 * (t_http - t0),
                    "cancelled_event_ms": entry_ms(types[cancelled_at][0].encode()) - 1000 * t0,
                    "worker_stopped_ms": 1000 * (stopped[0] - t0),
                    "events_after_cancel": len(types) - cancelled_at - 1,
                }
            )

        async def loop() -> None:
            for _ in left:
                await one()

        await asyncio.gather(*(loop() for _ in range(parallel)))
    await r.aclose()
    out: dict[str, Any] = {
        "cancels": len(rows),
        "problems": problems[:5],
        "problem_count": len(problems),
        "events_after_cancel": sum(int(x["events_after_cancel"]) for x in rows),
    }
    for name in ("http_ms", "cancelled_event_ms", "worker_stopped_ms"):
        values = [x[name] for x in rows]
        out[name] = {
            "p50": percentile(values, 0.5),
            "p99": percentile(values, 0.99),
            "max": max(values) if values else None,
        }
    return out


def memory_census(redis_url: str) -> dict[str, Any]:
    import redis

    from bench.keymem import census

    return census(redis.Redis.from_url(redis_url))


SCENARIOS = {
    "throughput": throughput,
    "http_latency": http_latency,
    "cancel_latency": cancel_latency,
    "memory_census": memory_census,
}

if __name__ == "__main__":
    fn = SCENARIOS[sys.argv[1]]
    kwargs = json.loads(sys.argv[2])
    result = asyncio.run(fn(**kwargs)) if asyncio.iscoroutinefunction(fn) else fn(**kwargs)
    print(json.dumps(result))
