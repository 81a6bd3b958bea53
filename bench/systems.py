"""How each system's processes are started for a block of runs, and how one run is driven."""

from __future__ import annotations

import json
import os
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.procs import REPO, Proc, RedisServer, free_port

BS_PREFIX = "{bench}"
PEERS = ["rq", "rq_simple", "arq", "celery", "dramatiq", "saq", "taskiq"]
# Peer label -> (module, worker variant).
PEER_MODULES = {
    "rq": ("rq", "fork"),
    "rq_simple": ("rq", "simple"),
    "arq": ("arq", ""),
    "celery": ("celery", ""),
    "celery_prefork": ("celery", "prefork"),
    "dramatiq": ("dramatiq", ""),
    "saq": ("saq", ""),
    "taskiq": ("taskiq", ""),
}


@dataclass
class Env:
    redis: RedisServer
    workdir: Path
    bs_python: str
    peers_python: str
    bs_root: Path = REPO  # the Backstream source tree to run (the checkout, or an exported commit)
    concurrency: int = 1  # tasks in flight per worker process, for every system that has the setting

    def base_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
        env.update(
            PYTHONPATH=str(REPO),
            REDIS_URL=self.redis.url,
            BACKSTREAM_PREFIX=BS_PREFIX,
            # The run's own home: results land in its `results/`, never in the user's data directory.
            BACKSTREAM_HOME=str(self.workdir / "home"),
            # Every request runs as one task, as the peers run it: a sweep here measures a task,
            # not a job fanned out over the fleet (bench/job_bench.py measures those).
            BACKSTREAM_CHUNK_SECONDS="1e9",
            BENCH_REDIS_URL=self.redis.url,
            BENCH_STAMP_DIR=str(self.workdir / "stamps"),
            BENCH_CONCURRENCY=str(self.concurrency),
            PYTHONUNBUFFERED="1",
        )
        if self.bs_root != REPO:
            env["PYTHONPATH"] = f"{self.bs_root}{os.pathsep}{REPO}"
        return env


def call(
    python: str, module: str, *args: str, env: dict[str, str], timeout: float = 900, cwd: Path = REPO
) -> dict[str, Any]:
    out = subprocess.run(
        [python, "-m", module, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False
    )
    lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
    if out.returncode != 0 or not lines:
        return {"error": f"{module} exited {out.returncode}: {out.stderr.strip()[-800:]}"}
    return dict(json.loads(lines[-1]))


def _wait_logged(paths: list[Path], marker: bytes, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(p.exists() and marker in p.read_bytes() for p in paths):
            return True
        time.sleep(0.05)
    return False


@dataclass
class Block:
    """The processes of one system with `workers` worker processes, for runs of one kind."""

    env: Env
    system: str  # "backstream" or a peer label
    workers: int
    kind: str  # noop | sma | long
    http: bool = False  # Backstream: also start the API
    procs: list[Proc] = field(default_factory=list)
    api_url: str = ""
    logdir: Path = Path()

    def start(self) -> None:
        env = self.env.base_env()
        self.logdir = self.env.workdir / "logs" / f"{self.system}-{self.workers}w-{self.kind}"
        self.logdir.mkdir(parents=True, exist_ok=True)
        stamps = self.env.workdir / "stamps"
        stamps.mkdir(exist_ok=True)
        if self.system == "backstream":
            py = self.env.bs_python
            cli = [py, "-m", "orchestrator.cli", "--log-json"]
            self.procs.append(
                Proc([*cli, "projector"], env=env, log=self.logdir / "projector.log", cwd=self.env.bs_root)
            )
            if self.http:
                port = free_port()
                self.api_url = f"http://127.0.0.1:{port}"
                self.procs.append(
                    Proc([*cli, "api", "--port", str(port)], env=env, log=self.logdir / "api.log", cwd=self.env.bs_root)
                )
            for i in range(self.workers):
                concurrency = ["--concurrency", str(self.env.concurrency)]
                argv = (
                    [py, "-m", "bench.bs_noop_worker", "--name", f"w{i}", *concurrency]
                    if self.kind == "noop"
                    else [*cli, "worker", *concurrency, "--name", f"w{i}"]
                )
                self.procs.append(Proc(argv, env=env, log=self.logdir / f"worker{i}.log", cwd=self.env.bs_root))
            logs = [self.logdir / f"worker{i}.log" for i in range(self.workers)]
            if not _wait_logged(logs, b"worker.started", 30):
                raise RuntimeError(f"backstream workers did not start; see {self.logdir}")
            if self.http and not _wait_logged([self.logdir / "api.log"], b"api.listening", 30):
                raise RuntimeError(f"backstream api did not start; see {self.logdir}")
            time.sleep(0.5)
        else:
            module, variant = PEER_MODULES[self.system]
            mod_env = dict(env)
            for i in range(self.workers):
                argv = _peer_argv(self.env.peers_python, module, i, variant)
                self.procs.append(Proc(argv, env=mod_env, log=self.logdir / f"worker{i}.log", cwd=self.env.bs_root))
            time.sleep(1.0)
        # Warm up (imports, data, connections) and make sure every worker takes work.
        deadline = time.monotonic() + 60
        while True:
            res = self.run(50 * self.workers, warm=True)
            if "error" not in res and self._all_workers_busy():
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.system} did not warm up: {res}; see {self.logdir}")
            dead = [p for p in self.procs if not p.alive()]
            if dead:
                raise RuntimeError(f"{self.system}: a process exited; see {dead[0].log_path}")
            time.sleep(0.5)

    def _all_workers_busy(self) -> bool:
        if self.system == "backstream":
            return _wait_logged([self.logdir / f"worker{i}.log" for i in range(self.workers)], b"task.finished", 0.1)
        # A peer's worker stamps into a file named by its session, which is its own pid.
        stamped = {p.stem for p in (self.env.workdir / "stamps").glob("*.stamps")}
        return all(str(p.pid) in stamped for p in self.procs)

    def run(self, n: int, *, via: str = "client", warm: bool = False) -> dict[str, Any]:
        env = self.env.base_env()
        timeout = 20.0 if warm else 300.0
        if self.system == "backstream":
            args = {
                "redis_url": self.env.redis.url,
                "prefix": BS_PREFIX,
                "n": n,
                "via": via,
                "api_url": self.api_url or None,
                "timeout": timeout,
            }
            return call(
                self.env.bs_python, "bench.bs_driver", "throughput", json.dumps(args), env=env, cwd=self.env.bs_root
            )
        module, _ = PEER_MODULES[self.system]
        args = {
            "system": module,
            "n": n,
            "kind": self.kind,
            "stamp_dir": str(self.env.workdir / "stamps"),
            "timeout": timeout,
        }
        return call(self.env.peers_python, "bench.peers.driver", json.dumps(args), env=env, cwd=self.env.bs_root)

    def stop(self) -> None:
        for p in reversed(self.procs):
            p.stop()
        self.procs.clear()


def _peer_argv(python: str, module: str, index: int, variant: str) -> list[str]:
    """The launcher asks the peer's module for its worker command line and execs it (same pid)."""
    return [python, "-m", "bench.peers.launch", module, str(index), variant]


def _descendants(pids: list[int]) -> set[int]:
    out = set(pids)
    try:
        listing = subprocess.run(["ps", "-eo", "pid=,ppid="], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return out
    children: dict[int, list[int]] = {}
    for line in listing.splitlines():
        pid, ppid = map(int, line.split())
        children.setdefault(ppid, []).append(pid)
    stack = list(pids)
    while stack:
        for child in children.get(stack.pop(), []):
            if child not in out:
                out.add(child)
                stack.append(child)
    return out
