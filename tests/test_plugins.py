"""Strategy plugins: the example package in examples/, installed for real, in every interface.

The package is installed with pip into a directory of its own (`--target`), which the test puts
on sys.path (in process) or PYTHONPATH (subprocesses): discovery then reads its real
`.dist-info/entry_points.txt`, as on a machine where the operator installed it, and the shared
environment is left as it was.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from consumers.engine import registry
from consumers.engine.datasets import Catalog
from consumers.engine.registry import StrategyMissing, discover
from consumers.engine.runner import start_run
from consumers.engine.validation import check_spec
from orchestrator.domain.spec import BacktestSpec
from orchestrator.storage.keys import Keys
from tests.processes import Cluster, wait_until

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "backstream-donchian"
SWEEP: dict[str, Any] = {
    "strategy": "donchian",
    "symbol": "IBM",
    "params": {"entry": [10, 20, 30], "exit": [5, 10]},
    "commission": 0.002,
}


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The example package installed into a directory of its own; its path."""
    src = tmp_path_factory.mktemp("src") / "backstream-donchian"
    shutil.copytree(EXAMPLE, src)  # the build writes next to the sources: not into the repository
    target = tmp_path_factory.mktemp("site")
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--no-index"]
        + ["--target", str(target), str(src)],
        check=True,
        capture_output=True,
    )
    assert (next(target.glob("backstream_donchian-*.dist-info")) / "entry_points.txt").exists()
    return target


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return Catalog.from_env_dir(None)  # the bundled data


@pytest.fixture
def on_path(installed: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """This process sees the plugin, as after installing it and restarting."""
    monkeypatch.syspath_prepend(str(installed))
    registry.strategies.cache_clear()
    yield
    registry.strategies.cache_clear()


def test_discovered_with_its_parameters(on_path: None) -> None:
    found = discover()
    assert list(found)[:5] == ["sma_cross", "momentum", "bollinger", "rsi", "buy_and_hold"]
    donchian = found["donchian"]
    assert donchian.origin == "backstream-donchian: backstream_donchian:Donchian"
    assert [p.as_json() for p in donchian.params] == [
        {
            "name": "entry",
            "type": "integer",
            "minimum": 2.0,
            "maximum": 1000.0,
            "exclusive_minimum": False,
            "exclusive_maximum": False,
            "default": 20,
            "description": "bars in the breakout channel",
        },
        {
            "name": "exit",
            "type": "integer",
            "minimum": 1.0,
            "maximum": 1000.0,
            "exclusive_minimum": False,
            "exclusive_maximum": False,
            "default": 10,
            "description": "bars in the exit channel",
        },
    ]
    assert found.failures == []


def test_not_there_without_the_package() -> None:
    assert "donchian" not in discover()


def test_validated_like_a_builtin(on_path: None, catalog: Catalog) -> None:
    def fields(params: dict[str, Any]) -> list[tuple[str, str]]:
        spec = BacktestSpec(strategy="donchian", symbol="IBM", params=params)
        return [(e.field, e.message) for e in check_spec(spec, catalog)]

    assert fields({"entry": 20, "exit": 10}) == []
    assert fields({}) == []  # both take their defaults
    assert fields({"entry": 1}) == [("params.entry", "must be between 2 and 1000, got 1")]
    assert fields({"entry": [10, 2.5]}) == [("params.entry[1]", "must be an integer, got 2.5")]
    assert fields({"entry": 10, "exit": 20}) == [("params.exit", "exit (20) must be at most entry (10)")]
    assert fields({"width": 3})[0][0] == "params.width"


def test_a_sweep_computes_each_channel_once(on_path: None, catalog: Catalog) -> None:
    run = start_run(BacktestSpec(**SWEEP), catalog)
    while not run.done:
        run.advance(1.0)
    out = run.outcome()
    assert out.summary["combinations"] == 6 and out.summary["metrics"]["num_trades"] > 0
    # entry in {10, 20, 30} and exit in {5, 10}: 4 distinct windows, two channels each.
    memo = run.market.indicators._memo
    assert sorted(memo) == sorted((k, w) for k in ("donchian_high", "donchian_low") for w in (5, 10, 20, 30))


def test_a_worker_without_the_plugin_fails_the_task_for_good(catalog: Catalog) -> None:
    registry.strategies.cache_clear()
    with pytest.raises(StrategyMissing) as caught:
        start_run(BacktestSpec(strategy="donchian", symbol="IBM"), catalog)
    assert caught.value.retryable is False
    assert "strategy 'donchian' is not installed in this process" in str(caught.value)


def test_a_plugin_that_breaks_the_interface_is_left_out_and_said_why(tmp_path: Path) -> None:
    dist = tmp_path / "broken-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: broken\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[backstream.strategies]\nbroken = json:loads\nsma_cross = json:dumps\n")
    sys.path.insert(0, str(tmp_path))
    try:
        eps = importlib.metadata.entry_points(group=registry.GROUP)
        found = discover([e for e in eps if e.dist is not None and e.dist.name == "broken"])
    finally:
        sys.path.remove(str(tmp_path))
    assert "broken" not in found and found["sma_cross"].origin == "built-in"
    assert [(f.entry_point, f.error) for f in found.failures] == [
        ("broken = json:loads", "TypeError: json:loads is not a Strategy (subclass or instance)"),
        ("sma_cross = json:dumps", "TypeError: json:dumps is not a Strategy (subclass or instance)"),
    ]


# --- the real stack: an API, a projector and workers as processes, on real Redis ---------------


@pytest.fixture
def cluster(real_url: str, real_prefix: str, tmp_path: Path) -> Iterator[Cluster]:
    c = Cluster(real_url, real_prefix, tmp_path, progress_interval_ms="50")
    yield c
    c.close()


def with_plugin(cluster: Cluster, installed: Path) -> dict[str, str]:
    return {**cluster.env, "PYTHONPATH": os.pathsep.join([str(installed), cluster.env.get("PYTHONPATH", "")])}


def cli(env: dict[str, str], url: str, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "orchestrator.cli", *argv, "--url", url],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.redis
@pytest.mark.slow
def test_the_plugin_in_every_interface_on_the_real_stack(cluster: Cluster, installed: Path) -> None:
    bare = dict(cluster.env)
    cluster.env = with_plugin(cluster, installed)
    api, url = cluster.api()
    cluster.start("projector")
    worker = cluster.start("worker", "--name", "with-plugin")

    listed = httpx.get(f"{url}/api/strategies", timeout=5).json()
    names = [s["name"] for s in listed["strategies"]]
    assert names == ["sma_cross", "momentum", "bollinger", "rsi", "buy_and_hold", "donchian"]
    assert "sqn" in listed["objectives"] and listed["load_failures"] == []
    form = httpx.get(f"{url}/submit", timeout=5).text
    assert '<option value="donchian">donchian</option>' in form and 'name="param:entry"' in form

    # A refusal names the field, as for a built-in.
    bad = httpx.post(f"{url}/api/backtests", json={**SWEEP, "params": {"entry": 1}}, timeout=5)
    assert bad.status_code == 422 and "params.entry" in bad.text
    # So is bad position management, by the field (and the element of a sweep list).
    for extra, field in [
        ({"stop_loss_pct": -1}, "stop_loss_pct"),
        ({"max_bars": 2.5}, "max_bars"),
        ({"take_profit_pct": [5, "x"]}, "take_profit_pct[1]"),
        ({"size": 1.5}, "size"),
    ]:
        bad = httpx.post(f"{url}/api/backtests", json={**SWEEP, **extra}, timeout=5)
        assert bad.status_code == 422, bad.text
        assert [f["field"] for f in bad.json()["fields"]] == [field], bad.text

    # The CLI lists it and runs a sweep of it through the API to completion.
    shown = cli(bare, url, "strategies")
    assert shown.returncode == 0, shown.stderr
    assert "donchian" in shown.stdout and "bars in the breakout channel" in shown.stdout
    argv = ["submit", "donchian", "IBM", "-p", "entry=10,20,30", "-p", "exit=5,10", "--stop-loss-pct", "5,10"]
    done = cli(bare, url, *argv, "--wait")
    assert done.returncode == 0, done.stderr
    assert "status        completed" in done.stdout and "best of 12 combinations by sqn" in done.stdout

    # Over HTTP too; the result is the in-process engine's, to the bit.
    reply = httpx.post(f"{url}/api/backtests", json=SWEEP, timeout=5)
    assert reply.status_code == 202, reply.text
    task_id = reply.json()["task_id"]

    def finished() -> dict[str, Any] | None:
        t = httpx.get(f"{url}/api/backtests/tasks/{task_id}", timeout=5).json()
        return t if t["status"] in ("completed", "failed") else None

    task = wait_until(finished, timeout=120, what="the plugin's sweep to finish")
    assert task["status"] == "completed" and task["worker"] == "with-plugin", task
    assert task["result"]["combinations"] == 6

    # The workers page says what each worker can run.
    r = redis.Redis.from_url(cluster.redis_url)
    keys = Keys(prefix=cluster.prefix)
    assert json.loads(r.hget(keys.worker_strategies, "with-plugin") or b"[]")[-1] == "donchian"
    page = httpx.get(f"{url}/workers", timeout=5).text
    assert "sma_cross, momentum, bollinger, rsi, buy_and_hold, donchian" in page

    # A worker without the package fails the task at once, saying why; no retry.
    assert worker.stop() == 0
    assert r.hget(keys.worker_strategies, "with-plugin") is None  # a clean stop removes it
    cluster.env = bare
    cluster.start("worker", "--name", "without-plugin")
    reply = httpx.post(f"{url}/api/backtests", json=SWEEP, timeout=5)
    task_id = reply.json()["task_id"]
    task = wait_until(finished, timeout=60, what="the task on the worker without the plugin to fail")
    assert task["status"] == "failed" and task["attempt"] == 1 and task["error_retryable"] is False, task
    assert "strategy 'donchian' is not installed in this process" in task["error"]
    page = httpx.get(f"{url}/workers", timeout=5).text
    assert "sma_cross, momentum, bollinger, rsi, buy_and_hold</td>" in page
    r.close()
