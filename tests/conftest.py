"""Shared fixtures: every test owns its store (a fresh fake server, a unique key prefix on the
real Redis that is deleted afterwards, or, for modules marked `also_on_cluster`, a real Redis
Cluster flushed between tests)."""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, NoReturn

import fakeredis
import msgspec
import pytest
import redis
import redis.asyncio as aioredis

from orchestrator.storage.connections import cluster_client
from orchestrator.storage.keys import Keys
from orchestrator.storage.partitions import CLUSTER_PARTITIONS, Layout
from tests.processes import RedisCluster

REQUIRE_REDIS = os.environ.get("BACKSTREAM_REQUIRE_REDIS") == "1"


def service_missing(message: str) -> NoReturn:
    """A service a test needs is missing: a failure under BACKSTREAM_REQUIRE_REDIS=1 (as in CI),
    otherwise a skip that says why (a developer without it still runs the rest)."""
    if REQUIRE_REDIS:
        pytest.fail(message + "; BACKSTREAM_REQUIRE_REDIS=1 requires it")
    pytest.skip(message + "; set BACKSTREAM_REQUIRE_REDIS=1 to make this a failure")


def real_redis_url() -> str:
    """The real Redis the tests use. Without it: a failure under BACKSTREAM_REQUIRE_REDIS=1
    (as in CI), otherwise a skip that says why."""
    url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
    try:
        redis.Redis.from_url(url, socket_connect_timeout=2).ping()
    except redis.exceptions.RedisError as e:
        message = f"real Redis at {url} is not answering ({e})"
        service_missing(message)
    return url


def delete_prefix(url: str, prefix: str) -> None:
    client = redis.Redis.from_url(url)
    # The prefix holds `{`, a glob metacharacter only inside `[...]`, so it matches literally;
    # without its closing brace it matches every partition's keys (`{bst-…:p03}:…`) too.
    keys = list(client.scan_iter(match=f"{prefix.rstrip('}')}*", count=1000))
    if keys:
        client.delete(*keys)
    client.close()


class Backend(msgspec.Struct):
    """One store for one test: a command client, a blocking-read client and the key names."""

    name: str
    redis: Any
    blocking: Any
    keys: Keys
    url: str | None = None  # set for real Redis and the cluster, so tests can hand it to subprocesses
    # The deployment's partitions: one on a standalone server, CLUSTER_PARTITIONS on the cluster,
    # as a deployment gets by default; `keys` are its partition 0's.
    layout: Layout = Layout()


def another_client(backend: Backend, **options: Any) -> Any:
    """A client of its own on `backend`'s real store, of the same kind (a cluster client on the
    cluster), made with `options` (protocol, connection_class) as redis-py's from_url takes them."""
    assert backend.url is not None, "a fake backend has no URL"
    if backend.name != "cluster":
        return aioredis.Redis.from_url(backend.url, **options)
    connection_class = options.pop("connection_class", None)
    client = aioredis.RedisCluster.from_url(backend.url, **options)
    if connection_class is not None:
        # RedisCluster takes no connection class: its nodes (the startup node now, the others
        # once the slot map is loaded) are made with its connection kwargs.
        client.connection_kwargs["connection_class"] = connection_class
        for node in client.nodes_manager.startup_nodes.values():
            node.connection_class = connection_class
    return client


@pytest.fixture
def unique_prefix() -> str:
    return "{bst-" + uuid.uuid4().hex[:12] + "}"


@pytest.fixture
def real_url() -> str:
    return real_redis_url()


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisCluster]:
    """A real Redis Cluster of three masters for the session (about 2 s to start), its processes
    stopped by PID at the end. Without redis-server: a failure under BACKSTREAM_REQUIRE_REDIS=1,
    otherwise a skip."""
    if not (shutil.which("redis-server") and shutil.which("redis-cli")):
        service_missing("redis-server and redis-cli are needed for a Redis Cluster")
    cluster = RedisCluster(Path(tmp_path_factory.mktemp("redis-cluster")))
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def cluster_url(redis_cluster: RedisCluster) -> Iterator[str]:
    """The URL of one node of the session's cluster, every master empty (keys and scripts) when
    the test starts and again after it."""
    redis_cluster.flushall()
    yield redis_cluster.url
    redis_cluster.flushall()


@contextlib.asynccontextmanager
async def open_backend(kind: str, prefix: str, request: pytest.FixtureRequest | None = None) -> AsyncIterator[Backend]:
    keys = Keys(prefix=prefix)
    if kind == "fake":
        server = fakeredis.FakeServer()
        client = fakeredis.aioredis.FakeRedis(server=server, protocol=2)
        blocking = fakeredis.aioredis.FakeRedis(server=server, protocol=2)
        yield Backend("fake", client, blocking, keys, layout=Layout(prefix=prefix))
        await client.aclose()
        await blocking.aclose()
        return
    if kind == "cluster":
        assert request is not None, "a cluster backend needs the test's request (for the session's cluster)"
        url = request.getfixturevalue("cluster_url")
        # The clients the system builds on a cluster (connections.connect detects one).
        client = cluster_client(url, socket_timeout=5.0)
        blocking = cluster_client(url, socket_timeout=30.0)
        try:
            yield Backend("cluster", client, blocking, keys, url, Layout(prefix=prefix, count=CLUSTER_PARTITIONS))
        finally:
            await client.aclose()
            await blocking.aclose()
        return
    url = real_redis_url()
    client = aioredis.Redis.from_url(url, protocol=2)
    blocking = aioredis.Redis.from_url(url, protocol=2, socket_timeout=None)
    try:
        yield Backend("real", client, blocking, keys, url, Layout(prefix=prefix))
    finally:
        await client.aclose()
        await blocking.aclose()
        delete_prefix(url, prefix)


# BACKSTREAM_TEST_CLUSTER=all: every test that takes `backend` or `real_backend` runs on the
# cluster too (a wider check than CI's, for work on the cluster layout).
EVERY_STORE_TEST_ON_CLUSTER = os.environ.get("BACKSTREAM_TEST_CLUSTER") == "all"

STORES = {
    "fake": pytest.param("fake"),
    "real": pytest.param("real", marks=pytest.mark.redis),
    "cluster": pytest.param("cluster", marks=[pytest.mark.redis, pytest.mark.cluster]),
}


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """`backend` runs each test on fakeredis and on real Redis, and, in a module marked
    `also_on_cluster`, on the real Redis Cluster too; there `real_backend` runs on real Redis and
    on the cluster."""
    on_cluster = EVERY_STORE_TEST_ON_CLUSTER or metafunc.definition.get_closest_marker("also_on_cluster") is not None
    if "backend" in metafunc.fixturenames:
        kinds = ["fake", "real", "cluster"] if on_cluster else ["fake", "real"]
        metafunc.parametrize("backend", [STORES[k] for k in kinds], indirect=True)
    if "real_backend" in metafunc.fixturenames and on_cluster:
        metafunc.parametrize("real_backend", [STORES["real"], STORES["cluster"]], indirect=True)


@pytest.fixture
async def backend(request: pytest.FixtureRequest, unique_prefix: str) -> AsyncIterator[Backend]:
    """The same test on fakeredis and on real Redis (and on the cluster: see pytest_generate_tests)."""
    async with open_backend(request.param, unique_prefix, request) as b:
        yield b


@pytest.fixture
async def real_backend(request: pytest.FixtureRequest, unique_prefix: str) -> AsyncIterator[Backend]:
    """Real Redis only: for what fakeredis cannot show (memory, concurrency under load). In a
    module marked `also_on_cluster`, the cluster too."""
    async with open_backend(getattr(request, "param", "real"), unique_prefix, request) as b:
        yield b


@pytest.fixture
def real_prefix(real_url: str, unique_prefix: str) -> Iterator[str]:
    """A key prefix on the real Redis for tests that start processes; deleted afterwards."""
    yield unique_prefix
    delete_prefix(real_url, unique_prefix)
