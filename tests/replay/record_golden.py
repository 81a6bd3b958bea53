"""Record a golden log from the real system: python -m tests.replay.record_golden

Runs real `backstream` processes on a private redis-server through a scenario with a reclaim
(a worker SIGKILLed mid-run), retries ending in a dead letter and a user's requeue, a release
on SIGTERM, cancels of a running and a queued task, and plain completions. Then writes the log
to tests/replay/logs/real.jsonl and the live projection (once the projector caught up) to
real.expected.json. The replay tests fold the log and must get exactly that projection.
"""

from __future__ import annotations

import asyncio
import json
import signal
import tempfile
from pathlib import Path

import httpx
import redis.asyncio as aioredis

from consumers.maintenance.archive import export
from consumers.maintenance.replay import snapshot
from orchestrator.storage.keys import Keys
from orchestrator.storage.readmodel import live_keys
from tests.processes import Cluster, RedisServer, wait_until
from tests.test_faults import LONG, SHORT, Log, projector_caught_up, submit
from tests.test_replay import decoded

LOGS = Path(__file__).parent / "logs"
MEDIUM = {**LONG, "params": {"fast": list(range(2, 32)), "slow": list(range(70, 120))}}


def record() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        server = RedisServer(workdir)
        prefix = "{golden}"
        data = workdir / "data"
        data.mkdir()
        (data / "FLAKY.csv").write_text(
            "Date,Open,High,Low,Close,Volume\n"
            + "".join(f"2020-01-{d:02d},{10 + d},{11 + d},{9 + d},{10.5 + d},1000\n" for d in range(1, 31))
        )
        cluster = Cluster(
            server.url,
            prefix,
            workdir,
            lease_ms="1500",
            heartbeat_ms="200",
            progress_interval_ms="300",
            retry_base_ms="100",
            retry_cap_ms="200",
            shutdown_grace_s="0.2",
            data_dir=str(data),
        )
        log = Log(server.url, prefix)
        try:
            _, url = cluster.api()
            cluster.start("projector")
            plain = submit(url, SHORT)
            doomed = cluster.start("worker", "--name", "doomed", "--concurrency", "1")
            wait_until(lambda: log.has(plain, "completed"), timeout=30, what="a plain completion")
            reclaimed = submit(url, MEDIUM)
            wait_until(lambda: log.has(reclaimed, "progress"), timeout=30, what="the doomed worker to compute")
            doomed.kill()
            survivor = cluster.start("worker", "--name", "survivor", "--concurrency", "2")
            wait_until(lambda: log.has(reclaimed, "completed"), timeout=60, what="the reclaim")

            flaky = submit(url, {"strategy": "buy_and_hold", "symbol": "FLAKY"})
            data.rename(workdir / "away")
            wait_until(lambda: log.has(flaky, "failed"), timeout=60, what="retries to run out")
            (workdir / "away").rename(data)
            httpx.post(f"{url}/api/backtests/tasks/{flaky}/retry", timeout=5)
            wait_until(lambda: log.has(flaky, "completed"), timeout=60, what="the requeued task to complete")

            running = submit(url, MEDIUM)
            wait_until(lambda: log.has(running, "progress"), timeout=30, what="a task to cancel while running")
            httpx.delete(f"{url}/api/backtests/tasks/{running}", timeout=5)
            survivor.signal(signal.SIGSTOP)  # hold the queue so one task is cancelled while queued
            queued = submit(url, SHORT)
            httpx.delete(f"{url}/api/backtests/tasks/{queued}", timeout=5)
            survivor.signal(signal.SIGCONT)

            released = submit(url, LONG)
            wait_until(lambda: log.has(released, "progress"), timeout=30, what="a task to release")
            survivor.stop()
            cluster.start("worker", "--name", "heir")
            wait_until(lambda: log.has(released, "completed"), timeout=60, what="the released task")
            wait_until(lambda: projector_caught_up(log), timeout=30, what="the projector")
            asyncio.run(write_golden(server.url, prefix, "real"))
            print(
                f"recorded {len(log.events())} events of 6 tasks "
                f"({plain}, {reclaimed}, {flaky}, {running}, {queued}, {released})"
            )
        finally:
            cluster.close()
            log.redis.close()
            server.stop()


async def write_golden(url: str, prefix: str, name: str) -> None:
    """The log under `prefix` to logs/<name>.jsonl and its live projection to
    logs/<name>.expected.json."""
    client = aioredis.Redis.from_url(url, protocol=2)
    keys = Keys(prefix=prefix)
    await export(client, keys, LOGS / f"{name}.jsonl")
    live = await snapshot(client, await live_keys(client, keys))
    (LOGS / f"{name}.expected.json").write_text(json.dumps(decoded(live), indent=1, sort_keys=True) + "\n")
    await client.aclose()


if __name__ == "__main__":
    record()
