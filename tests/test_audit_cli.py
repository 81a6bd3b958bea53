"""The audit and replay commands, run as a user runs them, against real Redis."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Backend
from tests.harness import System

pytestmark = pytest.mark.redis

SHORT: dict[str, Any] = {"strategy": "sma_cross", "symbol": "GOOG", "params": {"fast": 10, "slow": 20}}


def backstream(backend: Backend, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "REDIS_URL": backend.url or "", "BACKSTREAM_PREFIX": backend.keys.prefix}
    return subprocess.run(
        [sys.executable, "-m", "orchestrator.cli", *args], env=env, capture_output=True, text=True, timeout=120
    )


async def test_audit_matches_the_api_and_replay_verify_finds_a_difference(
    real_backend: Backend, tmp_path: Path
) -> None:
    backend = real_backend
    system = System(backend)
    async with system.client() as http:
        ids = [(await http.post("/api/backtests", json=SHORT)).json()["task_id"] for _ in range(3)]
        await http.delete(f"/api/backtests/tasks/{ids[2]}")
        await system.run_workers()
        api_events = (await http.get(f"/api/backtests/tasks/{ids[0]}/events")).json()["events"]

    audit = backstream(backend, "audit", ids[0], "--json")
    assert audit.returncode == 0, audit.stderr
    assert [json.loads(line) for line in audit.stdout.splitlines()] == api_events
    readable = backstream(backend, "audit", ids[0])
    assert [line.split()[1] for line in readable.stdout.splitlines()] == ["submitted", "started", "completed"]
    then = backstream(backend, "audit", ids[0], "--as-of", api_events[1]["id"])
    assert json.loads(then.stdout)["status"] == "running"

    verified = backstream(backend, "replay", "--verify")
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert "0 differences" in verified.stdout

    # Someone edits the projection behind the projector's back: verify says where, and fails.
    await backend.redis.hset(backend.keys.projected_task(ids[1]), "status", b'"failed"')
    broken = backstream(backend, "replay", "--verify")
    assert broken.returncode == 1
    assert f'DIFF task:{ids[1]} status: live="failed" replayed="completed"' in broken.stdout

    # A rebuild replaces the damaged projection; verify is clean again.
    rebuilt = backstream(backend, "replay", "--rebuild")
    assert rebuilt.returncode == 0 and "it is live now" in rebuilt.stdout
    assert backstream(backend, "replay", "--verify").returncode == 0

    archive = tmp_path / "log.ndjson.gz"
    exported = backstream(backend, "export", str(archive))
    assert exported.returncode == 0 and f"exported {await backend.redis.xlen(backend.keys.events)} events" in (
        exported.stdout
    )
    dry = backstream(backend, "retention", "--horizon", "0s", "--dry-run")
    assert json.loads(dry.stdout)["events_trimmed"] == await backend.redis.xlen(backend.keys.events)
