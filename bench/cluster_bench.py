"""Backstream on a Redis Cluster (P partitions over three masters) against one standalone server,
with the same workers: tasks/s, Redis CPU per task on each shard, and how commands spread.

    .venv/bin/python bench/cluster_bench.py [--tasks 4000] [--workers 2] [--concurrency 8]
                                            [--partitions 16] [--spec sma|sma-full]
    .venv/bin/python bench/cluster_bench.py --smoke   # 60 tasks each way: checks it runs (CI)

Each setup gets private servers (a redis-server; three cluster masters without replicas), one
projector and `--workers` real `backstream worker` processes. The driver submits `--tasks` tasks
through Commands (the API's path, without HTTP), waits until every work item is gone and the
projection has caught up, and reads from every node the CPU (INFO cpu) and the commands (INFO
commandstats) of that window, and from /proc the CPU of the workers and the projector. Per
shard it prints the partitions and tasks it held, its CPU per task it held (what one shard's
core spends on one task: the capacity model's figure) and its share of the commands. The last
line is the numbers as JSON (`RESULT {...}`). A 2-core machine runs servers, workers and driver
on the same cores: rates are the machine's, CPU per task is the steadier figure.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import redis  # noqa: E402

from bench.procs import REPO, Proc, RedisServer  # noqa: E402
from bench.work import sma_spec  # noqa: E402
from orchestrator.domain.spec import BacktestSpec  # noqa: E402
from orchestrator.settings import Settings  # noqa: E402
from orchestrator.storage.commands import Commands  # noqa: E402
from orchestrator.storage.connections import RedisClient, connect  # noqa: E402
from orchestrator.storage.partitions import Layout, deployment_layout  # noqa: E402
from tests.processes import RedisCluster  # noqa: E402

PREFIX = "{bs}"
SPECS = {
    # The other benchmarks' short task (bench/work.py): one year of GOOG, ~0.5 ms of engine work,
    # so the system's own cost per task shows.
    "sma": sma_spec(),
    # The whole GOOG history (2,148 bars) and its ~16 KB detail: a few ms of work per task.
    "sma-full": BacktestSpec(strategy="sma_cross", symbol="GOOG", params={"fast": 10, "slow": 20}),
}
SUBMIT_BATCH = 200  # submits in flight at once (the API's concurrent requests)


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process `pid` so far (0 once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def node_counters(port: int) -> tuple[float, int]:
    """The node's CPU seconds (used_cpu_sys + used_cpu_user) and the commands it has served."""
    node = redis.Redis(port=port)
    try:
        cpu = node.info("cpu")
        calls = sum(int(entry["calls"]) for entry in node.info("commandstats").values())
    finally:
        node.close()
    return float(cpu["used_cpu_sys"]) + float(cpu["used_cpu_user"]), calls


def command_mix(port: int) -> Counter[str]:
    """Calls per command name the node has served (INFO commandstats)."""
    node = redis.Redis(port=port)
    try:
        stats = node.info("commandstats")
    finally:
        node.close()
    return Counter({name.removeprefix("cmdstat_"): int(entry["calls"]) for name, entry in stats.items()})


def delta(after: tuple[float, int], before: tuple[float, int]) -> tuple[float, int]:
    """A node's CPU seconds and commands between two `node_counters` readings."""
    return after[0] - before[0], after[1] - before[1]


async def drained(client: RedisClient, layout: Layout) -> bool:
    """True when no partition has a work item or a retry left (every task ended)."""
    for keys in layout.partitions:
        if await client.xlen(keys.work) or await client.zcard(keys.delayed):
            return False
    return True


async def projected(client: RedisClient, layout: Layout) -> bool:
    """True when the projection's position in every partition is that partition's last event."""
    for keys in layout.partitions:
        last = await client.xrevrange(keys.events, count=1)
        position = await client.get(keys.projection_position)
        if last and (position is None or position != last[0][0]):
            return False
    return True


async def wait_for(check: Any, what: str, timeout: float) -> float:
    """Poll `check()` until true; the monotonic time it became true. SystemExit after `timeout` s."""
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out after {timeout:.0f} s waiting for {what}")
        await asyncio.sleep(0.02)
    return time.monotonic()


async def submit(commands: Commands, spec: BacktestSpec, n: int) -> list[str]:
    """Submit `n` tasks, SUBMIT_BATCH at a time; their ids."""
    ids: list[str] = []
    while len(ids) < n:
        batch = min(SUBMIT_BATCH, n - len(ids))
        replies = await asyncio.gather(*(commands.submit(None, spec) for _ in range(batch)))
        ids += [reply.task_id for reply in replies]
    return ids


async def drive(env: dict[str, str], args: argparse.Namespace, roles: list[Proc], ports: list[int]) -> dict[str, Any]:
    """Warm up, then the timed run (processes already started): its times, task ids, and the
    CPU of every role and the CPU and commands of every node over it."""
    spec, warmup = SPECS[args.spec], max(20, args.tasks // 10)
    conns = await connect(Settings.from_env(env))
    try:
        client = conns.commands
        layout = await deployment_layout(conns)
        commands = Commands(client, layout)
        await submit(commands, spec, warmup)
        await wait_for(lambda: drained(client, layout), "the warm-up tasks", 300)
        await wait_for(lambda: projected(client, layout), "the warm-up projection", 300)
        # Idle: every role running, no task; what the nodes spend anyway (cron, the cluster bus,
        # the workers' and projector's idle reads of every partition).
        idle_before = {port: node_counters(port) for port in ports}
        await asyncio.sleep(args.idle_s)
        idle = {port: delta(node_counters(port), idle_before[port]) for port in ports}
        roles_before = {role.pid: cpu_seconds(role.pid) for role in roles}
        nodes_before = {port: node_counters(port) for port in ports}
        mix_before = sum((command_mix(port) for port in ports), Counter[str]())
        began = time.monotonic()
        ids = await submit(commands, spec, args.tasks)
        ran = await wait_for(lambda: drained(client, layout), "every task to end", 600)
        caught_up = await wait_for(lambda: projected(client, layout), "the projection", 600)
        nodes_after = {port: node_counters(port) for port in ports}
        mix = sum((command_mix(port) for port in ports), Counter[str]()) - mix_before
        return {
            "layout": layout,
            "ids": ids,
            "mix": mix,
            "run_s": ran - began,
            "projected_s": caught_up - began,
            "roles_cpu": {role.pid: cpu_seconds(role.pid) - roles_before[role.pid] for role in roles},
            "nodes": {port: delta(nodes_after[port], nodes_before[port]) for port in ports},
            "idle_per_s": {port: (cpu / args.idle_s, calls / args.idle_s) for port, (cpu, calls) in idle.items()},
        }
    finally:
        await conns.close()


def start_roles(env: dict[str, str], logdir: Path, workers: int, concurrency: int) -> tuple[list[Proc], list[Proc]]:
    """One projector and `workers` worker processes (real `backstream` roles); (workers, all)."""
    cli = [sys.executable, "-m", "orchestrator.cli", "--log-json"]
    projector = Proc([*cli, "projector"], env=env, log=logdir / "projector.log")
    pool = [
        Proc([*cli, "worker", "--name", f"w{i}", "--concurrency", str(concurrency)], env=env, log=logdir / f"w{i}.log")
        for i in range(workers)
    ]
    return pool, [projector, *pool]


def run_setup(name: str, url: str, ports: list[int], serving: Any, args: argparse.Namespace) -> dict[str, Any]:
    """One setup, end to end: roles started, warm-up, timed run, counters read, roles stopped.
    `serving(key)`: the port of the node holding `key`."""
    logdir = Path(tempfile.mkdtemp(prefix=f"cluster-bench-{name}-"))
    env = dict(
        os.environ,
        REDIS_URL=url,
        BACKSTREAM_PREFIX=PREFIX,
        BACKSTREAM_PARTITIONS=str(args.partitions if name == "cluster" else 1),
        BACKSTREAM_HOME=str(logdir / "home"),
        PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    )
    workers, roles = start_roles(env, logdir, args.workers, args.concurrency)
    try:
        run = asyncio.run(drive(env, args, roles, ports))
    finally:
        for role in reversed(roles):
            role.stop()
    run["startup_port"] = int(url.rsplit(":", 1)[1].split("/")[0])
    return summarize(name, run, ports, serving, {w.pid for w in workers}, logdir)


def summarize(
    name: str, run: dict[str, Any], ports: list[int], serving: Any, workers: set[int], logdir: Path
) -> dict[str, Any]:
    """The setup's numbers: rates, CPU per task of every role and node, commands per node."""
    layout: Layout = run["layout"]
    tasks = len(run["ids"])
    node_of = [serving(keys.events) for keys in layout.partitions]
    held = Counter(node_of[layout.partition_index(task_id)] for task_id in run["ids"])
    total_calls = sum(calls for _, calls in run["nodes"].values()) or 1
    shards = []
    for port in ports:
        cpu, calls = run["nodes"][port]
        idle_cpu_per_s, idle_calls_per_s = run["idle_per_s"][port]
        shards.append(
            {
                "port": port,
                # Partition 0's node holds the deployment-wide keys (heartbeats, leases, pointer);
                # the URL's node is where redis-py's cluster client asks COMMAND GETKEYS.
                "home": node_of[0] == port,
                "url_node": run["startup_port"] == port,
                "partitions": node_of.count(port),
                "tasks": held[port],
                "cpu_s": round(cpu, 3),
                "cpu_us_per_task_held": round(cpu / held[port] * 1e6, 1) if held[port] else None,
                # Less what the node spends idle over as long: the cost that grows with tasks.
                "marginal_cpu_us_per_task_held": (
                    round((cpu - idle_cpu_per_s * run["projected_s"]) / held[port] * 1e6, 1) if held[port] else None
                ),
                "idle_cpu_share": round(idle_cpu_per_s, 4),
                "idle_commands_per_s": round(idle_calls_per_s, 1),
                "commands": calls,
                "command_share": round(calls / total_calls, 3),
                "commands_per_task_held": round(calls / held[port], 1) if held[port] else None,
            }
        )
    worker_cpu = sum(cpu for pid, cpu in run["roles_cpu"].items() if pid in workers)
    projector_cpu = sum(cpu for pid, cpu in run["roles_cpu"].items() if pid not in workers)
    return {
        "setup": name,
        "partitions": layout.width,
        "tasks": tasks,
        "tasks_per_s": round(tasks / run["run_s"], 1),
        "projected_per_s": round(tasks / run["projected_s"], 1),
        "redis_cpu_us_per_task": round(sum(s["cpu_s"] for s in shards) / tasks * 1e6, 1),
        "worker_cpu_us_per_task": round(worker_cpu / tasks * 1e6, 1),
        "projector_cpu_us_per_task": round(projector_cpu / tasks * 1e6, 1),
        "commands_per_task": round(sum(run["mix"].values()) / tasks, 1),
        "command_mix_per_task": {name: round(calls / tasks, 2) for name, calls in run["mix"].most_common(12)},
        "shards": shards,
        "logs": str(logdir),
    }


def report(result: dict[str, Any]) -> None:
    print(
        f"{result['setup']:<10} P={result['partitions']:<3} {result['tasks']} tasks: "
        f"{result['tasks_per_s']:.0f} tasks/s run, {result['projected_per_s']:.0f}/s projected; CPU per task: "
        f"redis {result['redis_cpu_us_per_task']:.0f} us, workers {result['worker_cpu_us_per_task']:.0f} us, "
        f"projector {result['projector_cpu_us_per_task']:.0f} us"
    )
    mix = ", ".join(f"{name} {calls}" for name, calls in result["command_mix_per_task"].items())
    print(f"  {result['commands_per_task']} commands/task over the nodes: {mix}")
    for s in result["shards"]:
        per_task = "-" if s["cpu_us_per_task_held"] is None else f"{s['cpu_us_per_task_held']:.0f}"
        roles = (" home" if s["home"] else "") + (" url" if s["url_node"] else "")
        marginal = "-" if s["marginal_cpu_us_per_task_held"] is None else f"{s['marginal_cpu_us_per_task_held']:.0f}"
        print(
            f"  shard :{s['port']}{roles}  partitions {s['partitions']:>2}  tasks {s['tasks']:>6}  "
            f"cpu {s['cpu_s']:.2f} s  {per_task} us/task held ({marginal} beyond idle)  "
            f"commands {s['commands']} ({s['command_share']:.0%}); idle {s['idle_cpu_share']:.1%} CPU, "
            f"{s['idle_commands_per_s']:.0f} commands/s"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=4000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--partitions", type=int, default=16, help="the cluster's partitions (standalone: 1)")
    parser.add_argument("--spec", choices=sorted(SPECS), default="sma")
    parser.add_argument("--idle-s", type=float, default=5.0, help="seconds idle measured before the run")
    parser.add_argument("--smoke", action="store_true", help="60 tasks, 1 worker: checks that it runs")
    args = parser.parse_args()
    if args.smoke:
        args.tasks, args.workers, args.concurrency, args.idle_s = 60, 1, 4, 0.5
    workdir = Path(tempfile.mkdtemp(prefix="cluster-bench-"))
    results = []
    server = RedisServer(workdir / "standalone")
    try:
        results.append(run_setup("standalone", server.url, [server.port], lambda key: server.port, args))
    finally:
        server.stop()
    (workdir / "cluster").mkdir()
    cluster = RedisCluster(workdir / "cluster")
    try:
        results.append(run_setup("cluster", cluster.url, cluster.masters, cluster.port_serving, args))
    finally:
        cluster.stop()
    for result in results:
        report(result)
    print("RESULT " + json.dumps(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
