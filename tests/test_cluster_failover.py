"""A master of a replicated Redis Cluster (three masters, three replicas) dies under load: its
replica is promoted, the real `backstream` processes carry on, every task reaches exactly one
terminal state, the projection equals a fresh fold of the log, and every command the API
acknowledged with BACKSTREAM_REPLICA_ACKS=1 survives (streams.md, "On a Redis Cluster")."""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from redis.exceptions import ResponseError

from orchestrator.domain.spec import BacktestSpec
from orchestrator.storage.commands import Commands
from orchestrator.storage.connections import cluster_client
from orchestrator.storage.keys import WORKER_GROUP
from orchestrator.storage.partitions import Layout, task_id_in
from tests.folding import verify
from tests.processes import Cluster, RedisCluster, wait_until

pytestmark = [pytest.mark.redis, pytest.mark.cluster]

# The partitions the processes use: None, the cluster default (16, spread over the three
# masters); "1" puts everything on the master that is killed.
PARTITIONS: str | None = None
SPEC = BacktestSpec(strategy="sma_cross", symbol="GOOG", params={"fast": 10, "slow": 20})
SMALL_TASK: dict[str, Any] = {"strategy": "sma_cross", "symbol": "IBM", "params": {"fast": 10, "slow": 30}}
TERMINAL = {b"completed", b"failed", b"cancelled"}


@pytest.fixture
def replicated(tmp_path: Path) -> Iterator[RedisCluster]:
    """Three masters and three replicas of the test's own, with a 1 s node timeout (a dead master's
    replica is promoted within a few seconds); stopped by PID at the end."""
    cluster = RedisCluster(tmp_path, replicas=1, node_timeout_ms=1000)
    try:
        yield cluster
    finally:
        cluster.stop()


def layout(prefix: str) -> Layout:
    return Layout(prefix=prefix, count=int(PARTITIONS or 16))


class Submitter:
    """Clients that submit small tasks over HTTP until told to stop, each with an Idempotency-Key,
    re-sending on a 503 or a dropped connection until the API acknowledges it (202, or 200 for a
    key it had seen). `acknowledged`: the task ids answered, in order."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.acknowledged: list[str] = []
        self.refusals = 0
        self.stop = threading.Event()
        self._lock = threading.Lock()

    def run(self, clients: int) -> ThreadPoolExecutor:
        pool = ThreadPoolExecutor(clients)
        for _ in range(clients):
            pool.submit(self._loop)
        return pool

    def _loop(self) -> None:
        with httpx.Client(base_url=self.url, timeout=10) as http:
            while not self.stop.is_set():
                self._submit(http, str(uuid.uuid4()))

    def _submit(self, http: httpx.Client, key: str) -> None:
        while True:
            try:
                reply = http.post("/api/backtests", json=SMALL_TASK, headers={"Idempotency-Key": key})
            except httpx.TransportError:
                reply = None
            if reply is not None and reply.status_code in (200, 202):
                with self._lock:
                    self.acknowledged.append(reply.json()["task_id"])
                return
            assert reply is None or reply.status_code == 503, reply.text
            with self._lock:
                self.refusals += 1
            self.stop.wait(0.05)  # pace the re-sends, as a client honouring Retry-After would


def terminal_events(node: redis.RedisCluster, prefix: str) -> Counter[str]:
    """Per task id in the surviving log (every partition), how many terminal events it has; every
    task submitted appears (with 0 until it ends)."""
    counts: Counter[str] = Counter()
    for keys in layout(prefix).partitions:
        for _, fields in node.xrange(keys.events):
            task = fields[b"task_id"].decode()
            counts[task] += fields[b"type"] in TERMINAL
    return counts


def test_a_master_killed_under_load_loses_no_acknowledged_task(
    replicated: RedisCluster, unique_prefix: str, tmp_path: Path
) -> None:
    settings = {"lease_ms": "3000", "heartbeat_ms": "500", "replica_acks": "1"}
    processes = Cluster(replicated.url, unique_prefix, tmp_path, **settings)
    if PARTITIONS:
        processes.env["BACKSTREAM_PARTITIONS"] = PARTITIONS
    try:
        api, url = processes.api()
        roles = [api, processes.start("projector")]
        roles += [processes.start("worker", "--name", name) for name in ("worker-a", "worker-b")]
        # Failover under load, not at start-up: each role has read the deployment and begun.
        begun = {"projector": "projector.started", "worker": "worker.started"}
        wait_until(
            lambda: all(any(e["event"] == begun[r.args[0]] for e in r.logs()) for r in roles[1:]),
            timeout=60,
            what="the projector and the workers to start",
        )
        submitter = Submitter(url)
        pool = submitter.run(clients=4)
        wait_until(lambda: len(submitter.acknowledged) >= 40, timeout=60, what="40 submits before the kill")
        # The master holding partition 0 (the deployment-wide keys; with one partition, everything).
        dead = replicated.port_serving(layout(unique_prefix).home.events)
        replicas = replicated.replicas_of(dead)
        acknowledged_before = len(submitter.acknowledged)
        replicated.kill(dead)
        promoted = replicated.wait_promoted(dead, replicas)
        # With one replica per master, the promoted node has none until the dead one returns (as
        # its replica): until then a write on it cannot be acknowledged by a replica.
        replicated.restart(dead)
        assert replicated.replicas_of(promoted) == [dead]
        wait_until(
            lambda: len(submitter.acknowledged) >= acknowledged_before + 40,
            timeout=60,
            what="40 more submits after the failover",
        )
        submitter.stop.set()
        pool.shutdown()
        ids = set(submitter.acknowledged)

        node = redis.RedisCluster(host="127.0.0.1", port=promoted)
        try:

            def all_ended() -> Counter[str] | None:
                counts = terminal_events(node, unique_prefix)
                return counts if all(counts[i] >= 1 for i in ids) else None

            counts = wait_until(all_ended, timeout=120, what="every acknowledged task to end")
        finally:
            node.close()
        for role in roles:
            assert role.stop() == 0, role.log_path.read_text()[-3000:]
    finally:
        processes.close()
    # Every acknowledged submit survived the failover; every task of the log ended exactly once.
    assert ids <= set(counts)
    assert {task: n for task, n in counts.items() if n != 1} == {}
    assert submitter.refusals > 0  # the failover was felt: the API refused (503) while it lasted
    assert asyncio.run(differences_and_pending(replicated.url, unique_prefix)) == ([], 0)


async def differences_and_pending(url: str, prefix: str) -> tuple[list[Any], int]:
    """The differences between a fresh fold of each partition's log and the live projection, and
    the work items still pending, over every partition."""
    client = cluster_client(url, socket_timeout=5)
    try:
        differences: list[Any] = []
        pending = 0
        for keys in layout(prefix).partitions:
            differences += await verify(client, keys)
            pending += (await client.xpending(keys.work, WORKER_GROUP))["pending"]
        return differences, pending
    finally:
        await client.aclose()


async def test_replica_acks_answer_a_submit_only_once_a_replica_has_it(
    replicated: RedisCluster, unique_prefix: str
) -> None:
    """WAIT on the connection that wrote: with the task's replica stopped, a submit is refused
    (NOREPLICAS) rather than acknowledged; without the setting the same submit is acknowledged
    with no replica having confirmed it. A submit acknowledged with the setting is in the log of
    the replica promoted when its master is killed."""
    client = cluster_client(replicated.url, socket_timeout=5)
    deployment = Layout(prefix=unique_prefix, count=16)
    acknowledged = Commands(client, deployment, replica_acks=1)
    try:
        task_id = deployment.new_task_id()
        keys = deployment.of(task_id)
        master = replicated.port_serving(keys.events)
        [replica] = replicated.replicas_of(master)
        assert (await acknowledged.submit(task_id, SPEC)).created
        replicated.pause(replica)
        try:
            refused = task_id_in(deployment.partition_index(task_id))
            with pytest.raises(ResponseError, match="^NOREPLICAS 0 of 1 replicas"):
                await acknowledged.submit(refused, SPEC)
            unconfirmed = task_id_in(deployment.partition_index(task_id))
            assert (await Commands(client, deployment).submit(unconfirmed, SPEC)).created
            report = replicated.role(master)
            assert report["slave0"]["offset"] < report["master_repl_offset"]
        finally:
            replicated.resume(replica)
        replicated.kill(master)
        assert replicated.wait_promoted(master, [replica]) == replica
        survivor = redis.Redis(port=replica)
        try:
            log = {fields[b"task_id"].decode() for _, fields in survivor.xrange(keys.events)}
        finally:
            survivor.close()
        assert task_id in log
    finally:
        await client.aclose()
