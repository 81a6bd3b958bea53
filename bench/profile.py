"""Profile one Backstream worker under the throughput load with py-spy (from bench/.venv/backstream).

    python3 bench/profile.py [--kind noop|sma] [--tasks 10000] [--seconds 8] [--concurrency 8]
                             [--backstream-root DIR]
    .venv/bin/python bench/profile.py --smoke --out DIR   # 1 s, this interpreter: checks it runs (CI)

Writes bench/out/profile-<kind>.txt (py-spy's collapsed stacks, sampled only while a thread holds
the GIL, so the samples are where the worker's CPU goes, the engine's compute thread included) and
prints the share of samples per leaf area and per worker-level call. How long the worker waits is
what the samples do not cover (samples / (seconds x rate)).
"""

from __future__ import annotations

import argparse
import collections
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.procs import BENCH, REPO, RedisServer  # noqa: E402
from bench.run import environments  # noqa: E402
from bench.systems import Block, Env  # noqa: E402

# Frames that name where a worker's time goes (the first one found from the leaf up wins).
AREAS = [
    ("select (epoll_wait)", "waiting for Redis / idle"),
    ("_recv_into", "socket read"),
    ("sock_recv", "socket read"),
    ("sendall", "socket write"),
    ("sock_sendall", "socket write"),
    ("to_thread", "thread hop (asyncio.to_thread)"),
    ("run_in_executor", "thread hop (asyncio.to_thread)"),
    ("JSONRenderer", "logging (structlog JSON)"),
    ("_proxy_to_logger", "logging (structlog JSON)"),
    ("encode_json", "codec"),
    ("event_data", "codec"),
    ("decode_json", "codec"),
    ("read_response", "redis-py reply parsing"),
    ("pack_command", "redis-py command packing"),
    ("evalsha", "redis-py script call"),
    ("_run_once", "event loop"),
]
CALLS = [
    "next_items",
    "xreadgroup",
    "claim",
    "finish",
    "heartbeat",
    "_check_still_mine",
    "promote_due_retries",
    "reclaim_expired",
    "advance",
    "start_run",
    "bind_contextvars",
    "info",
    "_finished",
]


def summarise(collapsed: Path) -> str:
    areas: collections.Counter[str] = collections.Counter()
    calls: collections.Counter[str] = collections.Counter()
    total = 0
    for line in collapsed.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        n = int(count)
        total += n
        frames = stack.split(";")
        area = next((label for frame in reversed(frames) for key, label in AREAS if key in frame), "other Python")
        areas[area] += n
        seen = {c for c in CALLS for f in frames if f.startswith(f"{c} ") or f.startswith(f"{c}(")}
        for c in seen:
            calls[c] += n
    out = [f"{total} samples"]
    out += [f"  {100 * n / total:5.1f}%  {a}" for a, n in areas.most_common()]
    out += ["inclusive, by call:"] + [f"  {100 * n / total:5.1f}%  {c}" for c, n in calls.most_common()]
    return "\n".join(out)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--kind", default="noop", choices=["noop", "sma"])
    parser.add_argument("--tasks", type=int, default=None, help="default 10,000 (3,000 with --smoke)")
    parser.add_argument("--seconds", type=int, default=None, help="default 8 (1 with --smoke)")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--backstream-root", type=Path, default=REPO)
    parser.add_argument("--out", type=Path, default=BENCH / "out")
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="1 s of samples over 3,000 tasks (unless --seconds, --tasks), in this interpreter (needs py-spy)",
    )
    args = parser.parse_args()
    if args.smoke:  # enough load to outlast the 0.5 s before py-spy starts
        args.tasks, args.seconds = args.tasks or 3_000, args.seconds or 1
    args.tasks, args.seconds = args.tasks or 10_000, args.seconds or 8
    bs_python, peers_python = environments(args.backstream_root.resolve(), smoke=args.smoke)
    workdir = Path(tempfile.mkdtemp(prefix="backstream-profile-"))
    redis = RedisServer(workdir)
    env = Env(redis, workdir, bs_python, peers_python, args.backstream_root.resolve(), concurrency=args.concurrency)
    block = Block(env, "backstream", 1, args.kind)
    args.out.mkdir(parents=True, exist_ok=True)
    target = args.out / f"profile-{args.kind}.txt"
    try:
        block.start()
        worker = block.procs[-1]
        result: dict[str, object] = {}
        load = threading.Thread(target=lambda: result.update(block.run(args.tasks)))
        load.start()
        time.sleep(0.5)
        py_spy = str(Path(bs_python).parent / "py-spy")
        subprocess.run(
            [
                py_spy,
                "record",
                "--pid",
                str(worker.pid),
                "--duration",
                str(args.seconds),
                "--gil",
                "--rate",
                "250",
                "--format",
                "raw",
                "--output",
                str(target),
                "--nonblocking",
            ],
            check=True,
            capture_output=True,
        )
        load.join()
        print(f"load: {json.dumps(result)}")
    finally:
        block.stop()
        redis.stop()
    print(summarise(target))
    print(f"collapsed stacks: {target}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
