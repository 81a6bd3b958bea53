"""The `backstream` command: the one composition root. Each group of subcommands registers itself."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import msgspec

from orchestrator.cli import audit, logs, partitions, results, roles, tasks
from orchestrator.cli.home import HOME_HELP, running_api_url
from orchestrator.settings import DEFAULT_API_URL, Settings
from orchestrator.storage.partitions import LayoutMismatch

# Modules that add subcommands: each has `register(subparsers)`, and every subcommand it adds
# sets `run(args, settings) -> exit code`.
COMMAND_GROUPS = [roles, audit, tasks, results, partitions]


def build_parser() -> argparse.ArgumentParser:
    """The `backstream` parser with every subcommand; each parsed command has `run(args, settings)`."""
    parser = argparse.ArgumentParser(
        prog="backstream", description="An event-sourced backtest orchestrator on Redis Streams."
    )
    parser.add_argument("--log-json", action="store_true", default=None, help="JSON logs even on a terminal")
    sub = parser.add_subparsers(dest="command", required=True)
    for group in COMMAND_GROUPS:
        group.register(sub)
    # The HTTP client commands find the API of the `backstream up` running on the home.
    for command in sub.choices.values():
        if any(action.dest == "url" for action in command._actions) and not _has_home(command):
            command.add_argument("--home", help=HOME_HELP + "; its running `up` gives the API's URL")
    return parser


def _has_home(command: argparse.ArgumentParser) -> bool:
    return any(action.dest == "home" for action in command._actions)


# The exit code of a program whose reader went away (128 + SIGPIPE), as `yes | head` gives.
EXIT_BROKEN_PIPE = 141


def main(argv: Sequence[str] | None = None) -> int:
    """Run `backstream ARGV` (None: sys.argv); its exit code. A closed stdout ends it with 141."""
    try:
        return _main(argv)
    except BrokenPipeError:
        # The reader of our output closed it (`backstream audit --json | head`): end quietly. Point
        # stdout at /dev/null so the interpreter's final flush does not fail a second time.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_BROKEN_PIPE


def _main(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    logs.configure(json=args.log_json)
    try:
        settings = Settings.from_env()
    except (ValueError, OSError) as e:
        print(f"backstream: {e}", file=sys.stderr)
        return 2
    if getattr(args, "home", None):
        settings = msgspec.structs.replace(settings, home=args.home)
    # No --url and no BACKSTREAM_URL (or BACKSTREAM_URL at the default, which the home's `up`
    # then overrides): the API of the `up` running on the home, if one is.
    if getattr(args, "url", "") is None and settings.api_url == DEFAULT_API_URL and settings.home:
        args.url = running_api_url(Path(settings.home))
    try:
        return int(args.run(args, settings))
    except LayoutMismatch as e:
        # BACKSTREAM_PARTITIONS asks for another count than the deployment's: refuse, never rehash.
        print(f"backstream: {e}", file=sys.stderr)
        return 2
