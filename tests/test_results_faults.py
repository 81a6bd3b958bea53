"""The results store failing under real processes: a worker keeps its computed result and
retries the upload while the S3 server is down (killed, then started again) or hangs, and the
outcome is recorded once, by the attempt that computed it. Also the CLI's `result` and `status`."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pyarrow.parquet as pq
import pytest

from tests.blackhole import BlackholeProxy
from tests.objectstores import S3Server
from tests.processes import Cluster, wait_until
from tests.test_faults import FAST_LEASES, Log, submit
from tests.test_results import SINGLE, SWEEP, engine_detail, make_bucket

pytestmark = [pytest.mark.redis, pytest.mark.slow]


@pytest.fixture
def s3(tmp_path: Path) -> Iterator[S3Server]:
    server = S3Server(tmp_path / "weed")
    server.start()
    yield server
    server.stop()


def results_cluster(real_url: str, real_prefix: str, tmp_path: Path, endpoint: str, bucket: str) -> Cluster:
    cluster = Cluster(
        real_url,
        real_prefix,
        tmp_path,
        **FAST_LEASES,
        results_url=f"s3://{bucket}/results",
        results_timeout_s="2",
    )
    cluster.env.update(
        AWS_ENDPOINT_URL=endpoint, AWS_ACCESS_KEY_ID="any", AWS_SECRET_ACCESS_KEY="any", AWS_REGION="us-east-1"
    )
    return cluster


def upload_failures(cluster: Cluster) -> int:
    return sum(1 for role in cluster.roles for line in role.logs() if line.get("event") == "result.upload_failed")


def test_a_down_s3_server_delays_the_outcome_and_never_loses_it(
    real_url: str, real_prefix: str, tmp_path: Path, s3: S3Server
) -> None:
    bucket = make_bucket(s3)
    cluster = results_cluster(real_url, real_prefix, tmp_path, s3.endpoint, bucket)
    log = Log(real_url, real_prefix)
    try:
        _, url = cluster.api()
        cluster.start("projector")
        cluster.start("worker", "--name", "w1")
        s3.stop()
        task_id = submit(url, SWEEP)
        # Computed, then the upload fails again and again; the lease is kept meanwhile (the
        # leases here are 1 s), so no other attempt starts and nothing is recorded yet.
        wait_until(lambda: upload_failures(cluster) >= 3, timeout=60, what="failed uploads")
        assert log.types(task_id) in (["submitted", "started"], ["submitted", "started", "progress"])
        s3.start()
        wait_until(lambda: log.has(task_id, "completed"), timeout=60, what="the outcome once the store is back")
        types = log.types(task_id)
        assert types.count("started") == 1 and types.count("completed") == 1 and types[-1] == "completed"
        wait_until(
            lambda: httpx.get(f"{url}/api/backtests/tasks/{task_id}").json()["status"] == "completed",
            timeout=30,
            what="the projection",
        )
        assert httpx.get(f"{url}/api/backtests/tasks/{task_id}/result", timeout=30).json() == engine_detail(SWEEP)

        # The CLI: `status` shows the sweep's top rows; `result` downloads a table in each format.
        env = {**cluster.env, "BACKSTREAM_URL": url}

        def cli(*args: str) -> subprocess.CompletedProcess[bytes]:
            return subprocess.run(
                [sys.executable, "-m", "orchestrator.cli", *args], env=env, capture_output=True, timeout=60
            )

        status = cli("status", task_id)
        assert status.returncode == 0, status.stderr
        table = engine_detail(SWEEP)["table"]
        assert f"top 10 of {len(table)} by sharpe" in status.stdout.decode()
        first = status.stdout.decode().split("by sharpe:\n", 1)[1].splitlines()[1].split()
        assert first[:3] == ["1", str(table[0]["params"]["fast"]), str(table[0]["params"]["slow"])]
        out = tmp_path / "sweep.parquet"
        got = cli("result", task_id, "--table", "sweep", "-o", str(out))
        assert got.returncode == 0, got.stderr
        assert pq.read_table(out).to_pylist() == table
        as_csv = cli("result", task_id, "--table", "sweep", "--sort=-return_pct", "--limit", "3")
        assert as_csv.returncode == 0, as_csv.stderr
        rows = list(csv.DictReader(io.StringIO(as_csv.stdout.decode())))
        best = sorted(table, key=lambda r: -r["return_pct"])[:3]
        assert [float(r["return_pct"]) for r in rows] == [r["return_pct"] for r in best]
        whole = cli("result", task_id)
        assert json.loads(whole.stdout) == engine_detail(SWEEP)
        bad = cli("result", task_id, "--table", "sweep", "--where", "sharpe>>1")
        assert bad.returncode == 1 and b"where" in bad.stderr
    finally:
        cluster.close()
        log.redis.close()


def test_a_hanging_s3_server_times_the_upload_out_and_it_is_retried(
    real_url: str, real_prefix: str, tmp_path: Path, s3: S3Server
) -> None:
    bucket = make_bucket(s3)
    proxy = BlackholeProxy(s3.port)
    cluster = results_cluster(real_url, real_prefix, tmp_path, f"http://127.0.0.1:{proxy.port}", bucket)
    log = Log(real_url, real_prefix)
    try:
        _, url = cluster.api()
        cluster.start("worker", "--name", "w1")
        first = submit(url, SINGLE)
        wait_until(lambda: log.has(first, "completed"), timeout=60, what="the first task")
        # The worker's pooled connections to the store now go silent: its next upload hangs
        # until the timeout (2 s), then a retry on a new connection gets through.
        assert proxy.blackhole() >= 1
        second = submit(url, {**SINGLE, "params": {"fast": 7, "slow": 30}})
        wait_until(lambda: log.has(second, "completed"), timeout=60, what="the second task")
        assert upload_failures(cluster) >= 1
        assert log.types(second).count("started") == 1
    finally:
        cluster.close()
        log.redis.close()
        proxy.close()


def test_while_the_store_is_down_a_worker_takes_no_more_work_and_a_cancel_stops_its_upload(
    real_url: str, real_prefix: str, tmp_path: Path, s3: S3Server
) -> None:
    bucket = make_bucket(s3)
    cluster = results_cluster(real_url, real_prefix, tmp_path, s3.endpoint, bucket)
    log = Log(real_url, real_prefix)
    try:
        _, url = cluster.api()
        worker = cluster.start("worker", "--name", "w1", "--concurrency", "1")
        s3.stop()
        first = submit(url, SINGLE)
        wait_until(lambda: upload_failures(cluster) >= 1, timeout=60, what="the first failed upload")
        second = submit(url, {**SINGLE, "params": {"fast": 7, "slow": 30}})
        wait_until(lambda: upload_failures(cluster) >= 6, timeout=60, what="more failed uploads")
        # The one slot stays with the task whose result waits for the store: nothing more is
        # claimed and computed only to wait in memory too.
        assert log.types(second) == ["submitted"]
        # A cancel reaches the waiting attempt through its lease renewal: it stops retrying and
        # writes nothing; the slot goes to the next task, which waits for the store in turn.
        assert httpx.delete(f"{url}/api/backtests/tasks/{first}", timeout=10).status_code == 200
        wait_until(
            lambda: any(line.get("event") == "task.stopped" for line in worker.logs()), timeout=30, what="the stop"
        )
        wait_until(lambda: log.has(second, "started"), timeout=30, what="the next task to start")
        assert log.types(first) == ["submitted", "started", "cancelled"]
        s3.start()
        wait_until(lambda: log.has(second, "completed"), timeout=60, what="the second outcome")
        assert log.types(first) == ["submitted", "started", "cancelled"]
    finally:
        cluster.close()
        log.redis.close()
