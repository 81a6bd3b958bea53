"""One research job over the fleet (issue 17, "Measure"): a universe x grid job on 1 and 2 worker
processes against the engine's own single-process rate, the same chunks through Celery and Dask,
and the cost of a worker lost at 90% of a long job, with and without resume.

    python bench/job_bench.py [--reps 3] [--redis-url URL] [--celery-db 13] [--no-peers] [--smoke]

1. Universe x grid: 4 bundled symbols x 9,600 sma_cross combinations (fast 2..97 x slow 100..199,
   all admissible). First the engine alone, in this process: each symbol's sweep as one task
   (`start_run`, `advance` until done), combinations/s. Then the same request as one job
   (`"symbols": [...]`) submitted through `Commands.submit` on Redis under a prefix of its own, on
   1 and then 2 `orchestrator.cli worker --concurrency 1` processes; wall time = the job's
   `completed` event (its stream id time) - the client's clock before the submit; one untimed
   run first, then `--reps` timed ones. Speedup = wall(1) / wall(2); efficiency = the job's
   combinations/s on 1 worker / the engine's alone. The job's best must be the engine's.
2. The same chunks (`jobs.plan_job` + `chunk_spec`, the ones Backstream's planner makes) as a
   Celery `chord(group(chunk tasks), best)` on one prefork worker of 2 processes, Redis broker
   and backend on DB `--celery-db` of the same server, and as Dask `client.map` + a `submit` of
   the best on a LocalCluster of 2 worker processes of 1 thread each: wall time to the best
   (bench/peers/job_peers.py, in the peers' environment bench/.venv/peers).
3. Worker loss at 90%: a one-symbol grid of 10,000 combinations (the most one task's sweep may
   have) on the interpreted path (`stop_loss_pct` 5: ~1 ms each, 10-15 s on 1 worker) with
   BACKSTREAM_LEASE_MS=2000 and BACKSTREAM_HEARTBEAT_MS=500, so that a dead worker's work is taken
   over within about 2 s, and BACKSTREAM_PROGRESS_INTERVAL_MS=100, so the kill lands near 90%.
   Uninterrupted, then once more with the worker SIGKILLed (its process group) when the task's
   progress passes 90% and a new worker started at once; time lost = wall - uninterrupted wall.
   As a job (chunks of ~0.3 s, the completed ones kept), as one task
   that restarts from zero (BACKSTREAM_CHUNK_SECONDS=1e9: no fan-out; BACKSTREAM_CHECKPOINT_S=1e9:
   no checkpoint), and as one task checkpointed every second (BACKSTREAM_CHECKPOINT_S=1).

Prints a table with the date, the machine and the command; `--json FILE` writes every number.
`--smoke`: tiny grids, a few seconds each, and no peers (their environment pins redis-py 5.3 and
is built on first use; `--peers` runs them anyway). Numbers, never assertions on speed.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import platform
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import msgspec  # noqa: E402
import redis  # noqa: E402
import redis.asyncio as aioredis  # noqa: E402

from bench.procs import BENCH, REPO, Proc  # noqa: E402
from consumers.engine.datasets import Catalog  # noqa: E402
from consumers.engine.jobs import CHUNK_TARGET_SECONDS, chunk_spec, plan_job  # noqa: E402
from consumers.engine.runner import start_run  # noqa: E402
from orchestrator.domain.ranking import rank_key  # noqa: E402
from orchestrator.domain.spec import BacktestSpec  # noqa: E402
from orchestrator.storage.commands import Commands  # noqa: E402
from orchestrator.storage.keys import Keys  # noqa: E402
from orchestrator.storage.partitions import Layout  # noqa: E402
from orchestrator.storage.workqueue import WorkQueue  # noqa: E402

SYMBOLS = ["AAPL", "GOOG", "IBM", "MSFT"]
# 96 x 100 = 9,600 combinations, every one admissible (fast < slow always).
GRID: dict[str, Any] = {"strategy": "sma_cross", "params": {"fast": list(range(2, 98)), "slow": list(range(100, 200))}}
SMOKE_SYMBOLS = ["GOOG", "IBM"]
SMOKE_GRID: dict[str, Any] = {
    "strategy": "sma_cross",
    "params": {"fast": list(range(2, 12)), "slow": list(range(100, 110))},
}
# One task's sweep is capped at 10,000 combinations (validation): 100 x 100 on AAPL's 3,270 bars,
# on the interpreted path (position management), 1-2 ms a combination here: ~15 s.
LONG: dict[str, Any] = {
    "strategy": "sma_cross",
    "symbol": "AAPL",
    "params": {"fast": list(range(2, 102)), "slow": list(range(102, 202))},
    "stop_loss_pct": 5,
}
SMOKE_LONG: dict[str, Any] = {**LONG, "params": {"fast": list(range(2, 22)), "slow": list(range(102, 202))}}
# Smoke grids are too small for 0.3 s chunks: smaller ones, so that they still fan out.
SMOKE_CHUNK_SECONDS = 0.02
NEVER = "1000000000"  # seconds: BACKSTREAM_CHUNK_SECONDS / BACKSTREAM_CHECKPOINT_S that never apply
# Progress every 100 ms (default 250), so that the kill lands close to 90% on a short smoke run too.
LOSS_ENV = {"BACKSTREAM_LEASE_MS": "2000", "BACKSTREAM_HEARTBEAT_MS": "500", "BACKSTREAM_PROGRESS_INTERVAL_MS": "100"}
KILL_AT = 0.9


# --- the machine -------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    """Date (UTC), nproc, CPU model, load averages (`uptime`), Python and the command line."""
    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if "model name" in line
        ),
        platform.processor(),
    )
    return {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "nproc": os.cpu_count(),
        "cpu": model,
        "uptime": subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip(),
        "python": platform.python_version(),
        "command": shlex.join(["python", "bench/job_bench.py", *sys.argv[1:]]),
    }


# --- the engine alone --------------------------------------------------------------------------


def _best_row(spec: BacktestSpec, catalog: Catalog) -> dict[str, Any]:
    run = start_run(spec, catalog)
    while not run.done:
        run.advance(1.0)
    row: dict[str, Any] = run.outcome().detail["table"][0]
    return row


def engine_alone(grid: dict[str, Any], symbols: list[str], reps: int) -> dict[str, Any]:
    """Each symbol's sweep as one task in this process, `reps` times after one untimed pass:
    median seconds for all symbols, combinations/s, and the best over the universe (ranked as a
    job ranks: `rank_key`, a tie to the earlier symbol) as {"symbol", "params"}."""
    catalog = Catalog.from_env_dir(None)
    specs = [msgspec.convert({**grid, "symbol": s}, BacktestSpec) for s in symbols]
    plan = plan_job(msgspec.convert({**grid, "symbols": symbols}, BacktestSpec), catalog)
    assert plan is not None
    walls, best = [], None
    for rep in range(reps + 1):
        t0 = time.perf_counter()
        rows = [_best_row(spec, catalog) for spec in specs]
        if rep:
            walls.append(time.perf_counter() - t0)
        i = min(
            range(len(rows)),
            key=lambda k: (rank_key(rows[k]["objective"], rows[k]["equity_final"], specs[k].minimise), k),
        )
        best = {"symbol": symbols[i], "params": rows[i]["params"]}
    wall = statistics.median(walls)
    return {"combinations": plan.combinations, "seconds": wall, "per_s": plan.combinations / wall, "best": best}


def chunks_alone(lines: list[str], reps: int) -> float:
    """The job's chunk requests (`chunk_lines`) run one after another in this process, each to
    its outcome as a worker runs it: median seconds of `reps` passes after an untimed one."""
    catalog = Catalog.from_env_dir(None)
    specs = [msgspec.json.decode(line, type=BacktestSpec) for line in lines]
    walls = []
    for rep in range(reps + 1):
        t0 = time.perf_counter()
        for spec in specs:
            _best_row(spec, catalog)
        if rep:
            walls.append(time.perf_counter() - t0)
    return statistics.median(walls)


# --- Backstream --------------------------------------------------------------------------------


class Fleet:
    """Backstream workers (`orchestrator.cli worker --concurrency <concurrency>`) on `redis_url`
    under `prefix`, with `extra` environment variables; their logs and results under `workdir`."""

    def __init__(
        self, redis_url: str, prefix: str, workdir: Path, extra: dict[str, str], *, concurrency: int = 1
    ) -> None:
        self.workdir = workdir
        self.concurrency = concurrency
        self.env = dict(
            os.environ,
            REDIS_URL=redis_url,
            BACKSTREAM_PREFIX=prefix,
            BACKSTREAM_HOME=str(workdir / "home"),
            PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
            **extra,
        )
        self.workers: list[Proc] = []

    def start(self, n: int = 1) -> None:
        """Start `n` workers and return once each has logged `worker.started`."""
        new = []
        for _ in range(n):
            name = f"jb-{len(self.workers)}"
            log = self.workdir / f"{name}.log"
            argv = [
                sys.executable,
                "-m",
                "orchestrator.cli",
                "--log-json",
                "worker",
                "--concurrency",
                str(self.concurrency),
                "--name",
                name,
            ]
            proc = Proc(argv, env=self.env, log=log)
            self.workers.append(proc)
            new.append(proc)
        deadline = time.monotonic() + 90
        for proc in new:
            while b"worker.started" not in (proc.log_path.read_bytes() if proc.log_path.exists() else b""):
                if time.monotonic() > deadline or not proc.alive():
                    raise RuntimeError(f"a worker did not start; see {proc.log_path}")
                time.sleep(0.05)

    def kill(self) -> None:
        """SIGKILL every running worker's process group (its isolated attempts too)."""
        for proc in self.workers:
            if proc.alive():
                os.killpg(proc.pid, signal.SIGKILL)
                proc.proc.wait(5)

    def stop(self) -> None:
        for proc in self.workers:
            proc.stop()


async def run_task(
    redis_url: str, prefix: str, fields: dict[str, Any], *, kill_at: float | None = None, fleet: Fleet | None = None
) -> dict[str, Any]:
    """Submit `fields` as one request and follow the log until it has its `completed` event.
    `kill_at`: when its progress (a job's `job_progress`, a task's `progress`) reaches it, SIGKILL
    the fleet's workers and start one new worker. Returns `seconds` (completed event time -
    submit time), `fanned_out_s` (the same for its `fanned_out` event; None: not fanned out),
    `result` (the completed event's summary), `chunks` (0: not fanned out) and `killed_at` (the
    progress seen when the workers were killed). Raises RuntimeError when the task fails,
    TimeoutError when it has not completed within 900 s."""
    keys = Keys(prefix=prefix)
    r = aioredis.Redis.from_url(redis_url, protocol=2, socket_timeout=30)
    try:
        layout = Layout(prefix=prefix)
        await WorkQueue(r, layout).ensure_group()
        newest: Any = await r.xrevrange(keys.events, "+", "-", count=1)
        last: bytes = newest[0][0] if newest else b"0-0"
        spec = msgspec.convert(fields, BacktestSpec)
        task_id = str(uuid.uuid4())
        t0 = time.time()
        await Commands(r, layout).submit(task_id, spec)
        chunks, killed_at, fanned_out = 0, None, None
        deadline = time.monotonic() + 900
        while time.monotonic() < deadline:
            reply: Any = await r.xread({keys.events: last}, count=1000, block=200)
            for _, entries in reply or []:
                for entry_id, f in entries:
                    last = entry_id
                    if f[b"task_id"].decode() != task_id:
                        continue
                    kind = f[b"type"].decode()
                    data = json.loads(f[b"data"]) if f.get(b"data") else {}
                    if kind == "fanned_out":
                        chunks = data["chunks"]
                        fanned_out = int(entry_id.split(b"-")[0]) / 1000 - t0
                    elif kind == "failed":
                        raise RuntimeError(f"the task failed: {data}")
                    elif kind == "completed":
                        seconds = int(entry_id.split(b"-")[0]) / 1000 - t0
                        return {
                            "seconds": seconds,
                            "fanned_out_s": fanned_out,
                            "result": data["result"],
                            "chunks": chunks,
                            "killed_at": killed_at,
                        }
                    elif kind in ("job_progress", "progress") and _due(data["progress"], kill_at, killed_at, fleet):
                        assert fleet is not None
                        killed_at = data["progress"]
                        fleet.kill()
                        fleet.start(1)
        raise TimeoutError(f"task {task_id} did not complete within 900 s")
    finally:
        await r.aclose()


def _due(progress: float, kill_at: float | None, killed_at: float | None, fleet: Fleet | None) -> bool:
    """Whether the workers are to be killed now: a kill asked, not done yet, and `kill_at` reached."""
    return fleet is not None and kill_at is not None and killed_at is None and progress >= kill_at


def _job_best(result: dict[str, Any]) -> dict[str, Any]:
    return {"symbol": result.get("symbol") or result["data"]["symbol"], "params": result["best_params"]}


def universe_job(
    redis_url: str, fields: dict[str, Any], workers: int, reps: int, workdir: Path, extra: dict[str, str]
) -> dict[str, Any]:
    """The universe job on `workers` fresh workers: one untimed run, then `reps` timed ones."""
    prefix = "{jobbench-" + uuid.uuid4().hex[:10] + "}"
    fleet = Fleet(redis_url, prefix, workdir / f"u{workers}", extra)
    try:
        fleet.start(workers)
        runs = [asyncio.run(run_task(redis_url, prefix, fields)) for _ in range(reps + 1)][1:]
    finally:
        fleet.stop()
        delete_prefix(redis_url, prefix)
    return {
        "workers": workers,
        "seconds": statistics.median(r["seconds"] for r in runs),
        "walls": [r["seconds"] for r in runs],
        "fanned_out_s": statistics.median(r["fanned_out_s"] for r in runs),
        "chunks": runs[0]["chunks"],
        "best": _job_best(runs[0]["result"]),
    }


def worker_loss(
    redis_url: str, fields: dict[str, Any], extra: dict[str, str], workdir: Path, label: str
) -> dict[str, Any]:
    """`fields` on one worker with `extra` settings (and LOSS_ENV), uninterrupted, then again with
    the worker killed at KILL_AT and a new one started: seconds of both and the time lost."""
    prefix = "{jobbench-" + uuid.uuid4().hex[:10] + "}"
    fleet = Fleet(redis_url, prefix, workdir, {**LOSS_ENV, **extra})
    try:
        fleet.start(1)
        whole = asyncio.run(run_task(redis_url, prefix, fields))
        killed = asyncio.run(run_task(redis_url, prefix, fields, kill_at=KILL_AT, fleet=fleet))
    finally:
        fleet.stop()
        delete_prefix(redis_url, prefix)
    if killed["killed_at"] is None:
        raise RuntimeError(f"{label}: the run ended before its progress reached {KILL_AT}")
    return {
        "label": label,
        "chunks": whole["chunks"],
        "uninterrupted_s": whole["seconds"],
        "killed_s": killed["seconds"],
        "killed_at": killed["killed_at"],
        "lost_s": killed["seconds"] - whole["seconds"],
        "same_best": whole["result"]["best_params"] == killed["result"]["best_params"],
    }


def delete_prefix(redis_url: str, prefix: str) -> None:
    """Delete every key under `prefix` (the `{...}` tag matched without its closing brace, so
    every partition's keys go too)."""
    client = redis.Redis.from_url(redis_url)
    try:
        keys = list(client.scan_iter(match=f"{prefix.rstrip('}')}*", count=1000))
        for i in range(0, len(keys), 1000):
            client.delete(*keys[i : i + 1000])
    finally:
        client.close()


# --- the peers ---------------------------------------------------------------------------------


def peers_python() -> str:
    """bench/.venv/peers (built from requirements.txt on first use, as run.py builds it)."""
    from bench.run import _requirements, _venv

    return _venv("peers", _requirements(BENCH / "requirements.txt"))


def chunk_lines(fields: dict[str, Any], symbols: list[str], chunk_seconds: float) -> list[str]:
    """The job's chunk requests as Backstream's planner makes them, one JSON line each."""
    spec = msgspec.convert({**fields, "symbols": symbols}, BacktestSpec)
    plan = plan_job(spec, Catalog.from_env_dir(None), target_seconds=chunk_seconds)
    assert plan is not None
    return [msgspec.json.encode(chunk_spec(spec, plan, i, "peers")).decode() for i in range(len(plan.spans))]


def peer(
    system: str, python: str, lines: list[str], reps: int, redis_url: str, db: int, workdir: Path
) -> dict[str, Any]:
    """Run bench/peers/job_peers.py `system` in the peers' environment; {"seconds", "walls", "best"}
    or {"error"} with the reason it could not run."""
    specs = workdir / "chunks.jsonl"
    specs.write_text("\n".join(lines) + "\n")
    broker = redis_url.rsplit("/", 1)[0] + f"/{db}"
    env = dict(
        os.environ,
        JOB_BENCH_BROKER=broker,
        PYTHONPATH=str(REPO),
        # Dask's and Celery's own logs to stderr; keep its temporary files in the run's directory.
        TMPDIR=str(workdir),
    )
    args = {"specs": str(specs), "reps": reps, "processes": 2, "logdir": str(workdir)}
    client = redis.Redis.from_url(broker)
    try:
        if system == "celery" and client.dbsize():
            return {"error": f"Redis DB {db} is not empty: give --celery-db one of its own"}
        done = subprocess.run(
            [python, "-m", "bench.peers.job_peers", system, json.dumps(args)],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=900,
            check=False,
        )
    finally:
        if system == "celery":
            client.flushdb()
        client.close()
    (workdir / f"{system}.stderr").write_text(done.stderr)
    if done.returncode != 0:
        return {"error": f"exited {done.returncode}: {done.stderr.strip().splitlines()[-1:]}"}
    out = json.loads(done.stdout.strip().splitlines()[-1])
    best = out["best"]
    return {
        "seconds": statistics.median(out["walls"]),
        "walls": out["walls"],
        "best": {"symbol": best["symbol"], "params": best["params"]},
    }


# --- the report --------------------------------------------------------------------------------


def report(results: dict[str, Any]) -> str:
    m = results["machine"]
    alone, jobs = results["engine_alone"], results["jobs"]
    one, two = jobs["1"], jobs["2"]
    n = alone["combinations"]
    lines = [
        f"date: {m['date']}; machine: {m['nproc']} x {m['cpu']}; Python {m['python']}",
        f"load before: {m['uptime']}",
        f"command: {m['command']}",
        "",
        f"1. Universe x grid: {results['universe']} ({n:,} combinations), {one['chunks']} chunks; "
        f"median of {results['reps']}",
        "",
        "| run | wall s | combinations/s | vs 1 worker | efficiency per process vs engine alone | best = engine's |",
        "| --- | ---: | ---: | ---: | ---: | --- |",
        f"| engine alone, 1 process, one task per symbol | {alone['seconds']:.2f} | {alone['per_s']:,.0f} | | 100% | |",
    ]
    chunks_rate = n / results["chunks_alone_s"]
    lines.append(
        f"| engine alone, 1 process, the job's {one['chunks']} chunk requests in turn "
        f"| {results['chunks_alone_s']:.2f} | {chunks_rate:,.0f} | | {chunks_rate / alone['per_s']:.0%} | |"
    )
    for k, r in (("1", one), ("2", two)):
        rate = n / r["seconds"]
        lines.append(
            f"| Backstream job, {k} worker process{'es' if k == '2' else ''} | {r['seconds']:.2f} | {rate:,.0f} "
            f"| {one['seconds'] / r['seconds']:.2f}x | {rate / int(k) / alone['per_s']:.0%} "
            f"| {r['best'] == alone['best']} |"
        )
    for system, label in (
        ("celery", "Celery chord(group), prefork 2"),
        ("dask", "Dask LocalCluster, 2 processes x 1 thread"),
    ):
        r = results["peers"].get(system)
        if r is None:
            continue
        if "error" in r:
            lines.append(f"| {label} | not run: {r['error']} | | | | |")
            continue
        rate = n / r["seconds"]
        lines.append(
            f"| {label} | {r['seconds']:.2f} | {rate:,.0f} | {one['seconds'] / r['seconds']:.2f}x "
            f"| {rate / 2 / alone['per_s']:.0%} | {r['best'] == alone['best']} |"
        )
    if two["seconds"]:
        lines.append("")
        lines.append(
            f"speedup 2 vs 1 worker: {one['seconds'] / two['seconds']:.2f}x (target >= 1.8x); "
            f"efficiency on 1 worker: {n / one['seconds'] / alone['per_s']:.0%} (target >= 90%); "
            f"submit to fanned_out (planning): {one['fanned_out_s']:.2f} s on 1 worker"
        )
    loss = results["loss"]
    lines += [
        "",
        f"3. Worker lost at {KILL_AT:.0%}: {results['long']}; 1 worker, "
        + ", ".join(f"{k}={v}" for k, v in LOSS_ENV.items()),
        "",
        "| run | chunks | uninterrupted s | killed at | with the kill s | time lost s | same best |",
        "| --- | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in loss:
        lines.append(
            f"| {r['label']} | {r['chunks'] or '-'} | {r['uninterrupted_s']:.2f} | {r['killed_at']:.0%} "
            f"| {r['killed_s']:.2f} | {r['lost_s']:.2f} | {r['same_best']} |"
        )
    return "\n".join(lines)


def _describe(fields: dict[str, Any]) -> str:
    p = fields["params"]
    grid = " x ".join(f"{k} {v[0]}..{v[-1]}" for k, v in p.items())
    extra = ", stop_loss_pct 5" if "stop_loss_pct" in fields else ""
    return f"{fields['strategy']} {grid}{extra}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--redis-url", default=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))
    parser.add_argument("--celery-db", type=int, default=13, help="Celery's broker and backend DB (emptied after)")
    parser.add_argument(
        "--peers", action=argparse.BooleanOptionalAction, default=None, help="default: on, off with --smoke"
    )
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: check that the script runs")
    parser.add_argument("--json", type=Path, help="also write every number to this file")
    args = parser.parse_args()
    smoke = args.smoke
    reps = 1 if smoke else args.reps
    peers = (not smoke) if args.peers is None else args.peers
    symbols, grid, long = (SMOKE_SYMBOLS, SMOKE_GRID, SMOKE_LONG) if smoke else (SYMBOLS, GRID, LONG)
    chunk_s = SMOKE_CHUNK_SECONDS if smoke else CHUNK_TARGET_SECONDS
    fan = {"BACKSTREAM_CHUNK_SECONDS": str(chunk_s)}
    results: dict[str, Any] = {
        "machine": machine(),
        "reps": reps,
        "universe": f"{'/'.join(symbols)} x {_describe(grid)}",
    }
    results["long"] = _describe({**long, "params": long["params"]}) + f" on {long['symbol']}"
    print(f"[job_bench] {results['machine']['uptime']}", flush=True)
    with tempfile.TemporaryDirectory(prefix="job-bench-") as tmp:
        work = Path(tmp)
        results["engine_alone"] = engine_alone(grid, symbols, reps)
        print(f"[job_bench] engine alone: {results['engine_alone']}", flush=True)
        lines = chunk_lines(grid, symbols, chunk_s)
        results["chunks_alone_s"] = chunks_alone(lines, reps)
        print(f"[job_bench] the job's {len(lines)} chunks alone: {results['chunks_alone_s']:.2f} s", flush=True)
        universe = {**grid, "symbols": symbols}
        results["jobs"] = {}
        for workers in (1, 2):
            results["jobs"][str(workers)] = universe_job(args.redis_url, universe, workers, reps, work, fan)
            print(f"[job_bench] job on {workers}: {results['jobs'][str(workers)]}", flush=True)
        results["peers"] = {}
        if peers:
            try:
                python = peers_python()
            except (subprocess.CalledProcessError, OSError) as e:
                python = ""
                results["peers"] = {
                    s: {"error": f"the peers' environment could not be built: {e}"} for s in ("celery", "dask")
                }
            if python:
                for system in ("celery", "dask"):
                    results["peers"][system] = peer(system, python, lines, reps, args.redis_url, args.celery_db, work)
                    print(f"[job_bench] {system}: {results['peers'][system]}", flush=True)
        results["loss"] = []
        variants = [
            ("job (fan-out, completed chunks kept)", fan),
            (
                "one task, no checkpoint (restarts from zero)",
                {"BACKSTREAM_CHUNK_SECONDS": NEVER, "BACKSTREAM_CHECKPOINT_S": NEVER},
            ),
            ("one task, checkpoint every 1 s", {"BACKSTREAM_CHUNK_SECONDS": NEVER, "BACKSTREAM_CHECKPOINT_S": "1"}),
        ]
        for i, (label, extra) in enumerate(variants):
            results["loss"].append(worker_loss(args.redis_url, long, extra, work / f"loss{i}", label))
            print(f"[job_bench] loss: {results['loss'][-1]}", flush=True)
    print()
    print(report(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
