"""A peer's side of the throughput scenario, run in the peers' environment:
submit `n` jobs through the system's own client, then wait for every job's completion stamp.

    python -m bench.peers.driver '<json args>'   prints one JSON object

Times: a job's submit time is the client's clock just before its enqueue call (for RQ's
enqueue_many, before its batch); its completion time is the stamp the job appends right after
the work returns, before the system's own acknowledgement and result write (which favours the
peers slightly: Backstream's completion is its `completed` event, durably in the log)."""

from __future__ import annotations

import importlib
import json
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from bench.peers.common import read_stamps


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def throughput(system: str, n: int, kind: str, stamp_dir: str, timeout: float = 300.0) -> dict[str, Any]:
    module = importlib.import_module(f"bench.peers.{system}_bench")
    stamps = Path(stamp_dir)
    offsets = {p: p.stat().st_size for p in stamps.glob("*.stamps")}
    run = uuid.uuid4().hex[:12]
    submitted: dict[int, float] = {}
    done: dict[int, float] = {}
    t0 = time.time()
    module.submit(kind, run, range(n), submitted)
    t_submitted = time.time()
    deadline = time.monotonic() + timeout
    while len(done) < n:
        read_stamps(stamps, offsets, run, done)
        if time.monotonic() > deadline:
            return {"error": f"{len(done)} of {n} jobs done within {timeout}s"}
        time.sleep(0.01)
    first = min(submitted.values())
    span = max(done.values()) - first
    lat = [done[i] - submitted[i] for i in range(n)]
    return {
        "tasks": n,
        "errors": 0,
        "seconds": span,
        "tasks_per_s": n / span,
        "submit_per_s": n / (t_submitted - t0),
        "p50_ms": 1000 * _pct(lat, 0.5),
        "p99_ms": 1000 * _pct(lat, 0.99),
    }


if __name__ == "__main__":
    print(json.dumps(throughput(**json.loads(sys.argv[1]))))
