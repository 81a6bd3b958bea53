"""Processes of a benchmark run: a private redis-server on a free port, and worker processes."""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "bench"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_listening(port: int, timeout: float = 30.0) -> None:
    """Return once something accepts connections on 127.0.0.1:`port`; RuntimeError after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"nothing listens on port {port} after {timeout:.0f} s") from None
            time.sleep(0.05)


class Proc:
    """A child process in its own session (so its own children stop with it), output to a file."""

    def __init__(self, argv: list[str], *, env: dict[str, str], log: Path, cwd: Path = REPO) -> None:
        self.argv = argv
        self.log_path = log
        log.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(log, "ab")  # noqa: SIM115  # closed in stop()
        self.proc = subprocess.Popen(
            argv,
            env=env,
            cwd=cwd,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM the process group, then SIGKILL it if it has not exited by `timeout`."""
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.proc.wait(5)
        else:
            try:  # the leader exited; stragglers of its group (e.g. forked children) go too
                os.killpg(self.proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        self._log.close()


class RedisServer:
    """`redis-server --port P --save '' --appendonly no`, private to one benchmark run."""

    def __init__(self, workdir: Path) -> None:
        server = shutil.which("redis-server")
        if server is None:
            raise SystemExit("redis-server is not on PATH (apt-get install redis-server)")
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc = Proc(
            [
                server,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(workdir),
            ],
            env=dict(os.environ),
            log=workdir / "redis-server.log",
        )
        deadline = time.monotonic() + 10
        while self.cli("PING") != "PONG":
            if time.monotonic() > deadline or not self.proc.alive():
                raise SystemExit(f"redis-server did not start; see {workdir / 'redis-server.log'}")
            time.sleep(0.05)

    def cli(self, *args: Any) -> str:
        out = subprocess.run(
            ["redis-cli", "-p", str(self.port), *map(str, args)], capture_output=True, text=True, check=False
        )
        return out.stdout.strip()

    def info(self, section: str) -> dict[str, str]:
        fields = {}
        for line in self.cli("INFO", section).splitlines():
            if ":" in line:
                k, v = line.split(":", 1)
                fields[k] = v.strip()
        return fields

    def used_memory(self) -> int:
        return int(self.info("memory")["used_memory"])

    def version(self) -> str:
        return self.info("server")["redis_version"]

    def flush(self) -> None:
        self.cli("FLUSHALL", "SYNC")

    def stop(self) -> None:
        self.cli("SHUTDOWN", "NOSAVE")
        self.proc.stop(timeout=5)


class WorkerLogs:
    """Follows the workers' JSON logs: every line that names a task, as (time, event) by task id."""

    def __init__(self, paths: list[Path] | list[str]) -> None:
        self.offsets = {Path(p): Path(p).stat().st_size if Path(p).exists() else 0 for p in paths}
        self.lines: dict[str, list[tuple[float, str]]] = {}

    def poll(self) -> None:
        for path, offset in self.offsets.items():
            with open(path, "rb") as f:
                f.seek(offset)
                chunk = f.read()
            end = chunk.rfind(b"\n") + 1
            self.offsets[path] = offset + end
            for line in chunk[:end].splitlines():
                if b'"task_id"' not in line:
                    continue
                try:
                    rec = json.loads(line)
                except ValueError:
                    continue
                ts = dt.datetime.fromisoformat(rec["timestamp"].replace("Z", "+00:00")).timestamp()
                self.lines.setdefault(rec["task_id"], []).append((ts, rec.get("event", "")))


def entry_ms(entry_id: bytes) -> int:
    """A stream entry id's time: the milliseconds before its `-`."""
    return int(entry_id.split(b"-", 1)[0])


def percentile(values: list[float], q: float) -> float | None:
    """The `q` quantile (0..1) of `values` by nearest rank; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]
