"""Store faults under real processes: connections that die silently, Redis out of memory, a
rebuild under a running projector, and what /readyz says about all of it."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.blackhole import BlackholeProxy
from tests.processes import Cluster, wait_until
from tests.test_faults import FAST_LEASES, SHORT, Log, projector_caught_up, submit

pytestmark = [pytest.mark.redis, pytest.mark.slow]


class SseRecorder:
    """Reads `GET /api/stream` in a thread as a browser does (reconnecting with the last id it
    got when a stream ends) and keeps every event's (type, task_id)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.seen: list[tuple[str, str]] = []
        self.opened = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        last: str | None = None
        while not self._stop.is_set():
            headers = {"Last-Event-ID": last} if last else {}
            try:
                with (
                    httpx.Client(timeout=httpx.Timeout(5, read=None)) as http,
                    http.stream("GET", f"{self.url}/api/stream", headers=headers) as response,
                ):
                    self.opened.set()
                    for line in response.iter_lines():
                        if self._stop.is_set():
                            return
                        if line.startswith("id:"):
                            last = line.split(":", 1)[1].strip()
                        elif line.startswith("data:"):
                            data = json.loads(line.split(":", 1)[1])
                            if "type" in data:
                                self.seen.append((data["type"], str(data["task_id"])))
            except httpx.HTTPError:
                pass  # the stream ended or the server went away: reconnect, as a browser does
            self._stop.wait(0.5)

    def saw(self, kind: str, task_id: str) -> bool:
        return (kind, task_id) in self.seen

    def close(self) -> None:
        self._stop.set()


@pytest.fixture
def proxied(real_url: str, real_prefix: str, tmp_path: Path) -> Iterator[tuple[Cluster, BlackholeProxy, Log]]:
    """Processes that reach the shared Redis only through a blackholing proxy."""
    port = int(real_url.rsplit(":", 1)[1].split("/")[0])
    proxy = BlackholeProxy(port)
    cluster = Cluster(proxy.url, real_prefix, tmp_path, **FAST_LEASES)
    log = Log(real_url, real_prefix)
    yield cluster, proxy, log
    cluster.close()
    proxy.close()
    log.redis.close()


def test_silently_dropped_connections_are_noticed_and_replaced(
    proxied: tuple[Cluster, BlackholeProxy, Log],
) -> None:
    cluster, proxy, log = proxied
    _, url = cluster.api()
    cluster.start("projector")
    cluster.start("worker", "--name", "behind-proxy", "--concurrency", "1")
    feed = SseRecorder(url)
    assert feed.opened.wait(10)
    warm = submit(url, SHORT)
    wait_until(lambda: log.has(warm, "completed"), timeout=30, what="the first task to complete")
    wait_until(lambda: feed.saw("completed", warm), timeout=10, what="the live feed to carry the first task")
    wait_until(lambda: projector_caught_up(log), timeout=10, what="the projector to catch up")

    # Every open connection (the worker's blocking read among them) goes silent: no FIN, no RST.
    assert proxy.blackhole() >= 3
    dropped_at = time.monotonic()
    task_id = submit(url, SHORT)  # the API notices its own dead pool connection and reconnects
    wait_until(lambda: log.has(task_id, "completed"), timeout=20, what="a task submitted after the drop to complete")
    # Within seconds: the API's and the worker's dead connections each cost one socket timeout.
    assert time.monotonic() - dropped_at < 15
    wait_until(lambda: projector_caught_up(log), timeout=10, what="the projector to catch up after the drop")
    wait_until(lambda: feed.saw("completed", task_id), timeout=10, what="the live feed to carry the new task")
    feed.close()
