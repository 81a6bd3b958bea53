"""How fast the log replays: events/s of `replay --verify` and `replay --rebuild` on real Redis.

Usage: .venv/bin/python bench/replay_bench.py [--events 1000000] [--redis-server redis-server]
       .venv/bin/python bench/replay_bench.py --smoke   # 400 events: checks that it runs (CI)

Starts a private redis-server on a free port, writes a log of N events (tasks of four events
each: submitted, started, progress, completed, as the real scripts write them), folds it
into a live projection, reads and decodes it alone (the fold's floor), then times a verify
(its fold, and end to end with the field-by-field comparison) and a rebuild. Prints the
numbers, with the CPU per event of this process and of redis-server beside each rate. The
code measured is whatever `consumers` and `orchestrator` resolve to:
`PYTHONPATH=/path/to/other/checkout` measures another version.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import redis.asyncio as aioredis

from consumers.maintenance.replay import compare, rebuild, snapshot, verify_replay
from consumers.projector import Projector
from orchestrator.domain.spec import BacktestSpec
from orchestrator.storage.codec import encode_json
from orchestrator.storage.keys import Keys
from orchestrator.storage.readmodel import Projection, live_keys

SPEC = encode_json({"spec": BacktestSpec(strategy="sma_cross", symbol="GOOG", params={"fast": 10, "slow": 20})})
RESULT = encode_json(
    {
        "result": {
            "metrics": {
                "equity_final": 10500.25,
                "return_pct": 5.0025,
                "sharpe": 0.41,
                "num_trades": 12,
                "max_drawdown_pct": -12.5,
            }
        }
    }
)


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process has used so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Cpu:
    """CPU used from now on by this process and by redis-server, per event."""

    def __init__(self, server_pid: int) -> None:
        self.server_pid = server_pid
        self.here, self.there = time.process_time(), cpu_seconds(server_pid)

    def per_event(self, events: int) -> str:
        here = (time.process_time() - self.here) / events * 1e6
        there = (cpu_seconds(self.server_pid) - self.there) / events * 1e6
        return f"CPU {here:.1f} µs/event here + {there:.1f} redis-server"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def write_log(client: aioredis.Redis, keys: Keys, events: int) -> None:
    tasks = events // 4
    batch = 2_000
    for start in range(0, tasks, batch):
        async with client.pipeline(transaction=False) as pipe:
            for _ in range(start, min(start + batch, tasks)):
                task_id = str(uuid.uuid4())
                for seq, (kind, attempt, data) in enumerate(
                    (
                        ("submitted", 0, SPEC),
                        ("started", 1, b'{"worker":"w1"}'),
                        ("progress", 1, b'{"progress":0.5}'),
                        ("completed", 1, RESULT),
                    ),
                    1,
                ):
                    pipe.xadd(
                        keys.events,
                        {
                            "type": kind,
                            "v": 2 if kind == "failed" else 1,
                            "task_id": task_id,
                            "seq": seq,
                            "attempt": attempt,
                            "data": data,
                        },
                    )
            await pipe.execute()


async def main(events: int, binary: str) -> None:
    port = free_port()
    with tempfile.TemporaryDirectory() as workdir:
        server = subprocess.Popen(
            [binary, "--port", str(port), "--save", "", "--appendonly", "no", "--dir", workdir],
            stdout=subprocess.DEVNULL,
        )
        try:
            client = aioredis.Redis(port=port, protocol=2)
            for _ in range(100):
                try:
                    await client.ping()
                    break
                except Exception:
                    await asyncio.sleep(0.05)
            version = (await client.info("server"))["redis_version"]
            keys = Keys(prefix="{bench}")
            started = time.perf_counter()
            await write_log(client, keys, events)
            print(f"wrote {events:,} events in {time.perf_counter() - started:.1f} s")

            # CPU per event (this process + redis-server) is printed beside each wall-clock rate:
            # on a shared machine it is the steadier of the two.
            cpu = Cpu(server.pid)
            started = time.perf_counter()
            live = Projector(Projection(client, keys, follow_live=True), batch_size=5_000)
            await live.run(burst=True)
            fold_s = time.perf_counter() - started
            print(
                f"live projector (batch 5000): {live.applied:,} events in {fold_s:.1f} s "
                f"= {live.applied / fold_s:,.0f} events/s; {cpu.per_event(live.applied)}"
            )

            # The fold's floor: reading and decoding the log alone, no fold, no store.
            cpu = Cpu(server.pid)
            started = time.perf_counter()
            reader, position, read = Projection(client, keys), None, 0
            while batch := await reader.read_log(position, 5_000, None):
                read, position = read + len(batch), batch[-1].id
            read_s = time.perf_counter() - started
            print(
                f"read and decode alone (no fold, no store): {read:,} events in {read_s:.1f} s "
                f"= {read / read_s:,.0f} events/s; {cpu.per_event(read)}"
            )

            cpu = Cpu(server.pid)
            started = time.perf_counter()
            checked = await verify_replay(client, keys)
            verify_s = time.perf_counter() - started
            print(
                f"replay --verify: fold {checked.events:,} events in {checked.seconds:.1f} s "
                f"= {checked.rate:,.0f} events/s; with the comparison {verify_s:.1f} s "
                f"({cpu.per_event(checked.events)}) = {checked.events / verify_s:,.0f} events/s end to end; "
                f"differences: {len(checked.differences)}"
            )
            # The comparison alone, CPU included (steadier than wall time on a shared machine):
            # what verify does after its fold, on the live projection twice.
            live = await live_keys(client, keys)
            wall, here, there = time.perf_counter(), time.process_time(), cpu_seconds(server.pid)
            found = compare(await snapshot(client, live), await snapshot(client, live))
            print(
                f"comparison alone (two snapshots of the projection, compared; {len(found)} differences): "
                f"{time.perf_counter() - wall:.2f} s wall, CPU {time.process_time() - here:.2f} s here "
                f"+ {cpu_seconds(server.pid) - there:.2f} s redis-server"
            )
            cpu = Cpu(server.pid)
            rebuilt = await rebuild(client, keys)
            print(
                f"replay --rebuild: {rebuilt.events:,} events in {rebuilt.seconds:.1f} s "
                f"= {rebuilt.rate:,.0f} events/s; {cpu.per_event(rebuilt.events)} (old projection deleted too)"
            )
            print(
                f"machine: {platform.processor() or platform.machine()}, "
                f"{len(__import__('os').sched_getaffinity(0))} cores; Redis {version}"
            )
            await client.aclose()
        finally:
            server.terminate()
            server.wait()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--redis-server", default=shutil.which("redis-server") or "redis-server")
    parser.add_argument("--smoke", action="store_true", help="400 events: checks that it runs")
    args = parser.parse_args()
    if args.smoke:
        args.events = 400
    asyncio.run(main(args.events, args.redis_server))
