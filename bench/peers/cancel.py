"""A peer's side of the cancel scenario, run in the peers' environment: cancel `n` running long
jobs, `parallel` at a time (one per worker process), through the system's own API.

    python -m bench.peers.cancel '<json args>'   prints one JSON object

Only RQ (its forking worker: `send_stop_job_command` kills the work horse) and Celery (prefork
pool: `revoke(terminate=True)` signals the pool process) can stop a job that is computing. arq
and SAQ abort by cancelling the job's asyncio task, which cannot interrupt a synchronous job
that holds the event loop; Dramatiq needs the separate dramatiq-abort package; taskiq has no
cancel.

For each job, as for Backstream: submit, wait until the job stamps its start, let it compute
20-60 ms, then t0 = just before the cancel call. Measured from t0: the cancel call's return, and
the system recording the job as stopped (RQ status `stopped`, Celery state `REVOKED`; its last
write for the job). At the end, a wait of one long job's length shows whether any cancelled job
ran to completion anyway (its completion stamp)."""

from __future__ import annotations

import importlib
import json
import random
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from bench.peers.common import read_stamps
from bench.peers.driver import _pct

LONG_JOB_SECONDS = 8.0  # comfortably longer than one uncancelled long job


def cancel_latency(system: str, n: int, stamp_dir: str, parallel: int = 2) -> dict[str, Any]:
    module = importlib.import_module(f"bench.peers.{system}_bench")
    stamps = Path(stamp_dir)
    start_offsets = {p: p.stat().st_size for p in stamps.glob("*.stamps")}
    run = uuid.uuid4().hex[:12]
    rows: list[dict[str, float]] = []
    problems: list[str] = []
    indices = iter(range(n))
    lock = threading.Lock()

    def loop(seed: int) -> None:
        client = module.CancelClient()
        rng = random.Random(seed)
        offsets = dict(start_offsets)
        started: dict[int, float] = {}
        while True:
            with lock:
                i = next(indices, None)
            if i is None:
                return
            handle = client.submit_long(run, i)
            deadline = time.monotonic() + 30
            while i not in started:
                read_stamps(stamps, offsets, f"{run}.start", started)
                if time.monotonic() > deadline:
                    problems.append(f"job {i} never started")
                    return
                time.sleep(0.002)
            time.sleep(rng.uniform(0.02, 0.06))
            t0 = time.time()
            client.cancel(handle)
            t_call = time.time()
            deadline = time.monotonic() + 10
            while not client.stopped(handle):
                if time.monotonic() > deadline:
                    problems.append(f"job {i} not recorded as stopped within 10 s")
                    break
                time.sleep(0.002)
            else:
                with lock:
                    rows.append({"call_ms": 1000 * (t_call - t0), "stopped_ms": 1000 * (time.time() - t0)})

    threads = [threading.Thread(target=loop, args=(seed,)) for seed in range(parallel)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    time.sleep(LONG_JOB_SECONDS)
    completed: dict[int, float] = {}
    read_stamps(stamps, dict(start_offsets), run, completed)
    out: dict[str, Any] = {
        "cancels": len(rows),
        "problems": problems[:5],
        "problem_count": len(problems),
        "completed_anyway": len(completed),
    }
    for name in ("call_ms", "stopped_ms"):
        values = [row[name] for row in rows]
        out[name] = {"p50": _pct(values, 0.5), "p99": _pct(values, 0.99), "max": max(values) if values else None}
    return out


if __name__ == "__main__":
    print(json.dumps(cancel_latency(**json.loads(sys.argv[1]))))
