"""Every benchmark script, run as a user runs it at a tiny size, so that a change to the code
cannot break one unnoticed (engine_bench.py crashed for a while: `len()` of what had become a
generator). They assert that each runs to the end and that its numbers are complete and
consistent; nothing about speed.

What runs where:
- `run.py --smoke` drives Backstream's side of every scenario (throughput through the client and
  HTTP with the real and the no-op worker, HTTP latency against `floor_app.py`, cancels, the
  Redis ceiling, the bounds, the key census, the report) in this interpreter. The peers are not
  run: their environment pins redis-py 5.3 (it cannot share one with Backstream's redis-py 8) and
  would be built on every CI run (24 s here) before seven systems start and warm up, for code
  pinned to fixed versions. What they share with Backstream's code is `bench/work.py`, which the
  bounds run here.
- `cpu_share.py --smoke` and `profile.py --smoke` measure Backstream in this interpreter (the test
  extras have aiohttp, the load client, and py-spy).
- `engine_bench.py --smoke`, `sweep_bench.py --smoke` and `replay_bench.py --smoke` run their own
  code on a 2 x 2 grid and on 400 events (`sweep_bench.py`'s vectorbt and old-tree sides need a
  separate venv and checkout, so they are left out here).
- `cluster_bench.py --smoke` runs 60 tasks on a standalone server and on three cluster masters.
- `encode_bench.py --smoke` writes a small job chunk's and a backtest's result with each option set.
- `job_bench.py --smoke` runs a 2-symbol x 100-combination universe job on 1 and 2 workers and a
  ~2 s grid with its worker killed at 90%, three ways (a job, one task, one task checkpointed), on
  the shared Redis under prefixes of its own; not Celery and Dask (the peers' environment).
- `job_cancel_bench.py --smoke` cancels a ~40-chunk job three times on 2 workers, and once more
  with the workers stopped.
Each script but job_bench.py starts its own private redis-server (so redis-server and redis-benchmark must be on
PATH, as CI's .ci/run makes sure); the first test uses the shared Redis with its own prefix.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import redis

from bench.procs import REPO
from bench.smoke import run_smoke
from orchestrator.storage.keys import WORKER_GROUP, Keys

pytestmark = pytest.mark.redis


def bench_script(script: str, *args: str, tmp_path: Path, timeout: float = 180) -> str:
    """Run bench/`script` with this interpreter and this checkout first on the path; its stdout.
    Temporary files (process logs) go under `tmp_path`."""
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
        TMPDIR=str(tmp_path),
    )
    done = subprocess.run(
        [sys.executable, str(REPO / "bench" / script), *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert done.returncode == 0, f"{script} exited {done.returncode}:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}"
    return done.stdout


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


def test_engine_bench_runs(tmp_path: Path) -> None:
    out = bench_script("engine_bench.py", "--smoke", tmp_path=tmp_path)
    # The script itself first checks that the engine and backtesting.py give the same final equity.
    assert re.search(r"^single SMA\(10,20\) run: engine +[\d.]+ ms +Backtest\.run\(\) +[\d.]+ ms", out, re.M), out
    # fast 5, 10 x slow 60, 70: all four pass `fast < slow`.
    assert re.search(r"^4-combination sweep: +engine +[\d.]+ ms +optimize\(\) serial", out, re.M), out


def test_replay_bench_runs(tmp_path: Path) -> None:
    out = bench_script("replay_bench.py", "--smoke", tmp_path=tmp_path)
    assert "live projector (batch 5000): 400 events" in out, out
    assert re.search(r"^replay --verify: fold 400 events .* end to end; differences: 0$", out, re.M), out
    assert re.search(r"^comparison alone \(.*; 0 differences\): [\d.]+ s wall, CPU", out, re.M), out
    assert "replay --rebuild: 400 events" in out, out


def test_run_py_runs_every_scenario_for_backstream(tmp_path: Path) -> None:
    bench_script("run.py", "--smoke", "--out", str(tmp_path / "out"), tmp_path=tmp_path)
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    throughput = results["throughput"]
    for label in ("backstream", "backstream_http"):
        for kind in ("noop", "sma"):
            run = throughput[f"{label}|1|{kind}"]
            assert run.get("error") is None and run["reps"] == 1, run
            assert run["tasks"] == 20 and run["errors"] == 0 and run["tasks_per_s"] > 0, run
    assert throughput["work_alone|1|sma"]["tasks_per_s"] > 0
    census = throughput["backstream|1|sma"]["census"]["families"]
    assert census and "error" not in census, census
    for endpoint in ("backstream", "floor"):
        for concurrency, requests in ((1, 10), (32, 40)):
            http = results["http"][f"{endpoint}|{concurrency}"]
            assert (http["requests"], http["reps"], http["errors"]) == (requests, 1, 0), http
    cancel = results["cancel"]["backstream"]
    assert (cancel["cancels"], cancel["problem_count"], cancel["events_after_cancel"]) == (2, 0, 0), cancel
    ceiling = results["ceiling"]
    assert all(ceiling[name] for name in ("xadd_P1", "xadd_P16", "xadd_P16_event_sized")), ceiling
    assert ceiling["python_producer"]["lua_append_per_s"] > 0, ceiling
    assert "Backstream" in (tmp_path / "out" / "results.md").read_text()


def test_cpu_share_runs(tmp_path: Path) -> None:
    out = bench_script("cpu_share.py", "--smoke", tmp_path=tmp_path)
    assert re.search(r"^backstream noop: [\d,]+ tasks/s, 20 tasks in", out, re.M), out
    assert re.search(r"us/task +all \([\d.]+ cores busy\)$", out, re.M), out
    assert re.search(r"calls/task +evalsha$", out, re.M), out


def test_profile_runs(tmp_path: Path) -> None:
    out = bench_script("profile.py", "--smoke", "--out", str(tmp_path), tmp_path=tmp_path)
    load = json.loads(re.search(r"^load: (\{.*\})$", out, re.M).group(1))  # type: ignore[union-attr]
    assert load["tasks"] == 3_000 and load["errors"] == 0, load
    assert re.search(r"^\d+ samples$", out, re.M), out
    assert (tmp_path / "profile-noop.txt").exists()


def test_sweep_bench_smoke(tmp_path: Path) -> None:
    out = bench_script("sweep_bench.py", "--smoke", tmp_path=tmp_path)
    runs = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert [r["concurrency"] for r in runs] == [1, 2]
    assert all(r["tasks"] == 2 and r["combinations_per_s"] > 0 and r["worker_cpu_ms_per_task"] >= 0 for r in runs)
    assert "| tree | concurrency | combinations/s | worker CPU ms/task |" in out


def test_encode_bench_runs(tmp_path: Path) -> None:
    out = bench_script("encode_bench.py", "--smoke", tmp_path=tmp_path)
    rows = re.findall(r"^\| (a job's chunk \(\d+ rows\)|a single backtest) \| [^|]+ \| [\d.]+ \| [\d,]+ \|$", out, re.M)
    assert len(rows) == 8, out


def test_sweep_engine_bench_runs(tmp_path: Path) -> None:
    # The first sweep in a fresh checkout compiles the kernel (~5 s; numba caches it beside the module).
    out = bench_script("sweep_engine_bench.py", "--smoke", tmp_path=tmp_path)
    assert re.search(r"^engine \(this tree\) +4 combinations +[\d.]+ s +[\d,]+ combinations/s", out, re.M), out
    assert re.search(r"^backtesting\.py optimize\(\) +2 combinations", out, re.M), out


# The cluster's partitions in the cluster benchmark's smoke run: the cluster default.
CLUSTER_BENCH_PARTITIONS = 16


def test_cluster_bench_runs(tmp_path: Path) -> None:
    """A standalone server, then three cluster masters: every task ran and was projected on each,
    and each shard's numbers add up (its tasks to the partitions it holds, commands to the whole)."""
    out = bench_script("cluster_bench.py", "--smoke", "--partitions", str(CLUSTER_BENCH_PARTITIONS), tmp_path=tmp_path)
    standalone, cluster = json.loads(re.search(r"^RESULT (\[.*\])$", out, re.M).group(1))  # type: ignore[union-attr]
    assert (standalone["setup"], standalone["partitions"]) == ("standalone", 1)
    assert (cluster["setup"], cluster["partitions"]) == ("cluster", CLUSTER_BENCH_PARTITIONS)
    for setup, shards in ((standalone, 1), (cluster, 3)):
        assert setup["tasks"] == 60 and setup["tasks_per_s"] > 0 and setup["redis_cpu_us_per_task"] > 0, setup
        assert len(setup["shards"]) == shards
        assert sum(s["partitions"] for s in setup["shards"]) == setup["partitions"]
        assert sum(s["tasks"] for s in setup["shards"]) == 60
        assert all((s["tasks"] > 0) == (s["cpu_us_per_task_held"] is not None) for s in setup["shards"])
        assert all(s["idle_cpu_share"] >= 0 and s["idle_commands_per_s"] > 0 for s in setup["shards"])
        assert abs(sum(s["command_share"] for s in setup["shards"]) - 1) < 0.01


def test_job_bench_runs(tmp_path: Path) -> None:
    """The universe job gives the engine's best on 1 and 2 workers; each of the three runs with a
    worker killed at 90% completes with the uninterrupted run's best."""
    out = bench_script("job_bench.py", "--smoke", "--json", str(tmp_path / "jobs.json"), tmp_path=tmp_path)
    results = json.loads((tmp_path / "jobs.json").read_text())
    alone = results["engine_alone"]
    assert alone["combinations"] == 200 and alone["per_s"] > 0, alone
    for workers in ("1", "2"):
        job = results["jobs"][workers]
        assert job["chunks"] == 2 and job["seconds"] > 0 and job["best"] == alone["best"], job
    assert results["peers"] == {}
    loss = results["loss"]
    assert [r["chunks"] > 1 for r in loss] == [True, False, False], loss
    assert all(r["killed_at"] >= 0.9 and r["killed_s"] > 0 and r["same_best"] for r in loss), loss
    assert re.search(r"^\| Backstream job, 2 worker processes \| [\d.]+ \|", out, re.M), out
    assert re.search(r"^\| one task, no checkpoint \(restarts from zero\) \| - \|", out, re.M), out


def test_job_cancel_bench_runs(tmp_path: Path) -> None:
    """Each cancel of a fanned-out job reaches every chunk, and nothing is appended after it."""
    bench_script("job_cancel_bench.py", "--smoke", "--json", str(tmp_path / "cancel.json"), tmp_path=tmp_path)
    results = json.loads((tmp_path / "cancel.json").read_text())
    main, quiet = results["summary"], results["quiet"]
    assert (main["cancels"], quiet["cancels"]) == (3, 1), results
    assert main["chunks"] > 20 and all(n > 0 for n in main["cancelled_chunks"]), main
    for summary in (main, quiet):
        assert (summary["events_after_cancel"], summary["chunks_not_ended"]) == (0, 0), summary
        assert summary["cancel_returned"]["n"] == summary["cancels"], summary
    assert quiet["commands"]["evalsha"]["calls"] >= 1, quiet
