"""Where a system's CPU goes under the throughput load: CPU time per task of each of its processes.

    python3 bench/cpu_share.py [--system backstream|taskiq|...] [--kind noop|sma] [--tasks 10000]
                               [--concurrency 8] [--bs-root OLD_TREE]
    .venv/bin/python bench/cpu_share.py --smoke   # Backstream, 20 tasks, this interpreter: checks it runs (CI)

One worker process on a private redis-server, warmed up, then one timed run of `--tasks` tasks.
Prints the run's rate and, per process (worker, projector, redis-server, and the driver that
submits and waits), CPU seconds and microseconds per task, and the worker's by thread (user and
system). On a 2-core machine the sum says how
close the whole system is to the machine's limit; CPU per task is steadier than a rate on a
noisy machine. Then redis-server's time per command (INFO commandstats over the run).
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.procs import REPO, RedisServer  # noqa: E402
from bench.run import environments  # noqa: E402
from bench.systems import PEERS, Block, Env, _descendants  # noqa: E402


def _cpu_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _thread_cpu(pid: int) -> dict[str, tuple[float, float]]:
    """User and system CPU seconds of each thread of `pid`, summed by thread name (comm)."""
    out: dict[str, tuple[float, float]] = {}
    tick = os.sysconf("SC_CLK_TCK")
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            comm = (task / "comm").read_text().strip()
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        user, system = out.get(comm, (0.0, 0.0))
        out[comm] = (user + int(fields[11]) / tick, system + int(fields[12]) / tick)
    return out


def _name(pid: int) -> str:
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
    except OSError:
        return "?"
    words = [a for a in argv[1:] if a and not a.startswith("-")]
    return " ".join(words[:3])[:60]


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _command_stats(redis: RedisServer) -> dict[str, tuple[int, int]]:
    """Calls and microseconds per command since the last CONFIG RESETSTAT."""
    stats = {}
    for line in redis.cli("INFO", "commandstats").splitlines():
        if line.startswith("cmdstat_"):
            name, fields = line[len("cmdstat_") :].split(":", 1)
            values = dict(kv.split("=") for kv in fields.split(","))
            stats[name] = (int(values["calls"]), int(values["usec"]))
    return stats


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--system", default="backstream", choices=["backstream", *PEERS])
    parser.add_argument("--kind", default="noop", choices=["noop", "sma"])
    parser.add_argument("--tasks", type=int, default=None, help="default 10,000 (20 with --smoke)")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--smoke", action="store_true", help="20 tasks, Backstream in this interpreter (no venv)")
    parser.add_argument(
        "--bs-root", type=Path, default=REPO, help="the Backstream tree to measure (an old one from `git worktree add`)"
    )
    args = parser.parse_args()
    if args.smoke:
        if args.system != "backstream":
            parser.error("--smoke measures Backstream only (a peer needs its own environment)")
        args.tasks = args.tasks or 20
    args.tasks = args.tasks or 10_000
    bs_python, peers_python = environments(REPO, smoke=args.smoke)
    workdir = Path(tempfile.mkdtemp(prefix="backstream-cpu-"))
    redis = RedisServer(workdir)
    env = Env(redis, workdir, bs_python, peers_python, bs_root=args.bs_root.resolve(), concurrency=args.concurrency)
    block = Block(env, args.system, 1, args.kind)
    try:
        block.start()
        # Every process of the system, with the ones its processes started (taskiq's, Celery's).
        watched = {pid: _name(pid) for pid in _descendants([p.pid for p in block.procs])}
        watched[redis.proc.pid] = "redis-server"
        before = {pid: _cpu_seconds(pid) for pid in watched}
        workers = [pid for pid, name in watched.items() if " worker" in name]
        threads_before = {pid: _thread_cpu(pid) for pid in workers}
        driver_before = _children_cpu()  # the driver is the only child that exits during the run
        redis.cli("CONFIG", "RESETSTAT")
        result: dict[str, Any] = {}
        load = threading.Thread(target=lambda: result.update(block.run(args.tasks)))
        started = time.monotonic()
        load.start()
        load.join()
        wall = time.monotonic() - started
        used = {f"{name} (pid {pid})": _cpu_seconds(pid) - before[pid] for pid, name in watched.items()}
        threads_used = {pid: _thread_cpu(pid) for pid in workers}
        used["driver (submits, follows; includes its start-up)"] = _children_cpu() - driver_before
        commands = _command_stats(redis)
    finally:
        block.stop()
        redis.stop()
    rate = result.get("tasks_per_s") or 0
    print(f"{args.system} {args.kind}: {rate:,.0f} tasks/s, {args.tasks:,} tasks in {wall:.1f} s")
    for name, seconds in sorted(used.items(), key=lambda kv: -kv[1]):
        print(f"  {seconds:6.2f} s CPU  {1e6 * seconds / args.tasks:6.0f} us/task  {name}")
    total = sum(used.values())
    print(f"  {total:6.2f} s CPU  {1e6 * total / args.tasks:6.0f} us/task  all ({total / wall:.2f} cores busy)")
    for pid, threads in threads_used.items():
        print(f"worker (pid {pid}) by thread, user + system us/task (threads alive at the end):")
        for comm, (user, system) in sorted(threads.items(), key=lambda kv: -sum(kv[1])):
            user0, system0 = threads_before[pid].get(comm, (0.0, 0.0))
            u, s_ = 1e6 * (user - user0) / args.tasks, 1e6 * (system - system0) / args.tasks
            print(f"  {u + s_:6.0f} us/task  (user {u:5.0f}, system {s_:5.0f})  {comm}")
    print("redis-server time by command (Lua scripts' inner calls counted in both):")
    for name, (calls, usec) in sorted(commands.items(), key=lambda kv: -kv[1][1])[:12]:
        print(f"  {usec / args.tasks:6.1f} us/task  {calls / args.tasks:5.2f} calls/task  {name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
