"""Real processes for end-to-end and fault tests: `backstream` roles and private Redis servers."""

from __future__ import annotations

import asyncio
import inspect
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import redis

T = TypeVar("T")


def _ephemeral_start() -> int:
    """The first port of the kernel's range for outgoing connections (32768 unless set)."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32_768


# Ports this process handed out: never twice, even when the first server has not bound it yet.
_HANDED_OUT: set[int] = set()


def free_port(*, below: int | None = None) -> int:
    """A free loopback port below the kernel's range for outgoing connections (or `below`). A
    port from that range (what binding port 0 gives) can be taken by any client's connection while
    a test has its server stopped, and the restart then fails: seen with `weed mini` restarted in
    tests/test_results_faults.py ("bind: address already in use")."""
    top = below or _ephemeral_start()
    while True:
        port = random.randrange(10_000, top)
        if port in _HANDED_OUT:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _HANDED_OUT.add(port)
        return port


def wait_until(check: Callable[[], T], *, timeout: float, what: str, every: float = 0.05) -> T:
    """Poll `check` until it returns something truthy; fail naming `what` at the deadline."""
    deadline = time.monotonic() + timeout
    pause = threading.Event()
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        pause.wait(every)


async def eventually(check: Callable[[], Awaitable[T] | T], *, timeout: float, what: str, every: float = 0.05) -> T:
    """The asyncio twin of `wait_until`: await (or call) `check` until it gives something truthy;
    fail naming `what` at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value  # type: ignore[return-value]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(every)


class Role:
    """One `backstream` process, its JSON log captured to a file."""

    def __init__(
        self, args: list[str], env: dict[str, str], log_path: Path, preexec_fn: Callable[[], None] | None = None
    ) -> None:
        self.args = args
        self.log_path = log_path
        self._log = open(log_path, "ab")  # noqa: SIM115  # closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "orchestrator.cli", "--log-json", *args],
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            preexec_fn=preexec_fn,  # e.g. resource limits an operator would set on the process
        )

    def wait_serving(self, url: str, timeout: float = 30) -> None:
        """Wait until this process answers `GET {url}/healthz` with 200; fails with its log's tail
        if it exits first."""
        import httpx

        def answers() -> bool:
            assert self.proc.poll() is None, f"{self.args[0]} exited: {self.log_path.read_text()[-3000:]}"
            try:
                return httpx.get(f"{url}/healthz", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(answers, timeout=timeout, what=f"{self.args[0]} to answer at {url}")

    def logs(self) -> list[dict[str, Any]]:
        lines = self.log_path.read_text().splitlines()
        events = []
        for line in lines:
            if line.startswith("{"):
                try:
                    events.append(json.loads(line))
                except json.JSONDecodeError:
                    continue  # a line cut short by a SIGKILL
        return events

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def stop(self, timeout: float = 20) -> int:
        """SIGTERM and wait; SIGKILL if it does not exit in time. Returns the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._log.close()


class Cluster:
    """The processes of one test; whatever is still running at the end is killed."""

    def __init__(self, redis_url: str, prefix: str, workdir: Path, **settings: str) -> None:
        self.redis_url = redis_url
        self.prefix = prefix
        self.workdir = workdir
        self.env = {
            **os.environ,
            "REDIS_URL": redis_url,
            "BACKSTREAM_PREFIX": prefix,
            # Each test's own home: the results store defaults to its `results/` directory.
            "BACKSTREAM_HOME": str(workdir / "home"),
            **{f"BACKSTREAM_{k.upper()}": str(v) for k, v in settings.items()},
        }
        self.roles: list[Role] = []
        self._count = 0

    def start(self, *args: str, preexec_fn: Callable[[], None] | None = None) -> Role:
        self._count += 1
        role = Role(list(args), self.env, self.workdir / f"{self._count:02d}-{args[0]}.log", preexec_fn)
        self.roles.append(role)
        return role

    def api(self) -> tuple[Role, str]:
        port = free_port()
        role = self.start("api", "--port", str(port))
        url = f"http://127.0.0.1:{port}"
        role.wait_serving(url)
        return role, url

    def close(self) -> None:
        for role in self.roles:
            role.kill()


class RedisServer:
    """A private redis-server on a free port, with append-only persistence, for tests that
    restart or break Redis (never the shared one)."""

    def __init__(self, workdir: Path) -> None:
        binary = shutil.which("redis-server")
        assert binary, "redis-server is not installed (.ci/run installs it)"
        self.binary = binary
        self.port = free_port()
        self.dir = workdir / f"redis-{self.port}"
        self.dir.mkdir()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(self.dir),
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--save",
                "",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = redis.Redis.from_url(self.url, socket_connect_timeout=0.5)

        def up() -> bool:
            try:
                return bool(client.ping())
            except redis.RedisError:
                return False

        wait_until(up, timeout=20, what=f"redis-server on port {self.port}")
        client.close()

    def stop(self) -> None:
        """A clean shutdown (SIGTERM): the append-only file is complete."""
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(20)

    def restart(self) -> None:
        self.stop()
        self.start()


def free_cluster_port() -> int:
    """A free loopback port whose cluster bus port (the port + 10000) is free too, both below the
    range for outgoing connections (see free_port)."""
    while True:
        port = free_port(below=_ephemeral_start() - 10_000)
        with socket.socket() as bus:
            try:
                bus.bind(("127.0.0.1", port + 10_000))
            except OSError:
                continue
        return port


class RedisCluster:
    """A real Redis Cluster of `masters` masters, each with `replicas` replicas, on free loopback
    ports: plain `redis-server --cluster-enabled yes` processes joined by `redis-cli --cluster
    create --cluster-replicas N`, ready once every node says cluster_state:ok and every replica's
    link to its master is up with the master's replication offset. `node_timeout_ms`: the
    cluster's node timeout (a dead master's replica is promoted about this long after it stops
    answering). `stop()` ends the processes by PID; `kill(port)` SIGKILLs one. `started_in_s`: how
    long the start took (processes, join, state ok, replicas in sync), in seconds."""

    def __init__(self, workdir: Path, masters: int = 3, *, replicas: int = 0, node_timeout_ms: int = 2000) -> None:
        binary, cli = shutil.which("redis-server"), shutil.which("redis-cli")
        assert binary and cli, "redis-server and redis-cli are not installed (.ci/run installs them)"
        began = time.monotonic()
        self.ports = [free_cluster_port() for _ in range(masters * (1 + replicas))]
        self.url = f"redis://127.0.0.1:{self.ports[0]}/0"  # any node will do: the client finds the rest
        self.procs: dict[int, subprocess.Popen[bytes]] = {}
        self._commands: dict[int, list[str]] = {}
        try:
            for port in self.ports:
                node_dir = workdir / f"cluster-{port}"
                node_dir.mkdir()
                self._commands[port] = [binary, *self._node_args(port, node_dir, node_timeout_ms)]
                self.procs[port] = subprocess.Popen(self._commands[port], **_QUIET)
            self._nodes = {port: redis.Redis(port=port, socket_connect_timeout=0.5) for port in self.ports}
            wait_until(self._all_answer, timeout=20, what=f"redis-server on ports {self.ports}")
            nodes = [f"127.0.0.1:{port}" for port in self.ports]
            create = [cli, "--cluster", "create", *nodes, "--cluster-replicas", str(replicas), "--cluster-yes"]
            subprocess.run(create, check=True, timeout=60, **_QUIET)
            wait_until(self._state_ok, timeout=30, what="cluster_state:ok on every node")
            wait_until(self.replicas_in_sync, timeout=30, what="every replica in sync with its master")
        except BaseException:
            self.stop()
            raise
        self.started_in_s = time.monotonic() - began

    @staticmethod
    def _node_args(port: int, node_dir: Path, node_timeout_ms: int) -> list[str]:
        return [
            *("--port", str(port), "--bind", "127.0.0.1", "--dir", str(node_dir)),
            *("--cluster-enabled", "yes", "--cluster-config-file", str(node_dir / "nodes.conf")),
            *("--cluster-node-timeout", str(node_timeout_ms), "--save", "", "--appendonly", "no"),
        ]

    @property
    def live_ports(self) -> list[int]:
        """The ports of the nodes whose process is running."""
        return [port for port in self.ports if self.procs[port].poll() is None]

    def _all_answer(self) -> bool:
        try:
            return all(self._nodes[port].ping() for port in self.live_ports)
        except redis.RedisError:
            return False

    def _state_ok(self) -> bool:
        try:
            return all(self._nodes[port].cluster("INFO")["cluster_state"] == "ok" for port in self.live_ports)
        except redis.RedisError:
            return False

    def role(self, port: int) -> dict[str, Any]:
        """`INFO replication` of the node on `port` (`role`: master or slave; a master's
        `master_repl_offset` and `slaveN` entries; a replica's `master_port`, `master_link_status`)."""
        return dict(self._nodes[port].info("replication"))

    @property
    def masters(self) -> list[int]:
        """The ports of the live nodes that are masters now (after a failover, a promoted replica's)."""
        return [port for port in self.live_ports if self.role(port)["role"] == "master"]

    def replicas_of(self, master: int) -> list[int]:
        """The ports of the live replicas of the master on port `master`."""
        return [
            port
            for port in self.live_ports
            if (info := self.role(port))["role"] == "slave" and int(info["master_port"]) == master
        ]

    def replicas_in_sync(self, *, offsets: bool = True) -> bool:
        """True when every live master's replicas are linked to it (`master_link_status:up`) and,
        with `offsets`, have acknowledged its whole replication stream (their offset equals the
        master's: only reachable while nothing writes)."""
        try:
            for master in self.masters:
                info = self.role(master)
                offset = int(info["master_repl_offset"])
                links = [v for k, v in info.items() if k.startswith("slave") and isinstance(v, dict)]
                replicas = self.replicas_of(master)
                if len(links) != len(replicas) or any(link["state"] != "online" for link in links):
                    return False
                if offsets and any(int(link["offset"]) != offset for link in links):
                    return False
                if any(self.role(r)["master_link_status"] != "up" for r in replicas):
                    return False
            return True
        except redis.RedisError:
            return False

    def kill(self, port: int) -> None:
        """SIGKILL the node on `port` (no shutdown, nothing saved): a crashed master."""
        proc = self.procs[port]
        proc.kill()
        proc.wait()
        self._nodes[port].close()

    def restart(self, port: int) -> None:
        """Start the node on `port` again (after `kill`), with its cluster config: a master that was
        failed over rejoins as a replica of the node promoted in its place. Waits until the
        cluster is ok and every replica is linked to its master (offsets may differ under load)."""
        assert self.procs[port].poll() is not None, f"the node on {port} is still running"
        self.procs[port] = subprocess.Popen(self._commands[port], **_QUIET)
        self._nodes[port] = redis.Redis(port=port, socket_connect_timeout=0.5)
        wait_until(self._all_answer, timeout=20, what=f"the node on {port} to answer again")
        wait_until(self._state_ok, timeout=30, what="cluster_state:ok after the restart")
        wait_until(
            lambda: self.replicas_in_sync(offsets=False), timeout=30, what="every replica linked after the restart"
        )

    def pause(self, port: int) -> None:
        """SIGSTOP the node on `port`: it stops reading its connections (a replica stops acknowledging)."""
        self.procs[port].send_signal(signal.SIGSTOP)

    def resume(self, port: int) -> None:
        """SIGCONT the node on `port` after `pause`."""
        self.procs[port].send_signal(signal.SIGCONT)

    def wait_promoted(self, dead: int, replicas: list[int], timeout: float = 30) -> int:
        """Wait until one of `replicas` (the dead master's) is a master and every live node says
        cluster_state:ok; its port."""

        def promoted() -> int:
            try:
                return next((port for port in replicas if self.role(port)["role"] == "master"), 0)
            except redis.RedisError:
                return 0

        port = wait_until(promoted, timeout=timeout, what=f"a replica of the master on {dead} to be promoted")
        wait_until(self._state_ok, timeout=timeout, what="cluster_state:ok after the failover")
        return port

    def port_serving(self, key: str) -> int:
        """The port of the master that serves `key`'s slot."""
        node = self._nodes[self.live_ports[0]]
        slot = int(node.cluster("KEYSLOT", key))
        return next(int(owner[1]) for start, end, owner, *_ in node.cluster("SLOTS") if start <= slot <= end)

    def url_away_from(self, key: str) -> str:
        """The URL of a node that does not serve `key`'s slot: a client started there must
        follow the cluster's slot map to reach the key."""
        serving = self.port_serving(key)
        return next(f"redis://127.0.0.1:{port}/0" for port in self.live_ports if port != serving)

    def flush_scripts(self) -> None:
        """Empty every master's script cache (as a restart or a failover to a replica would)."""
        for port in self.masters:
            self._nodes[port].script_flush()

    def flushall(self) -> None:
        """Empty every master (their keys, which their replicas then drop too, and their script caches)."""
        for port in self.masters:
            self._nodes[port].flushall()
        self.flush_scripts()

    def stop(self) -> None:
        """End every node's process (SIGTERM, then SIGKILL after 10 s), by PID."""
        for node in getattr(self, "_nodes", {}).values():
            node.close()
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


_QUIET: dict[str, Any] = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}


class InProcessServer:
    """An ASGI app served by uvicorn on a free port inside the test's event loop, for clients
    that need a real socket (streamed responses, the CLI). `async with` starts and stops it."""

    def __init__(self, app: Any) -> None:
        import uvicorn

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_config=None, access_log=False, lifespan="on")
        self.server = uvicorn.Server(config)
        self._task: Any = None

    async def __aenter__(self) -> InProcessServer:
        import asyncio
        import contextlib

        @contextlib.contextmanager
        def no_signals() -> Any:
            yield  # the test owns the signals

        self.server.capture_signals = no_signals  # type: ignore[method-assign]
        started = asyncio.Event()
        startup = self.server.startup

        async def startup_then_signal(sockets: Any = None) -> None:
            await startup(sockets=sockets)
            started.set()

        self.server.startup = startup_then_signal  # type: ignore[method-assign]
        self._task = asyncio.create_task(self.server.serve())
        signalled = asyncio.ensure_future(started.wait())
        # Whichever comes first: the server listening, or the server task failing to start.
        await asyncio.wait([signalled, self._task], timeout=20, return_when=asyncio.FIRST_COMPLETED)
        signalled.cancel()
        if self._task.done():
            self._task.result()
        if not started.is_set():
            raise TimeoutError("the in-process server did not start within 20 s")
        return self

    async def stop(self, timeout: float = 20) -> None:
        import asyncio

        self.server.should_exit = True
        await asyncio.wait_for(self._task, timeout=timeout)

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None and not self._task.done():
            await self.stop()
