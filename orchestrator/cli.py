"""The `backstream` command: the one composition root. Each group of subcommands registers itself."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from orchestrator import audit_commands, client, logs, roles
from orchestrator.settings import Settings

# Modules that add subcommands: each has `register(subparsers)`, and every subcommand it adds
# sets `run(args, settings) -> exit code`.
COMMAND_GROUPS = [roles, audit_commands, client]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="backstream", description="An event-sourced backtest orchestrator on Redis Streams."
    )
    parser.add_argument("--log-json", action="store_true", default=None, help="JSON logs even on a terminal")
    sub = parser.add_subparsers(dest="command", required=True)
    for group in COMMAND_GROUPS:
        group.register(sub)
    return parser


# The exit code of a program whose reader went away (128 + SIGPIPE), as `yes | head` gives.
EXIT_BROKEN_PIPE = 141


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        logs.configure(json=args.log_json)
        return int(args.run(args, Settings.from_env()))
    except BrokenPipeError:
        # The reader of our output closed it (`backstream audit --json | head`): end quietly. Point
        # stdout at /dev/null so the interpreter's final flush does not fail a second time.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_BROKEN_PIPE


if __name__ == "__main__":
    raise SystemExit(main())
