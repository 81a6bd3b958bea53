"""Script calls made at the same moment by many tasks go to Redis in one pipeline."""

from __future__ import annotations

import asyncio
from typing import Any, NamedTuple

from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError, ResponseError

from orchestrator.storage.connections import RedisClient, routed_to

# How long a batch waits for its replicas' acknowledgement (WAIT's timeout), when asked to: well
# under the commands' socket timeout (connections.COMMAND_TIMEOUT_S), so a missing replica is a
# refusal, not a dropped connection.
REPLICA_ACK_TIMEOUT_MS = 1_000


def resolve(future: asyncio.Future[Any], outcome: Any) -> None:
    """Hand a waiting caller its outcome: an exception is raised in it, anything else returned.
    A caller that stopped waiting (its task was cancelled) is skipped."""
    if future.done():
        return
    if isinstance(outcome, Exception):
        future.set_exception(outcome)
    else:
        future.set_result(outcome)


class Call(NamedTuple):
    """A script call, with plain commands to send just before it in the same round trip (a large
    value is cheaper to SET than to pass through Lua)."""

    script: AsyncScript
    keys: list[Any]
    args: list[Any]
    before: tuple[tuple[Any, ...], ...]


class ScriptBatcher:
    """Coalesces the script calls issued in one turn of the event loop into one round trip.

    A worker running many short tasks claims, renews and finishes them concurrently; each call
    alone would cost a round trip (~80 µs here, more than a small task's own work). Calls are
    queued, and the first one schedules a flush after the tasks that are ready have run, so a
    lone call waits only for that one turn of the loop. Replies, and errors, go back to each
    caller. Scripts missing on the server (after a restart) are loaded and the calls retried.

    With `replica_acks` > 0, each round trip ends with `WAIT replica_acks REPLICA_ACK_TIMEOUT_MS`
    on every node it wrote to, on the same connection as the scripts (WAIT counts the replicas
    that have that connection's writes): a call whose node got fewer acknowledgements raises a
    NOREPLICAS ResponseError (its write is applied on the master, not yet on enough replicas)."""

    def __init__(self, redis: RedisClient, *, replica_acks: int = 0) -> None:
        self.redis = redis
        self.replica_acks = replica_acks
        self._queue: list[tuple[Call, asyncio.Future[Any]]] = []
        self._flush_scheduled = False

    async def call(
        self, script: AsyncScript, keys: list[Any], args: list[Any], before: tuple[tuple[Any, ...], ...] = ()
    ) -> Any:
        """Run `script` with `keys` and `args` (after the plain commands `before`) in the next
        round trip, and return its raw reply. Raises the script's error (ResponseError), that of
        a command sent before it, or the round trip's (an outage) to this caller only."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._queue.append((Call(script, keys, args, before), future))
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(lambda: asyncio.ensure_future(self._flush()))
        return await future

    async def _flush(self) -> None:
        batch, self._queue, self._flush_scheduled = self._queue, [], False
        try:
            replies = await self._execute([call for call, _ in batch])
        except Exception as e:  # the whole round trip failed (e.g. Redis unreachable)
            for _, future in batch:
                resolve(future, e)
            return
        for (_, future), reply in zip(batch, replies, strict=True):
            resolve(future, reply)

    async def _execute(self, calls: list[Call]) -> list[Any]:
        async with self.redis.pipeline(transaction=False) as pipe:
            for script, keys, args, before in calls:
                for command in before:
                    pipe.execute_command(*command)
                # Not `pipe.evalsha`: redis-py 8.1's cluster pipeline refuses it (redis-py#2914);
                # the raw command is the same EVALSHA on both clients.
                pipe.execute_command("EVALSHA", script.sha, len(keys), *keys, *args)
            nodes = await self._wait_for_replicas(pipe, calls) if self.replica_acks else []
            sent = await pipe.execute(raise_on_error=False)
            sent, acks = sent[: len(sent) - len(nodes)], sent[len(sent) - len(nodes) :]
        replies, at = [], 0
        for call in calls:
            own = sent[at : at + len(call.before) + 1]
            at += len(own)
            # The script's reply, unless a command sent before it failed (out of memory, say).
            replies.append(next((r for r in own[:-1] if isinstance(r, Exception)), own[-1]))
        for on_node, ack in zip(nodes, acks, strict=True):
            if isinstance(ack, Exception) or int(ack) < self.replica_acks:
                short = ack if isinstance(ack, Exception) else self._too_few(int(ack))
                for i in on_node:
                    replies[i] = replies[i] if isinstance(replies[i], Exception) else short
        missing = [i for i, reply in enumerate(replies) if isinstance(reply, NoScriptError)]
        if missing:
            # On a cluster SCRIPT LOAD goes to every primary: each node has its own script cache.
            for script in {id(calls[i].script): calls[i].script for i in missing}.values():
                script.sha = await self.redis.script_load(script.script)
            retried = await self._execute([calls[i] for i in missing])
            for i, reply in zip(missing, retried, strict=True):
                replies[i] = reply
        return replies

    async def _wait_for_replicas(self, pipe: Any, calls: list[Call]) -> list[list[int]]:
        """Queue one WAIT on `pipe` per node that `calls` write to (one on a standalone server),
        after their scripts; the indexes of the calls on each node, in the order of the WAITs."""
        nodes: dict[str, tuple[dict[str, Any], list[int]]] = {}
        for i, call in enumerate(calls):
            key = call.keys[0]
            routing = await routed_to(pipe, key.decode() if isinstance(key, bytes) else str(key))
            node = routing["target_nodes"].name if routing else ""
            nodes.setdefault(node, (routing, []))[1].append(i)
        for routing, _ in nodes.values():
            pipe.execute_command("WAIT", self.replica_acks, REPLICA_ACK_TIMEOUT_MS, **routing)
        return [indexes for _, indexes in nodes.values()]

    def _too_few(self, acks: int) -> ResponseError:
        return ResponseError(
            f"NOREPLICAS {acks} of {self.replica_acks} replicas acknowledged the write within "
            f"{REPLICA_ACK_TIMEOUT_MS} ms: it is applied on the master and would be lost if the master failed now"
        )
