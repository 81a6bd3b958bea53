"""Script calls coalesced into one round trip: each caller gets its own reply or error."""

from __future__ import annotations

import asyncio

from redis.exceptions import ResponseError

from orchestrator.storage.batching import ScriptBatcher
from tests.conftest import Backend

# Returns its key and that key's value: shows what the commands sent before it left there.
READ_BACK = "return {KEYS[1], redis.call('GET', KEYS[1]) or ''}"


async def test_each_call_gets_its_own_reply_with_commands_sent_before_it(backend: Backend) -> None:
    batcher = ScriptBatcher(backend.redis)
    script = backend.redis.register_script(READ_BACK)
    await script(keys=[f"{backend.keys.prefix}:batch:warm-up"])  # loaded, so the calls below go out as one EVALSHA each
    plain, staged, twice, broken = (f"{backend.keys.prefix}:batch:{n}" for n in ("a", "b", "c", "d"))
    await backend.redis.set(broken, "not a number")
    replies = await asyncio.gather(
        batcher.call(script, [plain], []),
        batcher.call(script, [staged], [], before=(("SET", staged, "staged"),)),
        batcher.call(script, [twice], [], before=(("SET", twice, "a"), ("APPEND", twice, "b"))),
        batcher.call(script, [broken], [], before=(("INCR", broken),)),
        return_exceptions=True,
    )
    assert replies[:3] == [[plain.encode(), b""], [staged.encode(), b"staged"], [twice.encode(), b"ab"]]
    # A command sent before a script that fails is that caller's error, and only that caller's.
    assert isinstance(replies[3], ResponseError)
    await backend.redis.delete(staged, twice, broken)


async def test_a_script_missing_on_the_server_is_loaded_and_the_call_sent_again(backend: Backend) -> None:
    batcher = ScriptBatcher(backend.redis)
    script = backend.redis.register_script(READ_BACK)
    # As after a restart that lost the script cache (without flushing the shared server's).
    real_sha, script.sha = script.sha, "0" * 40
    key = f"{backend.keys.prefix}:batch:restarted"
    reply = await batcher.call(script, [key], [], before=(("SET", key, "kept"),))
    assert reply == [key.encode(), b"kept"]
    assert script.sha == real_sha
    await backend.redis.delete(key)
