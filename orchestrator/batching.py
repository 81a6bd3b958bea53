"""Script calls made at the same moment by many tasks go to Redis in one pipeline."""

from __future__ import annotations

import asyncio
from typing import Any

from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError


def resolve(future: asyncio.Future[Any], outcome: Any) -> None:
    """Hand a waiting caller its outcome: an exception is raised in it, anything else returned.
    A caller that stopped waiting (its task was cancelled) is skipped."""
    if future.done():
        return
    if isinstance(outcome, Exception):
        future.set_exception(outcome)
    else:
        future.set_result(outcome)


# A script call: the script, its keys and arguments, and plain commands sent just before it in
# the same round trip (a large value is cheaper to SET than to pass through Lua).
Call = tuple[AsyncScript, list[Any], list[Any], tuple[tuple[Any, ...], ...]]


class ScriptBatcher:
    """Coalesces the script calls issued in one turn of the event loop into one round trip.

    A worker running many short tasks claims, renews and finishes them concurrently; each call
    alone would cost a round trip (~80 µs here, more than a small task's own work). Calls are
    queued, and the first one schedules a flush after the tasks that are ready have run, so a
    lone call waits only for that one turn of the loop. Replies, and errors, go back to each
    caller. Scripts missing on the server (after a restart) are loaded and the calls retried."""

    def __init__(self, redis: Any) -> None:
        self.redis = redis
        self._queue: list[tuple[Call, asyncio.Future[Any]]] = []
        self._flush_scheduled = False

    async def call(
        self, script: AsyncScript, keys: list[Any], args: list[Any], before: tuple[tuple[Any, ...], ...] = ()
    ) -> Any:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._queue.append(((script, keys, args, before), future))
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
                pipe.evalsha(script.sha, len(keys), *keys, *args)
            sent = await pipe.execute(raise_on_error=False)
        # Each call's reply is its script's: the one after its commands sent before.
        replies, at = [], -1
        for call in calls:
            at += len(call[3]) + 1
            replies.append(sent[at])
        missing = [i for i, reply in enumerate(replies) if isinstance(reply, NoScriptError)]
        if missing:
            for script in {id(calls[i][0]): calls[i][0] for i in missing}.values():
                script.sha = await self.redis.script_load(script.script)
            retried = await self._execute([calls[i] for i in missing])
            for i, reply in zip(missing, retried, strict=True):
                replies[i] = reply
        return replies
