"""A small end-to-end version of the throughput scenario, for a test: Backstream only, real processes.

    from bench.smoke import run_smoke
    numbers = run_smoke("redis://127.0.0.1:6379/0", "{smoke-1}", tasks=300)

Starts a projector and one worker (`python -m orchestrator.cli ...` with the caller's interpreter)
on the given Redis and prefix, submits `tasks` SMA backtests through Commands.submit, follows the
event log until each has its `completed` event and the projection has caught up, stops the
processes and returns the numbers (it asserts nothing about speed).
"""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.bs_driver import throughput
from bench.procs import REPO, Proc


def run_smoke(redis_url: str, prefix: str, tasks: int = 300, *, timeout: float = 120.0) -> dict[str, Any]:
    logdir = Path(tempfile.mkdtemp(prefix="backstream-smoke-"))
    env = dict(
        os.environ,
        REDIS_URL=redis_url,
        BACKSTREAM_PREFIX=prefix,
        # The run's own home: results land in its `results/`, never in the user's data directory.
        BACKSTREAM_HOME=str(logdir / "home"),
        PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    )
    cli = [sys.executable, "-m", "orchestrator.cli", "--log-json"]
    procs = [
        Proc([*cli, "projector"], env=env, log=logdir / "projector.log"),
        Proc([*cli, "worker", "--concurrency", "1", "--name", "smoke-w0"], env=env, log=logdir / "worker.log"),
    ]
    try:
        # Generous: a first start on a fresh, loaded machine imports and compiles everything.
        deadline = time.monotonic() + 90
        while b"worker.started" not in (log := (logdir / "worker.log").read_bytes()):
            if time.monotonic() > deadline or not procs[1].alive():
                why = "exited" if not procs[1].alive() else "did not start in 90 s"
                tail = log.decode(errors="replace")[-2000:]
                raise RuntimeError(f"the worker {why}; {logdir / 'worker.log'} ends:\n{tail}")
            time.sleep(0.05)
        result = asyncio.run(throughput(redis_url, prefix, tasks, timeout=timeout))
    finally:
        for p in reversed(procs):
            p.stop()
    result["logs"] = str(logdir)
    return result


if __name__ == "__main__":
    print(run_smoke(sys.argv[1], sys.argv[2], int(sys.argv[3]) if len(sys.argv) > 3 else 300))
