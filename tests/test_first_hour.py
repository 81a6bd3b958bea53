"""What a new user meets first on the command line: quiet pipes, `tail --since 0`, sweep ranges,
and `ls` filtered by symbol and strategy with its main metric."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
from typing import Any

import pytest

from orchestrator.cli.request import params
from orchestrator.client import ClientError
from orchestrator.settings import Settings
from tests.conftest import Backend
from tests.harness import System
from tests.test_client_cli import BODY, backstream, served


@pytest.fixture
def system(backend: Backend) -> System:
    return System(backend)


def _closed_pipe_run(argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Run `backstream ARGV` with its stdout a pipe whose reader has already gone (as `| head`
    leaves it once head has read its lines)."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        return subprocess.run(
            [sys.executable, "-m", "orchestrator.cli", *argv],
            stdout=write_end,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            env=env,
            text=True,
            timeout=60,
        )
    finally:
        os.close(write_end)


@pytest.mark.redis
async def test_output_into_a_closed_pipe_ends_quietly(real_backend: Backend) -> None:
    system = System(real_backend)
    async with system.client() as http:
        task_id = (await http.post("/api/backtests", json=BODY)).json()["task_id"]
    env = {**os.environ, "REDIS_URL": str(real_backend.url), "BACKSTREAM_PREFIX": real_backend.keys.prefix}
    for argv in (["audit", task_id, "--json"], ["audit", task_id]):
        run = await asyncio.to_thread(_closed_pipe_run, argv, env)
        assert run.returncode == 141, (argv, run.stderr)
        assert run.stderr == "", (argv, run.stderr)  # no BrokenPipeError traceback


async def test_tail_since_0_reads_from_the_first_event(system: System, capsys: pytest.CaptureFixture[str]) -> None:
    async with served(system) as url:
        import httpx

        async with httpx.AsyncClient(base_url=url) as http:
            ids = [(await http.post("/api/backtests", json=BODY)).json()["task_id"] for _ in range(2)]
            # The API takes a bare millisecond as Redis does (`0` is `0-0`), in the header and the query.
            for headers, path in (({"Last-Event-ID": "0"}, "/api/stream"), ({}, "/api/stream?last_event_id=0")):
                async with http.stream("GET", path, headers=headers) as reply:
                    assert reply.status_code == 200
            reply = await http.get("/api/dead-letters?before=0")
            assert reply.status_code == 200 and reply.json() == {"dead_letters": []}
        capsys.readouterr()
        code = await backstream(Settings(api_url=url), "tail", "--since", "0", "--count", "2")
    assert code == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.split()[0].endswith("Z")]
    assert [line.split()[1:3] for line in lines] == [[i[:8], "submitted"] for i in ids]


@pytest.mark.parametrize(
    ("text", "values"),
    [
        ("fast=5:50:5", list(range(5, 51, 5))),  # STOP included when the steps land on it
        ("fast=5:52:5", list(range(5, 51, 5))),  # and not passed when they do not
        ("fast=3:6", [3, 4, 5, 6]),  # STEP defaults to 1
        ("fast=7:7", [7]),
        ("w=0.1:0.5:0.1", [0.1, 0.2, 0.3, 0.4, 0.5]),  # no float drift (0.30000000000000004)
        ("w=1:2:0.5", [1.0, 1.5, 2.0]),
    ],
)
def test_sweep_ranges(text: str, values: list[Any]) -> None:
    assert params([text]) == {text.split("=")[0]: values}


@pytest.mark.parametrize("text", ["fast=5:1", "fast=1:5:0", "fast=1:5:-1", "fast=a:5", "fast=1:2:3:4", "fast=0:1e9"])
def test_bad_sweep_ranges_are_refused(text: str) -> None:
    with pytest.raises(ClientError, match="--param"):
        params([text])


async def test_submit_a_range_and_ls_by_symbol_and_strategy_with_the_metric(
    system: System, capsys: pytest.CaptureFixture[str]
) -> None:
    async with served(system) as url:
        settings = Settings(api_url=url)
        assert await backstream(settings, "submit", "sma_cross", "IBM", "-p", "fast=5:20:5", "-p", "slow=30") == 0
        assert await backstream(settings, "submit", "buy_and_hold", "GOOG") == 0
        assert await backstream(settings, "submit", "sma_cross", "GOOG", "-p", "fast=10", "-p", "slow=20") == 0
        sweep, hold, cross = capsys.readouterr().out.split()
        await system.run_workers()
        capsys.readouterr()
        assert await backstream(settings, "status", sweep, "--json") == 0
        assert '"fast": [\n        5,\n        10,\n        15,\n        20\n      ]' in capsys.readouterr().out
        for argv, wanted in (
            (["--symbol", "goog"], [cross, hold]),
            (["--strategy", "sma_cross"], [cross, sweep]),
            (["--symbol", "GOOG", "--strategy", "buy_and_hold"], [hold]),
        ):
            capsys.readouterr()
            assert await backstream(settings, "ls", *argv) == 0
            lines = capsys.readouterr().out.splitlines()
            assert lines[0].split()[5] == "return_pct"
            assert [line.split()[0] for line in lines[2:]] == wanted, argv
            for line in lines[2:]:
                float(line.split()[5].replace(",", ""))  # every completed task shows its return


@pytest.mark.redis
@pytest.mark.parametrize("command", ["up", "up-embedded", "api"])
def test_a_busy_port_says_which_option_to_change(command: str, real_url: str, real_prefix: str, tmp_path: Any) -> None:
    # A home of the test's own in every case: with REDIS_URL the results store is still `results/` in
    # the home, which the command opens before it finds the port taken.
    home = {"BACKSTREAM_HOME": str(tmp_path / "home")}
    if command == "up-embedded":  # the default: its own store in a home directory, no REDIS_URL
        env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"} | home
    else:
        env = {**os.environ, "REDIS_URL": real_url, "BACKSTREAM_PREFIX": real_prefix} | home
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        run = subprocess.run(
            [sys.executable, "-m", "orchestrator.cli", command.split("-")[0], "--port", str(port)],
            capture_output=True,
            text=True,
            env=env,
            stdin=subprocess.DEVNULL,
            timeout=60,
        )
    assert run.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in run.stderr and "--port" in run.stderr, run.stderr
    assert "Traceback" not in run.stderr
