"""What every peer's job does: call the shared work function, then append one completion stamp
(`<run> <i> <unix time>`) to a per-process file. No Redis write is added to any peer."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from bench.work import long_work, noop, sma_work

REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/15")
QUEUE = "bench"
# Tasks in flight per worker process, the same for every system that has such a setting.
CONCURRENCY = int(os.environ.get("BENCH_CONCURRENCY", "1"))
_fd: dict[int, int] = {}


def _stamp(run: str, i: int) -> None:
    # One file per worker: every worker starts in its own session, which its forked children
    # (RQ's work horses, Celery's pool processes) share. A file per process would leave tens of
    # thousands of files behind RQ's fork per job, for every later driver to scan.
    pid = os.getpid()
    fd = _fd.get(pid)
    if fd is None:
        path = Path(os.environ.get("BENCH_STAMP_DIR", "/tmp")) / f"{os.getsid(0)}.stamps"
        fd = _fd[pid] = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.write(fd, f"{run} {i} {time.time():.6f}\n".encode())


def do_job(kind: str, run: str, i: int) -> Any:
    """The body of every peer's job: the same work Backstream's worker runs. A long job also
    stamps its start (run `<run>.start`), so the cancel scenario knows it is computing."""
    if kind == "noop":
        result = noop()
    elif kind == "sma":
        result = sma_work()
    else:
        _stamp(f"{run}.start", i)
        result = long_work()
    _stamp(run, i)
    return result


def read_stamps(stamp_dir: Path, offsets: dict[Path, int], run: str, into: dict[int, float]) -> None:
    """Add the new stamps of `run` (from every file in `stamp_dir`, after `offsets`) to `into`."""
    prefix = f"{run} ".encode()
    for path in stamp_dir.glob("*.stamps"):
        offset = offsets.get(path, 0)
        with open(path, "rb") as f:
            f.seek(offset)
            chunk = f.read()
        end = chunk.rfind(b"\n") + 1
        offsets[path] = offset + end
        for line in chunk[:end].splitlines():
            if line.startswith(prefix):
                _, i, t = line.split()
                into[int(i)] = float(t)
