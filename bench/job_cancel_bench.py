"""Cancelling a fanned-out job (issue 21's cancel target: p99 <= 50 ms from the cancel to the last
write, also for a job with hundreds of chunks).

    python bench/job_cancel_bench.py [--chunks 400] [--cancels 20] [--quiet-cancels 5] [--concurrency 4]
        [--after 0.05] [--smoke] [--json FILE]

A private redis-server (bench/procs.py) and 2 `orchestrator.cli worker --concurrency C` processes
(JSON logs). Each repetition submits one job through `Commands.submit`: a universe of 4 bundled
symbols x 10,000 sma_cross combinations with `stop_loss_pct` 5 (the interpreted path, ~1 ms a
combination), with BACKSTREAM_CHUNK_SECONDS chosen so that the planner cuts it into about
`--chunks` chunks (`jobs.plan_job`, as the workers plan it; ~0.1 s each for 400). Once it has fanned
out and `--after` of its chunks have ended (others are running then), and a random 0 to one chunk's
time more, t0 = the client's clock just before `Commands.cancel` (the call the API's `DELETE`
makes). Measured from t0, in ms:

- `cancel_returned`: the cancel call returned. Every write of the cancel is inside its script, so
  this bounds the cancel's own last write.
- `script`: the cancel script's own run time in Redis (SLOWLOG, threshold 100 µs during the cancel;
  at 0 it would log every command the script runs, which almost doubles its time).
- `job_cancelled_event`: the job's `cancelled` event (its stream id time, Redis's clock).
- `last_event`: the last event appended for the job or any of its chunks (stream id time).
- `last_result_file`: the last result object a worker wrote for one of its chunks (file mtime in
  the results store), if any was written after t0 (a chunk that finished computing before it
  noticed the cancel uploads its result, an orphan, then has its outcome refused).
- `worker_stopped`: the last of the chunks running at the cancel logged `task.stopped` or
  `task.write_refused` (the worker saw the cancel; nothing is written for it after that).
- `last_write`: the latest of `cancel_returned`, `last_event` and `last_result_file`. A worker's
  writes to Redis after the cancel are refused by the scripts' fencing and write nothing (its log
  says `task.write_refused`); they are not observed beyond that.
- `redis_cpu`: CPU time of Redis's main thread from just before the cancel to its return (INFO
  cpu): against `script`, how much of the script's time was spent waiting for a core.

Checked each time: every chunk of the job has ended (`chunks_not_ended`, must be 0), the job and
the chunks that had not ended have their `cancelled` event, and no event is appended for any of
them after it (`events_after_cancel`, must be 0). A cancel that came too late (the job had
completed) is counted in `missed` and repeated.

Then `--quiet-cancels` more, the same way but with both workers SIGSTOPped from just before the
cancel until it returned: the script alone on Redis, and what it ran (INFO commandstats reset
before it: each command's calls and microseconds, the script's own commands included).

Prints p50/p99/max of each over the cancels, with the date, the machine and the command;
`--json FILE` writes every number. `--smoke`: 2 symbols, a small grid, ~40 chunks, 3 + 1 cancels.
Numbers, never assertions on speed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
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

from bench.job_bench import Fleet, _describe, machine  # noqa: E402
from bench.procs import Proc, RedisServer, WorkerLogs, entry_ms, percentile  # noqa: E402
from consumers.engine.datasets import Catalog  # noqa: E402
from consumers.engine.jobs import plan_job  # noqa: E402
from orchestrator.domain.spec import BacktestSpec  # noqa: E402
from orchestrator.storage.commands import Commands  # noqa: E402
from orchestrator.storage.partitions import Layout  # noqa: E402
from orchestrator.storage.workqueue import WorkQueue  # noqa: E402

# 4 x 10,000 combinations on the interpreted path (position management): ~1 ms a combination on
# AAPL's 3,270 bars, so that a chunk computes for a while and several are running at the cancel.
JOB: dict[str, Any] = {
    "strategy": "sma_cross",
    "symbols": ["AAPL", "GOOG", "IBM", "MSFT"],
    "params": {"fast": list(range(2, 102)), "slow": list(range(102, 202))},
    "stop_loss_pct": 5,
}
SMOKE_JOB: dict[str, Any] = {
    **JOB,
    "symbols": ["GOOG", "IBM"],
    "params": {"fast": list(range(2, 22)), "slow": list(range(100, 120))},
}
WORKERS = 2
PREFIX = "{jobcancel}"
# The slow log's threshold during a cancel (µs): the cancel script of a job of more than a few
# chunks takes longer, the commands it runs do not.
SLOWLOG_US = 100
# The worker log events that say a chunk's attempt stopped without writing (or was refused).
STOP_EVENTS = ("task.stopped", "task.write_refused")
METRICS = (
    "cancel_returned",
    "script",
    "job_cancelled_event",
    "last_event",
    "last_result_file",
    "worker_stopped",
    "last_write",
    "redis_cpu",
)


async def redis_cpu_ms(r: Any) -> float:
    """CPU time Redis's main thread has used (user + system, ms): INFO cpu."""
    cpu = await r.info("cpu")
    return 1000 * (float(cpu["used_cpu_user_main_thread"]) + float(cpu["used_cpu_sys_main_thread"]))


def chunk_seconds_for(fields: dict[str, Any], chunks: int) -> tuple[float, int]:
    """The BACKSTREAM_CHUNK_SECONDS whose plan of `fields` has the chunk count nearest to
    `chunks` (a bisection over `plan_job`'s target, as the workers plan with it), and that count."""
    spec = msgspec.convert(fields, BacktestSpec)
    catalog = Catalog.from_env_dir(None)

    def count(seconds: float) -> int:
        plan = plan_job(spec, catalog, target_seconds=seconds)
        return len(plan.spans) if plan is not None else 1

    lo, hi = 1e-4, 10.0  # chunk counts fall as the target grows
    best = (abs(count(lo) - chunks), lo)
    for _ in range(40):
        mid = (lo * hi) ** 0.5
        n = count(mid)
        best = min(best, (abs(n - chunks), mid))
        if n > chunks:
            lo = mid
        elif n < chunks:
            hi = mid
        else:
            break
    seconds = best[1]
    return seconds, count(seconds)


async def one_cancel(
    r: Any,
    layout: Layout,
    commands: Commands,
    fields: dict[str, Any],
    logs: WorkerLogs,
    results_dir: Path,
    after: float,
    chunk_s: float,
    rng: random.Random,
    freeze: list[Proc] | None = None,
) -> dict[str, Any] | None:
    """Submit the job, cancel it once `after` of its chunks ended (plus a random 0..`chunk_s` s),
    and measure; None if the job ended before the cancel. `freeze`: the worker processes to
    SIGSTOP for the cancel (SIGCONT once it returned), so that Redis runs the script alone; the
    script's commands are then counted (INFO commandstats). Raises RuntimeError when something the
    benchmark relies on does not happen (no fan-out, a chunk that never stops, a missing event)."""
    keys = layout.partitions[0]
    newest: Any = await r.xrevrange(keys.events, "+", "-", count=1)
    last: bytes = newest[0][0] if newest else b"0-0"
    job_id = str(uuid.uuid4())  # partition 0: the only one here
    await commands.submit(job_id, msgspec.convert(fields, BacktestSpec))
    chunks, ended = 0, 0
    deadline = time.monotonic() + 120
    while chunks == 0 or ended < max(2, after * chunks):
        if time.monotonic() > deadline:
            raise RuntimeError(f"job {job_id}: {ended} of {chunks} chunks ended within 120 s")
        reply: Any = await r.xread({keys.events: last}, count=1000, block=100)
        for _, entries in reply or []:
            for entry_id, f in entries:
                last = entry_id
                kind = f[b"type"]
                if f[b"task_id"].decode() == job_id:
                    if kind == b"fanned_out":
                        chunks = json.loads(f[b"data"])["chunks"]
                    elif kind in (b"completed", b"failed"):
                        return None
                elif kind in (b"completed", b"failed"):
                    ended += 1
    await asyncio.sleep(rng.uniform(0, chunk_s))
    chunk_ids = {c.decode() for c in await r.lrange(keys.job_chunks(job_id), 0, -1)}
    ours = chunk_ids | {job_id}
    position: bytes = (await r.xrevrange(keys.events, "+", "-", count=1))[0][0]
    for proc in freeze or []:
        os.killpg(proc.pid, signal.SIGSTOP)
    # Not 0: the slow log would then take every command the script runs (~1.8x its CPU time).
    await r.config_set("slowlog-log-slower-than", SLOWLOG_US)
    await r.slowlog_reset()
    await r.config_resetstat()
    cpu_before = await redis_cpu_ms(r)
    t0 = time.time()
    try:
        await commands.cancel(job_id, by="bench")
    except Exception as e:  # the job completed in the meantime: TaskConflict
        if type(e).__name__ == "TaskConflict":
            await r.config_set("slowlog-log-slower-than", 10_000)
            for proc in freeze or []:
                os.killpg(proc.pid, signal.SIGCONT)
            return None
        raise
    t_ret = time.time()
    cpu_ms = await redis_cpu_ms(r) - cpu_before
    stats = await r.info("commandstats") if freeze else {}
    for proc in freeze or []:
        os.killpg(proc.pid, signal.SIGCONT)
    await r.config_set("slowlog-log-slower-than", 10_000)
    slow = await r.slowlog_get(1024)
    # The cancel script's entry names the job (its first argument); redis-py joins the arguments.
    script_us = next((e["duration"] for e in slow if job_id.encode() in bytes(e.get("command") or b"")), None)

    # Every event of the job and its chunks from just before the cancel on: the chunks that were
    # running at the cancel (previous_status of their `cancelled`), and anything after one.
    cancelled_at: dict[str, int] = {}
    running: set[str] = set()
    job_event_ms: int | None = None
    last_ms: int | None = None

    async def read_from(pos: bytes) -> tuple[bytes, int]:
        nonlocal job_event_ms, last_ms
        after_cancel = 0
        reply: Any = await r.xread({keys.events: pos}, count=10_000)
        for _, entries in reply or []:
            for entry_id, f in entries:
                pos = entry_id
                task = f[b"task_id"].decode()
                if task not in ours:
                    continue
                last_ms = entry_ms(entry_id)
                if task in cancelled_at:
                    after_cancel += 1
                if f[b"type"] == b"cancelled":
                    cancelled_at[task] = entry_ms(entry_id)
                    if task == job_id:
                        job_event_ms = entry_ms(entry_id)
                    elif json.loads(f[b"data"]).get("previous_status") == "running":
                        running.add(task)
        return pos, after_cancel

    position, after_cancel = await read_from(position)
    if job_id not in cancelled_at:
        raise RuntimeError(f"job {job_id}: no cancelled event")

    # Wait for every chunk running at the cancel to log that it stopped (or was refused).
    stopped: dict[str, float] = {}
    deadline = time.monotonic() + 15
    while set(stopped) < running:
        if time.monotonic() > deadline:
            raise RuntimeError(f"job {job_id}: {len(running - set(stopped))} running chunks never stopped")
        await asyncio.sleep(0.005)
        logs.poll()
        for task in running - set(stopped):
            ts = [t for t, event in logs.lines.get(task, []) if t >= t0 and event in STOP_EVENTS]
            if ts:
                stopped[task] = min(ts)
    # Anything a worker still does for the job would come now: give it a moment, then look again.
    await asyncio.sleep(0.3)
    logs.poll()
    position, more = await read_from(position)
    after_cancel += more
    async with r.pipeline(transaction=False) as pipe:
        for c in sorted(chunk_ids):
            pipe.hget(layout.partitions[0].control(c), "status")
        statuses = await pipe.execute()
    not_ended = sum(st not in (b"completed", b"failed", b"cancelled") for st in statuses)
    files = [
        p.stat().st_mtime
        for c in chunk_ids
        if (results_dir / c).is_dir()
        for p in (results_dir / c).rglob("*")
        if p.is_file() and p.stat().st_mtime >= t0
    ]
    worker_lines = [t for task in ours for t, _ in logs.lines.get(task, []) if t >= t0]
    ms = {
        "cancel_returned": 1000 * (t_ret - t0),
        "script": script_us / 1000 if script_us is not None else None,
        "job_cancelled_event": (job_event_ms or 0) - 1000 * t0,
        "last_event": (last_ms or 0) - 1000 * t0,
        "last_result_file": 1000 * (max(files) - t0) if files else None,
        "worker_stopped": 1000 * (max(stopped.values()) - t0) if stopped and not freeze else None,
        "redis_cpu": cpu_ms,
    }
    ms["last_write"] = max(
        v for k, v in ms.items() if k in ("cancel_returned", "last_event", "last_result_file") and v is not None
    )
    return {
        "job": job_id,
        "chunks": len(chunk_ids),
        "ended_before": ended,
        "cancelled_chunks": len(cancelled_at) - 1,
        "running_at_cancel": len(running),
        "result_files_after": len(files),
        "worker_last_line_ms": 1000 * (max(worker_lines) - t0) if worker_lines else None,
        "events_after_cancel": after_cancel,
        "chunks_not_ended": not_ended,
        "ms": ms,
        "quiet": bool(freeze),
        # What the cancel ran in Redis (only with the workers stopped: nothing else then), by
        # command: calls and microseconds (the script's own commands, and the few of the bench).
        "commands": {k.removeprefix("cmdstat_"): {"calls": v["calls"], "usec": v["usec"]} for k, v in stats.items()},
    }


async def measure(
    redis_url: str, fields: dict[str, Any], fleet: Fleet, cancels: int, quiet: int, after: float, chunk_s: float
) -> dict[str, Any]:
    """`cancels` cancels (one job each) on the running fleet, then `quiet` more with the workers
    stopped during the cancel; the rows and their summaries."""
    r = aioredis.Redis.from_url(redis_url, protocol=2, socket_timeout=30)
    layout = Layout(prefix=PREFIX)
    try:
        await WorkQueue(r, layout).ensure_group()
        await r.config_set("slowlog-max-len", 1024)
        commands = Commands(r, layout)
        logs = WorkerLogs([w.log_path for w in fleet.workers])
        rng = random.Random(21)
        rows: list[dict[str, Any]] = []
        missed = 0
        while len(rows) < cancels + quiet:
            freeze = fleet.workers if len(rows) >= cancels else None
            row = await one_cancel(
                r, layout, commands, fields, logs, fleet.workdir / "home" / "results", after, chunk_s, rng, freeze
            )
            if row is None:
                missed += 1
                if missed > cancels:
                    raise RuntimeError(f"{missed} jobs completed before their cancel: grow the job")
                continue
            rows.append(row)
            print(f"[job_cancel_bench] {json.dumps(row)}", flush=True)
    finally:
        await r.aclose()
    return {
        "summary": summarise([x for x in rows if not x["quiet"]]),
        "quiet": summarise([x for x in rows if x["quiet"]]),
        "missed": missed,
        "rows": rows,
    }


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """p50/p99/max of each metric over `rows`, and their counts; {} for no rows. With the
    commands counted (the workers stopped), each command's calls and µs per cancel (medians)."""
    if not rows:
        return {}
    summary: dict[str, Any] = {
        "cancels": len(rows),
        "events_after_cancel": sum(x["events_after_cancel"] for x in rows),
        "chunks_not_ended": sum(x["chunks_not_ended"] for x in rows),
        "chunks": rows[0]["chunks"],
        "running_at_cancel": [x["running_at_cancel"] for x in rows],
        "cancelled_chunks": [x["cancelled_chunks"] for x in rows],
        "result_files_after": sum(x["result_files_after"] for x in rows),
    }
    for name in METRICS:
        values = [x["ms"][name] for x in rows if x["ms"][name] is not None]
        summary[name] = {
            "n": len(values),
            "p50": percentile(values, 0.5),
            "p99": percentile(values, 0.99),
            "max": max(values) if values else None,
        }
    names = sorted({name for x in rows for name in x["commands"]})
    summary["commands"] = {
        name: {
            "calls": statistics.median(x["commands"].get(name, {}).get("calls", 0) for x in rows),
            "usec": statistics.median(x["commands"].get(name, {}).get("usec", 0) for x in rows),
        }
        for name in names
    }
    return summary


def report(results: dict[str, Any]) -> str:
    m, s, q = results["machine"], results["summary"], results["quiet"]

    def cell(v: float | None) -> str:
        return "-" if v is None else f"{v:.1f}"

    lines = [
        f"date: {m['date']}; machine: {m['nproc']} x {m['cpu']}; Python {m['python']}; redis-server {results['redis']}",
        f"load before: {m['uptime']}",
        f"load after: {' '.join(f'{x:.2f}' for x in results['load_after'])}",
        f"command: {m['command']}",
        "",
        f"job: {results['job']}; {s['chunks']} chunks (BACKSTREAM_CHUNK_SECONDS={results['chunk_seconds']:.4g}); "
        f"{WORKERS} workers at --concurrency {results['concurrency']}; cancelled after {results['after']:.0%} of "
        f"its chunks ended; {s['cancels']} cancels ({results['missed']} more came after the job completed)",
        f"chunks running at the cancel: {min(s['running_at_cancel'])}-{max(s['running_at_cancel'])}; "
        f"chunks cancelled: {min(s['cancelled_chunks'])}-{max(s['cancelled_chunks'])}; "
        f"result objects written after the cancel: {s['result_files_after']}",
        "",
        "| ms from just before the cancel | p50 | p99 | max | n |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for name in METRICS:
        v = s[name]
        lines.append(f"| {name} | {cell(v['p50'])} | {cell(v['p99'])} | {cell(v['max'])} | {v['n']} |")
    lines.append("")
    lines.append(
        f"events appended for the job or its chunks after their `cancelled`: {s['events_after_cancel']}; "
        f"chunks not ended after the cancel: {s['chunks_not_ended']}"
    )
    if q:
        lines += [
            "",
            f"The same cancel with both workers stopped (SIGSTOP) while it ran, Redis alone: {q['cancels']} cancels, "
            f"{min(q['cancelled_chunks'])}-{max(q['cancelled_chunks'])} chunks cancelled; ms p50 / max: "
            + "; ".join(
                f"{name} {cell(q[name]['p50'])} / {cell(q[name]['max'])}"
                for name in ("cancel_returned", "script", "redis_cpu", "last_event")
            ),
            "",
            "| command (in the script, median per cancel) | calls | µs | µs/call |",
            "| --- | ---: | ---: | ---: |",
        ]
        for name, c in sorted(q["commands"].items(), key=lambda kv: -kv[1]["usec"]):
            if c["calls"]:
                lines.append(f"| {name} | {c['calls']:.0f} | {c['usec']:.0f} | {c['usec'] / c['calls']:.2f} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunks", type=int, default=None, help="about this many chunks (default 400; 40 --smoke)")
    parser.add_argument("--cancels", type=int, default=None, help="default 20 (3 --smoke)")
    parser.add_argument(
        "--quiet-cancels", type=int, default=None, help="more, with the workers stopped (default 5; 1 --smoke)"
    )
    parser.add_argument("--concurrency", type=int, default=4, help="each worker's --concurrency (the CLI's default)")
    parser.add_argument("--after", type=float, default=0.05, help="cancel once this fraction of chunks ended")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: check that the script runs")
    parser.add_argument("--json", type=Path, help="also write every number to this file")
    args = parser.parse_args()
    fields = SMOKE_JOB if args.smoke else JOB
    wanted = args.chunks or (40 if args.smoke else 400)
    cancels = args.cancels or (3 if args.smoke else 20)
    quiet = (1 if args.smoke else 5) if args.quiet_cancels is None else args.quiet_cancels
    chunk_s, planned = chunk_seconds_for(fields, wanted)
    results: dict[str, Any] = {
        "machine": machine(),
        "job": f"{'/'.join(fields['symbols'])} x " + _describe(fields),
        "chunk_seconds": chunk_s,
        "planned_chunks": planned,
        "concurrency": args.concurrency,
        "after": args.after,
    }
    results["machine"]["command"] = results["machine"]["command"].replace("job_bench.py", "job_cancel_bench.py")
    print(f"[job_cancel_bench] {results['machine']['uptime']}; {planned} chunks at {chunk_s:.4g} s", flush=True)
    with tempfile.TemporaryDirectory(prefix="job-cancel-bench-") as tmp:
        work = Path(tmp)
        server = RedisServer(work)
        fleet = Fleet(
            server.url,
            PREFIX,
            work / "fleet",
            {"BACKSTREAM_CHUNK_SECONDS": repr(chunk_s)},
            concurrency=args.concurrency,
        )
        try:
            results["redis"] = server.version()
            fleet.start(WORKERS)
            out = asyncio.run(measure(server.url, fields, fleet, cancels, quiet, args.after, chunk_s))
        finally:
            fleet.stop()
            server.stop()
    results.update(out)
    results["load_after"] = os.getloadavg()
    print()
    print(report(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
