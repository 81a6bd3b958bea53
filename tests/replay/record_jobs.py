"""Record a golden log of jobs from the real system: python -m tests.replay.record_jobs

Runs real `backstream` processes on a private redis-server through jobs (streams.md, "Jobs"): a
universe x grid job fanned out over two workers; a job whose planning fails for good (its
data moved away), retried by a user, then fanned out and completed; a job some of whose
chunks fail for good (past its time limit), within its tolerance or not; and a job
cancelled while its chunks run. Then writes the log to
tests/replay/logs/jobs.jsonl and the live projection (once the projector caught up) to
jobs.expected.json. The replay tests fold the log and must get exactly that projection.
"""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path

import httpx

from tests.processes import Cluster, RedisServer, wait_until
from tests.replay.record_golden import write_golden
from tests.test_faults import Log, projector_caught_up, submit

LOGS = Path(__file__).parent / "logs"
GRID = {"strategy": "sma_cross", "params": {"fast": list(range(2, 22)), "slow": list(range(60, 100))}}


def _bars(first: float) -> str:
    return "Date,Open,High,Low,Close,Volume\n" + "".join(
        f"2020-01-{d:02d},{first + d},{first + 1 + d},{first - 1 + d},{first + 0.5 + d},1000\n" for d in range(1, 31)
    )


def record() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        server = RedisServer(workdir)
        prefix = "{golden-jobs}"
        data = workdir / "data"
        data.mkdir()
        (data / "FLAKY.csv").write_text(_bars(10))
        (data / "STEADY.csv").write_text(_bars(20))
        cluster = Cluster(
            server.url,
            prefix,
            workdir,
            chunk_seconds="0.02",
            lease_ms="1500",
            heartbeat_ms="200",
            progress_interval_ms="100",
            retry_base_ms="100",
            retry_cap_ms="200",
            data_dir=str(data),
        )
        log = Log(server.url, prefix)
        try:
            _, url = cluster.api()
            cluster.start("projector")
            workers = [cluster.start("worker", "--name", f"w{i}", "--concurrency", "2") for i in range(2)]
            universe = submit(url, {**GRID, "symbols": ["GOOG", "IBM"], "objective": "-max_drawdown_pct"})
            wait_until(lambda: log.has(universe, "completed"), timeout=120, what="the universe job")

            for worker in workers:
                worker.stop()
            flaky = submit(url, {"strategy": "buy_and_hold", "symbols": ["FLAKY", "STEADY"]})
            data.rename(workdir / "away")
            cluster.start("worker", "--name", "w-flaky", "--concurrency", "1")
            wait_until(lambda: log.has(flaky, "failed"), timeout=60, what="a chunk to fail the job")
            (workdir / "away").rename(data)
            reply = httpx.post(f"{url}/api/backtests/tasks/{flaky}/retry", timeout=5)
            assert reply.status_code == 202, reply.text
            wait_until(lambda: log.has(flaky, "completed"), timeout=60, what="the retried job")

            # Chunks that compute past the time limit fail for good (TaskTimeout); most of
            # GOOG's do, FLAKY's 30 bars may be done within the first slice. Nine in ten chunks
            # may fail: the job completes with the failed ranges listed as missing, or fails.
            tolerated = submit(
                url,
                {
                    "strategy": "sma_cross",
                    "symbols": ["FLAKY", "GOOG"],
                    "params": {"fast": list(range(2, 8)), "slow": list(range(10, 20))},
                    "stop_loss_pct": 5,
                    "timeout_s": 0.005,
                    "failure_tolerance": 0.9,
                },
            )
            wait_until(
                lambda: log.has(tolerated, "completed") or log.has(tolerated, "failed"), timeout=60, what="the job"
            )

            cancelled = submit(url, {**GRID, "symbol": "AAPL"})
            wait_until(lambda: log.has(cancelled, "job_progress"), timeout=60, what="a job to cancel")
            httpx.delete(f"{url}/api/backtests/tasks/{cancelled}", timeout=5)
            wait_until(lambda: log.has(cancelled, "cancelled"), timeout=30, what="the cancel")
            wait_until(lambda: projector_caught_up(log), timeout=30, what="the projector")
            asyncio.run(write_golden(server.url, prefix, "jobs"))
            print(f"recorded {len(log.events())} events of 4 jobs ({universe}, {flaky}, {tolerated}, {cancelled})")
        finally:
            cluster.close()
            log.redis.close()
            server.stop()


if __name__ == "__main__":
    record()
