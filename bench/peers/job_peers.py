"""A job's chunks the way users of the peers would send them: a Celery `group` of chunk tasks with
a `chord` callback that picks the best, and Dask `distributed` mapping the same chunk function
(job_bench.py, part 2). Runs in the peers' environment (bench/.venv/peers).

    python -m bench.peers.job_peers celery|dask '<json args>'   prints one JSON object

Args: `specs` (a file of chunk requests, one JSON `BacktestSpec` a line, as `jobs.chunk_spec`
makes them), `reps` (timed runs after one untimed warm-up run), `processes` (worker processes),
and for Celery `broker` (its Redis URL, broker and result backend alike) and `logdir`.
Each chunk is computed by the engine exactly as a Backstream worker computes a chunk task
(`start_run`, `advance` until done, the outcome built); its best row goes back, and the callback
ranks the rows as Backstream's job does (`rank_key`, a tie to the earlier chunk).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import msgspec
from celery import Celery, chord, group, signals

from consumers.engine.datasets import Catalog
from consumers.engine.runner import start_run
from orchestrator.domain.ranking import rank_key
from orchestrator.domain.spec import BacktestSpec

QUEUE = "jobbench"
BROKER = os.environ.get("JOB_BENCH_BROKER", "redis://127.0.0.1:6379/13")
_catalog: list[Catalog] = []

app = Celery("jobbench", broker=BROKER, backend=BROKER)
app.conf.task_default_queue = QUEUE
app.conf.worker_hijack_root_logger = False


def compute_chunk(line: str) -> dict[str, Any]:
    """One chunk request (a JSON `BacktestSpec` with `chunk` set) run to its outcome; its best
    row: `index` (the chunk's), `symbol`, `params`, `key` (the rank key, smallest best)."""
    if not _catalog:
        _catalog.append(Catalog.from_env_dir(None))
    spec = msgspec.json.decode(line, type=BacktestSpec)
    run = start_run(spec, _catalog[0])
    while not run.done:
        run.advance(1.0)
    row = run.outcome().detail["table"][0]
    assert spec.chunk is not None
    return {
        "index": spec.chunk.index,
        "symbol": spec.symbol,
        "params": row["params"],
        "key": list(rank_key(row["objective"], row["equity_final"], spec.minimise)),
    }


def pick_best(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The best of the chunks' best rows: the smallest rank key, a tie to the earlier chunk."""
    return min(rows, key=lambda r: (tuple(r["key"]), r["index"]))


@app.task(name="jobbench.chunk")
def chunk_task(line: str) -> dict[str, Any]:
    return compute_chunk(line)


@app.task(name="jobbench.best")
def best_task(rows: list[dict[str, Any]]) -> dict[str, Any]:
    return pick_best(rows)


@signals.worker_init.connect
def _preload(**_: Any) -> None:
    # The engine and its data imported before the prefork pool forks (the pool processes share them).
    _catalog.append(Catalog.from_env_dir(None))


def _celery(specs: list[str], reps: int, processes: int, logdir: Path) -> dict[str, Any]:
    env = dict(os.environ, JOB_BENCH_BROKER=BROKER)
    argv = [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "bench.peers.job_peers",
        "worker",
        "--pool",
        "prefork",
        "--concurrency",
        str(processes),
        "-Q",
        QUEUE,
        "-n",
        "jobbench@%h",
        "--without-gossip",
        "--without-mingle",
        "-l",
        "WARNING",
    ]
    log = open(logdir / "celery-worker.log", "ab")  # noqa: SIM115  # closed below
    worker = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while not app.control.ping(timeout=0.5):
            if time.monotonic() > deadline or worker.poll() is not None:
                raise RuntimeError(f"the Celery worker did not answer; see {logdir / 'celery-worker.log'}")
        walls, best = [], None
        for rep in range(reps + 1):
            t0 = time.perf_counter()
            best = chord(group(chunk_task.s(line) for line in specs))(best_task.s()).get(timeout=600)
            if rep:  # the first run warms the pool processes up
                walls.append(time.perf_counter() - t0)
        return {"walls": walls, "best": best}
    finally:
        os.killpg(worker.pid, 15)
        try:
            worker.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(worker.pid, 9)
            worker.wait(5)
        log.close()


def _dask(specs: list[str], reps: int, processes: int) -> dict[str, Any]:
    from distributed import Client, LocalCluster

    with (
        LocalCluster(n_workers=processes, threads_per_worker=1, processes=True, dashboard_address=None) as cluster,
        Client(cluster) as client,
    ):
        walls, best = [], None
        for rep in range(reps + 1):
            t0 = time.perf_counter()
            rows = client.map(compute_chunk, specs, pure=False)
            best = client.submit(pick_best, rows).result(timeout=600)
            if rep:  # the first run warms the worker processes up
                walls.append(time.perf_counter() - t0)
        return {"walls": walls, "best": best}


def main() -> int:
    system, raw = sys.argv[1], json.loads(sys.argv[2])
    specs = Path(raw["specs"]).read_text().splitlines()
    if system == "celery":
        out = _celery(specs, raw["reps"], raw["processes"], Path(raw["logdir"]))
    else:
        out = _dask(specs, raw["reps"], raw["processes"])
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    # Run as the module's own name, so that Celery's tasks and the function Dask ships are the
    # ones the workers import (not copies defined in __main__).
    from bench.peers import job_peers

    sys.exit(job_peers.main())
