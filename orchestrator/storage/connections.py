"""Redis clients (one pool for commands, one for blocking reads) and how store errors are waited out."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable
from typing import Any, TypeAlias, TypeVar, overload

import fakeredis
import redis.asyncio as aioredis
import redis.exceptions
import structlog
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff

from orchestrator.settings import Settings

log = structlog.get_logger("backstream.connections")

T = TypeVar("T")

# The async client every store function takes: a plain client, or a cluster client when
# REDIS_URL names a node of a Redis Cluster (see `connect`). fakeredis's FakeRedis (the embedded
# fallback) is a plain one.
RedisClient: TypeAlias = aioredis.Redis | aioredis.RedisCluster

# What Redis being unreachable (down, restarting, a network blip) looks like to a client.
REDIS_UNAVAILABLE = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)

# Refusals that pass once the store recovers: out of memory (maxmemory with noeviction), a
# replica that is read-only after a failover, a cluster resharding or down. Connection errors
# (BusyLoadingError, a dataset still loading, among them) and timeouts are outages too.
_REFUSALS_THAT_PASS = (
    redis.exceptions.OutOfMemoryError,
    redis.exceptions.ReadOnlyError,
    redis.exceptions.TryAgainError,
    redis.exceptions.ClusterDownError,  # and MasterDownError
)
# The same, for errors redis-py leaves as a plain ResponseError: their code is the reply's first word.
_CODES_THAT_PASS = frozenset({"MISCONF", "BUSY", "NOREPLICAS", "LOADING", "OOM", "READONLY", "TRYAGAIN", "CLUSTERDOWN"})


def store_unavailable(error: BaseException) -> bool:
    """True when `error` says the store cannot serve the call now but may later (unreachable,
    out of memory, read-only, loading, failing to persist, busy, resharding): the caller waits
    it out or answers 503. False for errors that the same call will meet again (a bad command,
    a script bug, a wrong type), which must surface."""
    if isinstance(error, REDIS_UNAVAILABLE + _REFUSALS_THAT_PASS):
        return True
    if isinstance(error, redis.exceptions.ResponseError):
        return str(error).split(" ", 1)[0].upper() in _CODES_THAT_PASS
    return False


@overload
async def until_reachable(call: Callable[[], Awaitable[T]], *, doing: str) -> T: ...


@overload
async def until_reachable(
    call: Callable[[], Awaitable[T]], *, doing: str, give_up: Callable[[], bool], fallback: T
) -> T: ...


async def until_reachable(
    call: Callable[[], Awaitable[T]],
    *,
    doing: str,
    give_up: Callable[[], bool] = lambda: False,
    fallback: T | None = None,
) -> T | None:
    """Run `call` until Redis answers, waiting out outages and refusals that pass (see
    `store_unavailable`) with exponential backoff (0.1 s to 5 s). Only for calls that are safe
    to re-send (our scripts are idempotent). Returns `fallback` instead once `give_up()` says so
    (e.g. the process is stopping): a caller that can give up names what it gets then. Other
    store errors are raised."""
    delay = 0.1
    while True:
        try:
            return await call()
        except redis.exceptions.RedisError as e:
            if not store_unavailable(e):
                raise
            if give_up():
                return fallback
            log.warning("store.unavailable", doing=doing, error=str(e), error_type=type(e).__name__, retry_in_s=delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)


# Commands get a short timeout so an unreachable Redis becomes a quick 503, not a hung request.
COMMAND_TIMEOUT_S = 5.0

# The longest BLOCK any blocking reader asks for (worker 500 ms, projector and live feed 1 s).
# Blocking readers get a socket timeout this much plus a margin: a connection that went silent
# (a peer gone without a FIN or an RST, a proxy that dropped it) is noticed within seconds,
# where no timeout at all would wait on it forever.
LONGEST_BLOCK_MS = 1_000
BLOCKING_TIMEOUT_S = LONGEST_BLOCK_MS / 1000 + 2.0


class _LoggedRetry(Retry):
    """redis-py's retry, saying so in the log: a dropped connection is never silent."""

    async def call_with_retry(
        self,
        do: Callable[[], Awaitable[T]],
        fail: Callable[..., Any],
        is_retryable: Callable[[Exception], bool] | None = None,
        with_failure_count: bool = False,
    ) -> T:
        def logged(error: Exception, *count: int) -> Any:
            log.warning("store.connection_dropped", error=str(error), error_type=type(error).__name__)
            return fail(error, *count)

        return await super().call_with_retry(do, logged, is_retryable, with_failure_count)


# A call that timed out (or lost its connection) is re-sent once on a fresh connection (our
# scripts are idempotent, so re-sending is safe): a dead pooled connection costs one timeout,
# not an error; a store that is really away still fails within two timeouts.
_RETRY_ON_TIMEOUT = _LoggedRetry(ExponentialWithJitterBackoff(base=0.01, cap=0.5), retries=1)

# TCP keepalive on every connection: the kernel finds an idle connection to a vanished host
# after ~5 + 3 x 2 s instead of redis-py's default ~45 s, before a command has to time out on it.
_KEEPALIVE = {
    option: value
    for name, value in (("TCP_KEEPIDLE", 5), ("TCP_KEEPINTVL", 2), ("TCP_KEEPCNT", 3))
    if (option := getattr(socket, name, None)) is not None
}


def client(url: str, *, socket_timeout: float) -> RedisClient:
    """A redis-py asyncio client that notices a dead peer: socket timeouts, TCP keepalive (over
    TCP; a unix socket, the embedded store's, has no peer to lose), and a read re-sent once on a
    fresh connection after a timeout. RESP2 replies."""
    tcp = not url.startswith("unix:")
    keepalive: dict[str, Any] = {"socket_keepalive": True, "socket_keepalive_options": _KEEPALIVE} if tcp else {}
    return aioredis.Redis.from_url(
        url,
        protocol=2,
        socket_timeout=socket_timeout,
        socket_connect_timeout=COMMAND_TIMEOUT_S,
        retry=_RETRY_ON_TIMEOUT,
        retry_on_timeout=True,
        **keepalive,
    )


class Connections:
    """The clients of one process. Without a Redis URL (`up`'s fallback where no valkey-server wheel
    exists), all share one in-process fake server. With `cluster` (see `connect`, which detects
    it), both are cluster clients (`cluster_client`)."""

    def __init__(
        self, settings: Settings, *, fake_server: fakeredis.FakeServer | None = None, cluster: bool = False
    ) -> None:
        self.settings = settings
        self.cluster = cluster and settings.redis_url is not None
        if settings.redis_url is None:
            server = fake_server or fakeredis.FakeServer()
            self.commands: RedisClient = fakeredis.aioredis.FakeRedis(server=server, protocol=2)
            self.blocking: RedisClient = fakeredis.aioredis.FakeRedis(server=server, protocol=2)
        else:
            make = cluster_client if self.cluster else client
            self.commands = make(settings.redis_url, socket_timeout=COMMAND_TIMEOUT_S)
            # Blocking XREAD/XREADGROUP wait up to their BLOCK time, so blocking readers get a
            # client of their own whose timeout is above the longest BLOCK.
            self.blocking = make(settings.redis_url, socket_timeout=BLOCKING_TIMEOUT_S)

    async def close(self) -> None:
        """Close both clients' connections. Raises redis errors only for a broken connection."""
        await self.commands.aclose()
        await self.blocking.aclose()


# --- Redis Cluster: detected, not configured --------------------------------------------------
# The same REDIS_URL names a standalone server or any node of a cluster; `connect` asks the
# server which it is and builds the matching clients. Every key of a deployment shares one hash
# tag (keys.py), so on a cluster everything lives in one slot: scripts stay atomic, pipelines go
# to one node, blocking reads name one key.

# Connections per cluster node and client: redis-py's default (100) would refuse a blocking
# reader beyond it (MaxConnectionsError), where a standalone client's pool has no such bound.
CLUSTER_MAX_CONNECTIONS_PER_NODE = 10_000

# A command that met a dropped connection or a topology change (a failover, a slot moved) is
# re-sent after the cluster client reloads the slot map: our scripts are idempotent.
_CLUSTER_RETRY = Retry(ExponentialWithJitterBackoff(base=0.01, cap=0.5), retries=3)


def unparsed(redis: object, name: str) -> str | bytes:
    """`name` (an upper-case command name) spelled so that `redis`'s response callbacks match
    none, and the reply comes back as Redis sent it: as bytes for a standalone client (its
    callbacks are looked up by text); in lower case for a cluster client, which needs text (to
    route it) and looks its callbacks up by their upper-case names."""
    if isinstance(redis, aioredis.RedisCluster | aioredis.cluster.ClusterPipeline):
        return name.lower()
    return name.encode()


async def routed_to(redis: object, key: str) -> dict[str, Any]:
    """Options for `execute_command` that send a keyless command (TIME) to the server holding
    `key`, on `redis` or on a pipeline of it: on a cluster, the node serving `key`'s slot, whose
    clock that slot's scripts read (redis-py would pick a random node, and its cluster pipeline
    refuses `time()`); nothing to add on a standalone client. Loads the slot map if need be."""
    if isinstance(redis, aioredis.cluster.ClusterPipeline):
        redis = redis.cluster_client
    if not isinstance(redis, aioredis.RedisCluster):
        return {}
    await redis.initialize()
    return {"target_nodes": redis.get_node_from_key(key)}


async def is_cluster(url: str) -> bool:
    """True when the server at `url` runs in cluster mode (`INFO cluster` says cluster_enabled:1),
    False for a standalone server and for a unix socket (the embedded store). One round trip on a
    client of its own, closed after. Raises redis errors (unreachable, refused)."""
    if url.startswith("unix:"):
        return False
    probe = aioredis.Redis.from_url(
        url, protocol=2, socket_timeout=COMMAND_TIMEOUT_S, socket_connect_timeout=COMMAND_TIMEOUT_S
    )
    try:
        info = await probe.info("cluster")
    finally:
        await probe.aclose()
    return str(info.get("cluster_enabled", 0)) == "1"


async def _disconnect_free_connections(node: aioredis.cluster.ClusterNode) -> None:
    """Close `node`'s idle connections, out of its free list while they close."""
    free = tuple(node._free)
    node._free.clear()
    try:
        await asyncio.gather(*(connection.disconnect() for connection in free), return_exceptions=True)
    finally:
        node._free.extend(free)


async def _disconnect_node(node: aioredis.cluster.ClusterNode) -> None:
    """Close `node`'s idle connections now, and each connection in use once its command is done."""
    idle = set(node._free)
    for connection in node._connections:
        if connection not in idle:
            connection.mark_for_reconnect()  # type: ignore[no-untyped-call]
    await _disconnect_free_connections(node)


def _close_connections_unshared() -> None:
    """Work around races in redis-py 8.1's asyncio cluster client, met when a master is killed.
    On a connection error or CLUSTERDOWN it closes connections other commands are using (every
    connection of every node, through `RedisCluster.aclose`, before it reloads the slot map) or
    may take meanwhile (idle ones, closed while still in the free list); such a command finds its
    socket set to None under it (AttributeError: 'NoneType' object has no attribute
    'writelines'), which is no redis error: it crashed a worker and the projector in
    tests/test_cluster_failover.py. Here idle connections leave the free list while they close,
    and connections in use close once their command is done (redis-py's own lazy reconnect).
    Idempotent."""
    node = aioredis.cluster.ClusterNode
    node.disconnect_free_connections = _disconnect_free_connections  # type: ignore[method-assign,assignment]
    node.disconnect = _disconnect_node  # type: ignore[method-assign,assignment]


async def ready_for_concurrent_calls(client: RedisClient) -> None:
    """Load a cluster client's slot map before calls are made on it concurrently: redis-py 8.1's
    async cluster client fails some of the concurrent first calls of a fresh client (AttributeError
    on a connection it is still opening) and re-sends others (measured here). No round trip once
    loaded; nothing to do on a standalone client."""
    if isinstance(client, aioredis.RedisCluster):
        await client.initialize()


def cluster_client(url: str, *, socket_timeout: float) -> aioredis.RedisCluster:
    """A redis-py asyncio cluster client started from the node `url` names (it discovers the
    others): socket timeouts, TCP keepalive, RESP2 replies, as `client`. It follows MOVED/ASK
    redirections and reloads the slot map on a topology change (see `_CLUSTER_RETRY`)."""
    _close_connections_unshared()
    return aioredis.RedisCluster.from_url(
        url,
        protocol=2,
        socket_timeout=socket_timeout,
        socket_connect_timeout=COMMAND_TIMEOUT_S,
        socket_keepalive=True,
        socket_keepalive_options=_KEEPALIVE,
        max_connections=CLUSTER_MAX_CONNECTIONS_PER_NODE,
        retry=_CLUSTER_RETRY,
    )


async def connect(settings: Settings, *, long_running: bool = False) -> Connections:
    """The process's `Connections`: cluster clients when the server at `settings.redis_url` is a
    node of a Redis Cluster (`is_cluster`), plain clients otherwise, the in-process fake without
    a URL. A `long_running` role (API, worker, projector) waits out an unreachable store as
    `until_reachable` does and logs `store.cluster_detected` on a cluster; a one-shot command
    raises the redis error at once (as its first command would) and logs nothing."""
    url = settings.redis_url
    if url is None:
        return Connections(settings)
    if not long_running:
        return Connections(settings, cluster=await is_cluster(url))
    cluster = await until_reachable(lambda: is_cluster(url), doing="detect cluster mode")
    if cluster:
        log.info("store.cluster_detected")
    return Connections(settings, cluster=cluster)
