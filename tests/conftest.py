"""Shared fixtures: every test owns its store (a fresh fake server, or a unique key prefix on
the real Redis that is deleted afterwards)."""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any, NoReturn

import fakeredis
import msgspec
import pytest
import redis
import redis.asyncio as aioredis

from orchestrator.storage.keys import Keys

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
    # The prefix holds `{`, a glob metacharacter only inside `[...]`, so it matches literally.
    keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
    if keys:
        client.delete(*keys)
    client.close()


class Backend(msgspec.Struct):
    """One store for one test: a command client, a blocking-read client and the key names."""

    name: str
    redis: Any
    blocking: Any
    keys: Keys
    url: str | None = None  # set for real Redis, so tests can hand it to subprocesses


@pytest.fixture
def unique_prefix() -> str:
    return "{bst-" + uuid.uuid4().hex[:12] + "}"


@pytest.fixture
def real_url() -> str:
    return real_redis_url()


@contextlib.asynccontextmanager
async def open_backend(kind: str, prefix: str) -> AsyncIterator[Backend]:
    keys = Keys(prefix=prefix)
    if kind == "fake":
        server = fakeredis.FakeServer()
        client = fakeredis.aioredis.FakeRedis(server=server, protocol=2)
        blocking = fakeredis.aioredis.FakeRedis(server=server, protocol=2)
        yield Backend("fake", client, blocking, keys)
        await client.aclose()
        await blocking.aclose()
        return
    url = real_redis_url()
    client = aioredis.Redis.from_url(url, protocol=2)
    blocking = aioredis.Redis.from_url(url, protocol=2, socket_timeout=None)
    try:
        yield Backend("real", client, blocking, keys, url)
    finally:
        await client.aclose()
        await blocking.aclose()
        delete_prefix(url, prefix)


@pytest.fixture(params=["fake", pytest.param("real", marks=pytest.mark.redis)])
async def backend(request: pytest.FixtureRequest, unique_prefix: str) -> AsyncIterator[Backend]:
    """The same test on fakeredis and on real Redis."""
    async with open_backend(request.param, unique_prefix) as b:
        yield b


@pytest.fixture
async def real_backend(unique_prefix: str) -> AsyncIterator[Backend]:
    """Real Redis only: for what fakeredis cannot show (memory, concurrency under load)."""
    async with open_backend("real", unique_prefix) as b:
        yield b


@pytest.fixture
def real_prefix(real_url: str, unique_prefix: str) -> Iterator[str]:
    """A key prefix on the real Redis for tests that start processes; deleted afterwards."""
    yield unique_prefix
    delete_prefix(real_url, unique_prefix)
