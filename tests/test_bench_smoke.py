"""The benchmark's Backstream throughput scenario, small, so the harness keeps working. It checks
that every task completed and was projected; it asserts nothing about speed."""

from __future__ import annotations

import pytest
import redis

from bench.smoke import run_smoke
from orchestrator.keys import WORKER_GROUP, Keys

pytestmark = pytest.mark.redis


def test_benchmark_smoke_run(real_url: str, real_prefix: str) -> None:
    numbers = run_smoke(real_url, real_prefix, tasks=300)
    assert numbers["tasks"] == 300 and numbers["errors"] == 0, numbers
    client = redis.Redis.from_url(real_url)
    keys = Keys(prefix=real_prefix)
    try:
        assert client.zcard(keys.projected_index("completed")) == 300
        assert client.xlen(keys.events) == numbers["events"] >= 900  # submitted, started, completed each
        assert client.xpending(keys.work, WORKER_GROUP)["pending"] == 0
    finally:
        client.close()
