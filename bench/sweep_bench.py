"""Sweep tasks through one real worker process at several concurrencies: combinations/s and the
worker's CPU per task (issue 21: compute threads fighting over the GIL).

    python bench/sweep_bench.py [--tasks 20] [--concurrency 1,4,8] [--reps 3] [--roots NEW,OLD] [--smoke]

For each source tree in `--roots` (default this checkout; give an old checkout made with
`git worktree add` to compare) and each concurrency: a private redis-server, one
`orchestrator.cli worker --concurrency C` from that tree, `--tasks` sweep tasks submitted at
once, timed from the first submit to the last `completed` event. CPU is the worker's user+system
time (/proc/<pid>/stat) over the run. Prints a Markdown table and one JSON line per run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import msgspec  # noqa: E402
import redis.asyncio as aioredis  # noqa: E402

from bench.procs import REPO, Proc, RedisServer  # noqa: E402
from orchestrator.domain.spec import BacktestSpec  # noqa: E402
from orchestrator.storage.commands import Commands  # noqa: E402
from orchestrator.storage.keys import Keys  # noqa: E402
from orchestrator.storage.partitions import Layout  # noqa: E402

PREFIX = "{sweep}"
# 100 SMA crossovers over the 2,148 bundled GOOG bars (a corner of the 10,000-combination
# grid): ~50 ms of work per task.
SWEEP: dict[str, Any] = {
    "strategy": "sma_cross",
    "symbol": "GOOG",
    "params": {"fast": list(range(2, 12)), "slow": list(range(102, 112))},
}
SMOKE_SWEEP: dict[str, Any] = {"strategy": "sma_cross", "symbol": "GOOG", "params": {"fast": [5, 10], "slow": [20, 30]}}


def _combinations(fields: dict[str, Any]) -> int:
    n = 1
    for value in fields["params"].values():
        n *= len(value) if isinstance(value, list) else 1
    return n


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _drive(url: str, n: int, spec: BacktestSpec, pid: int, timeout: float) -> dict[str, float]:
    keys = Keys(prefix=PREFIX)
    r = aioredis.Redis.from_url(url, protocol=2)
    store = Commands(r, Layout(prefix=PREFIX))
    cpu0 = _cpu_s(pid)
    t0 = time.time()
    ids = [str(uuid.uuid4()) for _ in range(n)]
    await asyncio.gather(*(store.submit(t, spec) for t in ids))
    last: bytes | str = "0-0"
    done, finish_ms = 0, 0
    deadline = time.monotonic() + timeout
    while done < n:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{done} of {n} sweep tasks completed within {timeout} s")
        reply: Any = await r.xread({keys.events: last}, count=1000, block=200)
        for _, entries in reply or []:
            for entry_id, fields in entries:
                last = entry_id
                if fields[b"type"] == b"completed":
                    done += 1
                    finish_ms = int(entry_id.split(b"-")[0])
                elif fields[b"type"] == b"failed":
                    raise RuntimeError(f"a sweep task failed: {fields}")
    cpu = _cpu_s(pid) - cpu0
    await r.aclose()
    return {"seconds": finish_ms / 1000 - t0, "worker_cpu_s": cpu}


def run_one(root: Path, concurrency: int, n: int, fields: dict[str, Any], workdir: Path) -> dict[str, Any]:
    """One timed run: a fresh private Redis and worker from `root`."""
    redis = RedisServer(workdir)
    # The run's own home: results land in its `results/`, never in the user's data directory.
    home = str(workdir / "home")
    # The sweep runs as one task on one worker (BACKSTREAM_CHUNK_SECONDS: never fanned out): what
    # is measured is a worker's own sweep rate at each concurrency.
    env = dict(
        os.environ,
        REDIS_URL=redis.url,
        BACKSTREAM_PREFIX=PREFIX,
        BACKSTREAM_HOME=home,
        BACKSTREAM_CHUNK_SECONDS="1e9",
        PYTHONPATH=str(root),
    )
    log = workdir / f"worker-c{concurrency}.log"
    worker = Proc(
        [sys.executable, "-m", "orchestrator.cli", "--log-json", "worker", "--concurrency", str(concurrency)],
        env=env,
        log=log,
        cwd=root,
    )
    try:
        deadline = time.monotonic() + 60
        while b"worker.started" not in (log.read_bytes() if log.exists() else b""):
            if time.monotonic() > deadline or not worker.alive():
                raise RuntimeError(f"the worker did not start; see {log}")
            time.sleep(0.05)
        # Warm up: data loaded and code paths taken before the timed run.
        spec = msgspec.convert(fields, BacktestSpec)
        asyncio.run(_drive(redis.url, 1, spec, worker.pid, 120))
        out = asyncio.run(_drive(redis.url, n, spec, worker.pid, 600))
    finally:
        worker.stop()
        redis.stop()
    combos = _combinations(fields) * n
    return {
        "root": str(root),
        "concurrency": concurrency,
        "tasks": n,
        "combinations_per_s": combos / out["seconds"],
        "worker_cpu_ms_per_task": 1000 * out["worker_cpu_s"] / n,
        "seconds": out["seconds"],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=20)
    parser.add_argument("--concurrency", default="1,4,8")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--roots", default=str(REPO), help="comma-separated source trees to compare")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: check the script runs")
    args = parser.parse_args()
    fields = SMOKE_SWEEP if args.smoke else SWEEP
    n, reps = (2, 1) if args.smoke else (args.tasks, args.reps)
    levels = [int(c) for c in args.concurrency.split(",")] if not args.smoke else [1, 2]
    roots = [Path(p).resolve() for p in args.roots.split(",")]
    rows: dict[tuple[str, int], list[dict[str, Any]]] = {}
    with tempfile.TemporaryDirectory(prefix="sweep-bench-") as tmp:
        # Repetitions interleave the trees and levels, so a load change on the machine hits all alike.
        for _ in range(reps):
            for c in levels:
                for root in roots:
                    result = run_one(root, c, n, fields, Path(tmp))
                    print(json.dumps(result), flush=True)
                    rows.setdefault((str(root), c), []).append(result)
    print(f"\n{n} sweep tasks of {_combinations(fields)} combinations, one worker, median of {reps}\n")
    print("| tree | concurrency | combinations/s | worker CPU ms/task |")
    print("| --- | ---: | ---: | ---: |")
    for (tree, c), results in rows.items():
        rate = statistics.median(r["combinations_per_s"] for r in results)
        cpu = statistics.median(r["worker_cpu_ms_per_task"] for r in results)
        print(f"| {tree} | {c} | {rate:,.0f} | {cpu:,.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
