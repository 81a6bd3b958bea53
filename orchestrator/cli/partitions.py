"""`backstream partitions [N]`: show the deployment's partitions, or change how many take new
tasks (a migration: see streams.md, "Partitions")."""

from __future__ import annotations

import argparse

from orchestrator.cli.args import Subcommands
from orchestrator.cli.home import HOME_HELP
from orchestrator.cli.stores import needs_redis
from orchestrator.settings import Settings
from orchestrator.storage.connections import connect
from orchestrator.storage.partitions import load_layout, set_partitions


async def _partitions(args: argparse.Namespace, settings: Settings) -> int:
    conns = await connect(settings)
    try:
        # The deployment's own record, whatever BACKSTREAM_PARTITIONS says (this is how it changes).
        layout = await load_layout(conns.commands, settings.prefix, requested=None, cluster=conns.cluster)
        if args.count is not None:
            layout = await set_partitions(conns.commands, layout, args.count)
            print("restart the API, workers and projectors to use it (they read the count when they start)")
        print(f"partitions: {layout.count} take new tasks, {layout.width} are read")
        return 0
    finally:
        await conns.close()


def _count(raw: str) -> int:
    try:
        count = int(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{raw!r} is not an integer") from None
    if count < 1:
        raise argparse.ArgumentTypeError(f"{raw!r}: a deployment has at least one partition")
    return count


def register(sub: Subcommands) -> None:
    """Add the `partitions` command to `sub`."""
    command = sub.add_parser(
        "partitions", help="show the deployment's partitions, or send new tasks to N of them (a migration)"
    )
    command.add_argument("count", nargs="?", type=_count, help="how many partitions new tasks go to from now on")
    command.add_argument("--home", help=HOME_HELP)
    command.set_defaults(run=needs_redis(_partitions, embedded=True))
