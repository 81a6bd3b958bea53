"""Backstream against RQ, arq, Celery, Dramatiq, SAQ and taskiq, side by side on one private Redis.

    python3 bench/run.py            # full run (see bench/README.md for what it does and how long)
    python3 bench/run.py --quick    # a short run: 1,000 tasks, 1 repetition, fewer cancels
    .venv/bin/python bench/run.py --smoke --out DIR   # Backstream only, tiny: checks that it runs (CI)

Needs only a Python 3.11+ and redis-server/redis-cli/redis-benchmark on PATH; it creates its two
environments under bench/.venv on first use. Writes bench/out/results.json and bench/out/results.md.
`--smoke` creates no environment: it runs Backstream's side in the interpreter that runs it (which
needs the test extras: aiohttp is the load client) and no peer (their environment pins redis-py
5.3, which cannot share an environment with Backstream's redis-py 8).
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.procs import BENCH, REPO, Proc, RedisServer, free_port, wait_listening  # noqa: E402
from bench.report import WORK_ALONE, render  # noqa: E402
from bench.systems import BS_PREFIX, PEERS, Block, Env, call  # noqa: E402

VENV = BENCH / ".venv"
PEER_VERSIONS = ["rq", "arq", "celery", "kombu", "dramatiq", "saq", "taskiq", "taskiq-redis", "redis", "hiredis"]
BS_VERSIONS = ["redis", "starlette", "uvicorn", "msgspec", "structlog", "numpy", "aiohttp"]


# --- environments ----------------------------------------------------------------------------


def _venv(name: str, requirements: list[str]) -> str:
    """bench/.venv/<name> with `requirements`, re-created when they change."""
    path = VENV / name
    python = path / "bin" / "python"
    digest = hashlib.sha256("\n".join(requirements).encode()).hexdigest()
    marker = path / ".bench-requirements"
    if python.exists() and marker.exists() and marker.read_text() == digest:
        return str(python)
    print(f"[bench] creating {path} ({len(requirements)} requirements)", flush=True)
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(path)], check=True)
    subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", *requirements], check=True
    )
    marker.write_text(digest)
    return str(python)


def _requirements(path: Path) -> list[str]:
    return [line.split("#")[0].strip() for line in path.read_text().splitlines() if line.split("#")[0].strip()]


def environments(bs_root: Path, *, smoke: bool = False) -> tuple[str, str]:
    """The interpreters of Backstream's side and of the peers' side. `smoke`: this interpreter for
    Backstream and none for the peers (no environment is created)."""
    if smoke:
        return sys.executable, ""
    deps = tomllib.loads((bs_root / "pyproject.toml").read_text())["project"]["dependencies"]
    bs = _venv("backstream", [*deps, *_requirements(BENCH / "requirements-backstream.txt")])
    peers = _venv("peers", _requirements(BENCH / "requirements.txt"))
    return bs, peers


def versions(python: str, names: list[str]) -> dict[str, str]:
    code = (
        "import importlib.metadata as m, json, sys; out = {}\n"
        "for n in sys.argv[1:]:\n"
        "    try: out[n] = m.version(n)\n"
        "    except m.PackageNotFoundError: out[n] = 'not installed'\n"
        "print(json.dumps(out))"
    )
    return dict(
        json.loads(subprocess.run([python, "-c", code, *names], capture_output=True, text=True, check=True).stdout)
    )


def _git_head(root: Path) -> str:
    out = subprocess.run(
        ["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
    )
    dirty = subprocess.run(
        ["git", "-C", str(root), "status", "--porcelain", "--", "orchestrator", "consumers", "api"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    return (out.stdout.strip() or "unknown") + (" + uncommitted changes" if dirty else "")


# --- scenarios ---------------------------------------------------------------------------------


def _median(values: list[float]) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def _summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    ok = [r for r in runs if "error" not in r]
    out: dict[str, Any] = {"reps": len(ok), "runs": runs}
    if not ok:
        out["error"] = runs[0].get("error") if runs else "no runs"
        return out
    for key in (
        "tasks_per_s",
        "p50_ms",
        "p99_ms",
        "events_per_s",
        "events_per_task",
        "mem_per_task",
        "submit_per_s",
        "projection_lag_ms",
        "tasks",
        "errors",
        "commands_per_task",
    ):
        values = [r[key] for r in ok if r.get(key) is not None]
        if values:
            out[key] = statistics.median(values)
    return out


def scenario_throughput(env: Env, args: argparse.Namespace) -> dict[str, Any]:
    """Per (system, workers, kind) block: fresh Redis contents, workers started and warmed up,
    then `reps` timed runs of `tasks` tasks; used_memory measured around each run."""
    results: dict[str, Any] = {}
    systems = ["backstream", *PEERS] if args.systems == "all" else args.systems.split(",")
    for workers in args.workers:
        for kind in ("noop", "sma"):
            for system in systems:
                labels = ["backstream", "backstream_http"] if system == "backstream" else [system]
                n = args.tasks if system != "rq" else min(args.tasks, args.rq_fork_tasks)
                env.redis.flush()
                block = Block(env, system, workers, kind, http=system == "backstream")
                t0 = time.monotonic()
                try:
                    block.start()
                except Exception as e:  # report and go on with the other systems
                    print(f"[bench] {system} {workers}w {kind}: could not start: {e}", flush=True)
                    for label in labels:
                        results[f"{label}|{workers}|{kind}"] = {"error": str(e)[:300]}
                    block.stop()
                    continue
                runs: dict[str, list[dict[str, Any]]] = {label: [] for label in labels}
                done_before = 0
                for _ in range(args.reps):
                    for label in labels:
                        mem0 = env.redis.used_memory()
                        cmds0 = int(env.redis.info("stats")["total_commands_processed"])
                        res = block.run(n, via="http" if label.endswith("_http") else "client")
                        time.sleep(0.3)  # let results, acks and the projection land before measuring
                        if "error" not in res:
                            res["mem_per_task"] = (env.redis.used_memory() - mem0) / n
                            cmds = int(env.redis.info("stats")["total_commands_processed"]) - cmds0
                            res["commands_per_task"] = cmds / n
                            done_before += n
                        runs[label].append(res)
                        print(f"[bench] {label:16} {workers}w {kind:4} {_brief(res)}", flush=True)
                census = None
                if workers == max(args.workers):
                    census = call(
                        env.bs_python,
                        "bench.bs_driver",
                        "memory_census",
                        json.dumps({"redis_url": env.redis.url}),
                        env=env.base_env(),
                    )
                    census = {"families": census, "tasks_in_redis": done_before + 50 * workers}
                block.stop()
                for label in labels:
                    results[f"{label}|{workers}|{kind}"] = {
                        **_summarise(runs[label]),
                        "census": census,
                        "tasks_per_run": n,
                        "block_seconds": time.monotonic() - t0,
                    }
            if kind == "sma":
                # The bound under every system: the same work in as many plain processes, no system.
                per_process = str(max(1, args.tasks // workers))
                bounds = [
                    call(env.bs_python, "bench.bounds", "work", kind, per_process, str(workers), env=env.base_env())
                    for _ in range(args.reps)
                ]
                results[f"{WORK_ALONE}|{workers}|{kind}"] = _summarise(bounds)
                alone = results[f"{WORK_ALONE}|{workers}|{kind}"]
                print(
                    f"[bench] {WORK_ALONE:16} {workers}w {kind:4} {alone.get('tasks_per_s', alone)} tasks/s", flush=True
                )
    return results


def _brief(res: dict[str, Any]) -> str:
    if "error" in res:
        return f"ERROR {res['error'][:200]}"
    return (
        f"{res['tasks_per_s']:8.0f} tasks/s  p50 {res['p50_ms']:7.1f} ms  p99 {res['p99_ms']:7.1f} ms  "
        f"mem {res.get('mem_per_task', 0):7.0f} B/task  errors {res.get('errors', 0)}"
    )


def scenario_http(env: Env, args: argparse.Namespace) -> dict[str, Any]:
    """POST /api/backtests against a bare Starlette+XADD endpoint, alternating, no workers running."""
    env.redis.flush()
    base = env.base_env()
    logdir = env.workdir / "logs" / "http"
    api_port, floor_port = free_port(), free_port()
    procs = [
        Proc(
            [env.bs_python, "-m", "orchestrator.cli", "--log-json", "api", "--port", str(api_port)],
            env=base,
            log=logdir / "api.log",
            cwd=env.bs_root,
        ),
        Proc(
            [env.bs_python, "-m", "bench.floor_app", "--port", str(floor_port)],
            env=base,
            log=logdir / "floor.log",
            cwd=env.bs_root,
        ),
    ]
    out: dict[str, Any] = {}
    try:
        for port in (api_port, floor_port):
            wait_listening(port)
        for concurrency, n in ((1, args.http_requests // 4), (32, args.http_requests)):
            rows: dict[str, list[dict[str, Any]]] = {"backstream": [], "floor": []}
            for _ in range(args.reps):
                for name, port in (("backstream", api_port), ("floor", floor_port)):
                    res = call(
                        env.bs_python,
                        "bench.bs_driver",
                        "http_latency",
                        json.dumps({"url": f"http://127.0.0.1:{port}", "n": n, "concurrency": concurrency}),
                        env=base,
                        cwd=env.bs_root,
                    )
                    rows[name].append(res)
                    print(f"[bench] http {name:10} c={concurrency:2} {res}", flush=True)
            for name, runs in rows.items():
                ok = [r for r in runs if "error" not in r]
                out[f"{name}|{concurrency}"] = {
                    "requests": n,
                    "reps": len(ok),
                    "runs": runs,
                    "p50_ms": _median([r["p50_ms"] for r in ok]),
                    "p99_ms": _median([r["p99_ms"] for r in ok]),
                    "requests_per_s": _median([r["requests_per_s"] for r in ok]),
                    "errors": sum(r["errors"] for r in ok),
                    **({"error": runs[0]["error"]} if not ok else {}),
                }
    finally:
        for p in procs:
            p.stop()
    return out


CANCELLING_PEERS = ["rq", "celery"]  # see bench/peers/cancel.py for why only these


def scenario_cancel(env: Env, args: argparse.Namespace) -> dict[str, Any]:
    """Cancel running long backtests over HTTP: 2 real workers (JSON logs), one cancel per worker at a time."""
    env.redis.flush()
    block = Block(env, "backstream", 2, "long", http=True)
    block.start()  # warms up with short tasks
    try:
        logs = [str(block.logdir / f"worker{i}.log") for i in range(2)]
        res = call(
            env.bs_python,
            "bench.bs_driver",
            "cancel_latency",
            json.dumps(
                {
                    "redis_url": env.redis.url,
                    "prefix": BS_PREFIX,
                    "api_url": block.api_url,
                    "worker_logs": logs,
                    "n": args.cancels,
                    "parallel": 2,
                }
            ),
            env=env.base_env(),
            cwd=env.bs_root,
        )
    finally:
        block.stop()
    print(f"[bench] cancel backstream {res}", flush=True)
    out = {"backstream": res}
    # The peers that can stop a job while it computes; same 2 workers, same long job.
    chosen = CANCELLING_PEERS if args.systems == "all" else args.systems.split(",")
    systems = [s for s in chosen if s in CANCELLING_PEERS]
    for system in systems:
        label = "celery_prefork" if system == "celery" else system
        env.redis.flush()
        block = Block(env, label, 2, "sma")  # warmed up with short jobs
        try:
            block.start()
            stamps = str(env.workdir / "stamps")
            res = call(
                env.peers_python,
                "bench.peers.cancel",
                json.dumps({"system": system, "n": args.cancels, "stamp_dir": stamps, "parallel": 2}),
                env=env.base_env(),
                cwd=env.bs_root,
            )
        except Exception as e:  # report and go on
            res = {"error": str(e)[:300]}
        finally:
            block.stop()
        print(f"[bench] cancel {label} {res}", flush=True)
        out[label] = res
    return out


# The fields of a Backstream `submitted` event as the log stores them (sizes as in the bench spec).
EVENT_SIZED_FIELDS = [
    *("type", "submitted", "v", "1", "task_id", "0b9f6f1e-5a4c-4c55-9b1e-6f2d8a7c3e10"),
    *("seq", "1", "attempt", "1", "data", "x" * 123),
]


def scenario_ceiling(env: Env, args: argparse.Namespace) -> dict[str, Any]:
    """redis-benchmark's XADD rate on the same server, 50 clients, without and with pipelining (16);
    also with entries the size of Backstream's events, and one Python producer's append rate."""
    out: dict[str, Any] = {}
    for name, pipeline, fields in (
        ("xadd_P1", 1, ["f", "v"]),
        ("xadd_P16", 16, ["f", "v"]),
        ("xadd_P16_event_sized", 16, EVENT_SIZED_FIELDS),
    ):
        env.redis.flush()
        n = args.ceiling_requests * (4 if pipeline > 1 else 1)
        port = str(env.redis.port)
        proc = subprocess.run(
            ["redis-benchmark", "-p", port, "-c", "50", "-n", str(n), "-P", str(pipeline), "-q"]
            + ["XADD", "bench:ceiling", "*", *fields],
            capture_output=True,
            text=True,
            check=False,
        )
        found = re.findall(r"([\d.]+) requests per second", proc.stdout)
        out[name] = float(found[-1]) if found else None
        print(f"[bench] redis-benchmark {name}: {out[name]}/s", flush=True)
    env.redis.flush()
    events, per_call = str(args.producer_events), str(min(1000, args.producer_events))
    producer = call(env.bs_python, "bench.bounds", "append", env.redis.url, events, per_call, env=env.base_env())
    out["python_producer"] = producer
    print(f"[bench] one Python producer: {producer}", flush=True)
    env.redis.flush()
    return out


# --- main --------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="1,000 tasks, 1 repetition, 40 cancels")
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="Backstream only, in this interpreter, 20 tasks, 1 repetition, 2 cancels: checks that it runs",
    )
    parser.add_argument(
        "--tasks", type=int, default=3_000, help="tasks per timed run (the issue's full size is 10,000: ~40 min here)"
    )
    parser.add_argument(
        "--rq-fork-tasks",
        type=int,
        default=2_000,
        help="tasks per run for RQ's forking worker (a fork per job: ~100-200 jobs/s)",
    )
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--workers", default="1,2", help="worker process counts")
    parser.add_argument(
        "--concurrency",
        type=int,
        default=8,
        help="tasks in flight per worker process, for every system that has the setting (not RQ)",
    )
    parser.add_argument("--systems", default="all", help="comma list: backstream," + ",".join(PEERS))
    parser.add_argument("--scenarios", default="throughput,http,cancel,ceiling")
    parser.add_argument("--http-requests", type=int, default=4_000)
    parser.add_argument("--cancels", type=int, default=None, help="default 300 (40 --quick, 2 --smoke)")
    parser.add_argument("--ceiling-requests", type=int, default=200_000)
    parser.add_argument("--producer-events", type=int, default=200_000, help="events one Python producer appends")
    parser.add_argument(
        "--backstream-root",
        type=Path,
        default=REPO,
        help="the Backstream source tree to benchmark (default: this checkout)",
    )
    parser.add_argument("--out", type=Path, default=BENCH / "out")
    args = parser.parse_args()
    if args.quick:
        args.tasks, args.reps, args.http_requests = 1_000, 1, 1_000
        args.cancels = args.cancels or 40
        args.rq_fork_tasks, args.ceiling_requests = 500, 100_000
    if args.smoke:
        if args.systems not in ("all", "backstream"):
            raise SystemExit("--smoke runs Backstream only (the peers need their own environment)")
        args.tasks, args.reps, args.http_requests, args.systems = 20, 1, 40, "backstream"
        args.cancels = args.cancels or 2
        args.workers, args.ceiling_requests, args.producer_events = "1", 2_000, 2_000
    args.cancels = args.cancels or 300
    args.workers = [int(w) for w in str(args.workers).split(",")]
    for tool in ("redis-server", "redis-cli", "redis-benchmark"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is not on PATH (Debian: apt-get install redis-server redis-tools)")
    bs_root = args.backstream_root.resolve()
    bs_python, peers_python = environments(bs_root, smoke=args.smoke)
    started = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="backstream-bench-"))
    redis = RedisServer(workdir)
    env = Env(redis, workdir, bs_python, peers_python, bs_root, concurrency=args.concurrency)
    meta = {
        "command": " ".join(["python3", "bench/run.py", *sys.argv[1:]]),
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": {
            "cores": os.cpu_count(),
            "cpu": _cpu_model(),
            "os": platform.platform(),
            "python": platform.python_version(),
            "redis": redis.version(),
            "redis_flags": "--save '' --appendonly no (private server, loopback)",
        },
        "backstream": {"commit": _git_head(bs_root), "versions": versions(bs_python, BS_VERSIONS)},
        "peers": versions(peers_python, PEER_VERSIONS) if peers_python else {},
        "settings": {
            "tasks": args.tasks,
            "rq_fork_tasks": args.rq_fork_tasks,
            "reps": args.reps,
            "workers": args.workers,
            "concurrency": args.concurrency,
            "cancels": args.cancels,
            "http_requests": args.http_requests,
        },
    }
    results: dict[str, Any] = {"meta": meta}
    scenarios = {
        "throughput": scenario_throughput,
        "http": scenario_http,
        "cancel": scenario_cancel,
        "ceiling": scenario_ceiling,
    }
    try:
        for name in args.scenarios.split(","):
            try:
                results[name] = scenarios[name](env, args)
            except Exception as e:  # one broken scenario must not lose the others' results
                print(f"[bench] scenario {name} failed: {e!r}", flush=True)
                results[name] = {"error": repr(e)[:500]}
    finally:
        redis.stop()
    meta["seconds"] = round(time.monotonic() - started)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=1, default=str))
    markdown = render(results)
    (args.out / "results.md").write_text(markdown)
    print(markdown)
    print(f"[bench] wrote {args.out / 'results.md'} and results.json; logs in {workdir}")
    return 0


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


if __name__ == "__main__":
    raise SystemExit(main())
