"""The Lua scripts, loaded once per client. Each command script gets lib.lua prepended."""

from __future__ import annotations

from importlib import resources
from typing import Any

from redis.commands.core import AsyncScript


def _source(name: str) -> str:
    return resources.files(__name__).joinpath(f"{name}.lua").read_text()


class Scripts:
    """The scripts registered on one client; calling one runs EVALSHA (loading it on NOSCRIPT)."""

    def __init__(self, redis: Any) -> None:
        lib = _source("lib")
        self.submit: AsyncScript = redis.register_script(lib + _source("submit"))
        self.claim: AsyncScript = redis.register_script(lib + _source("claim"))
        self.take: AsyncScript = redis.register_script(lib + _source("take"))
        self.heartbeat: AsyncScript = redis.register_script(lib + _source("heartbeat"))
        self.finish: AsyncScript = redis.register_script(lib + _source("finish"))
        self.cancel: AsyncScript = redis.register_script(lib + _source("cancel"))
        self.release: AsyncScript = redis.register_script(lib + _source("release"))
        self.requeue: AsyncScript = redis.register_script(lib + _source("requeue"))
        self.drop_result: AsyncScript = redis.register_script(lib + _source("drop_result"))
        self.promote: AsyncScript = redis.register_script(_source("promote"))
        self.apply: AsyncScript = redis.register_script(_source("apply"))
        self.switch: AsyncScript = redis.register_script(_source("switch"))
        self.beat: AsyncScript = redis.register_script(_source("beat"))
        self.hgetall_many: AsyncScript = redis.register_script(_source("hgetall_many"))
