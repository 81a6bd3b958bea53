"""A Backstream worker for the no-op scenario: the real Worker, store, scripts and events, with a
run factory whose run is already done (so only the job system is measured).

    python -m bench.bs_noop_worker --name w1 [--concurrency 1]   (env REDIS_URL, BACKSTREAM_PREFIX)
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from typing import Any

from bench.work import noop
from consumers.worker.loop import Worker
from orchestrator.cli import logs
from orchestrator.domain.spec import BacktestSpec
from orchestrator.settings import Settings
from orchestrator.storage.connections import Connections
from orchestrator.storage.partitions import deployment_layout
from orchestrator.storage.workqueue import WorkQueue


class _NoopOutcome:
    summary: dict[str, Any] = {}
    detail: dict[str, Any] = {}


class NoopRun:
    """Satisfies consumers.worker.attempt.Run: done at once, empty outcome."""

    done = True
    progress = 1.0

    def advance(self, max_seconds: float) -> None:  # never called: the run is done
        noop()

    def outcome(self) -> _NoopOutcome:
        return _NoopOutcome()


def start_noop(spec: BacktestSpec) -> NoopRun:
    noop()
    return NoopRun()


async def main(name: str, concurrency: int) -> None:
    settings = Settings.from_env()
    conns = Connections(settings)
    worker = Worker(
        WorkQueue(conns.commands, await deployment_layout(conns), reader=conns.blocking),
        start_noop,
        settings,
        name=name,
        concurrency=concurrency,
    )
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, worker.stop)
    try:
        await worker.run()
    finally:
        await conns.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--name", required=True)
    parser.add_argument("--concurrency", type=int, default=1)
    args = parser.parse_args()
    logs.configure(json=True)
    asyncio.run(main(args.name, args.concurrency))
