"""What the subcommand modules share: the signature of a command, the subparsers they register
on, and the argument types more than one of them reads (durations, sizes)."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Coroutine
from typing import Any, TypeAlias

from orchestrator.settings import Settings

# A subcommand: its parsed arguments and the settings in, its exit code out.
Command = Callable[[argparse.Namespace, Settings], int]
# A subcommand that runs on Redis (see stores.needs_redis), as a coroutine.
AsyncCommand = Callable[[argparse.Namespace, Settings], Coroutine[Any, Any, int]]
# What `register(sub)` adds its subcommands to.
Subcommands: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


def duration_ms(value: str) -> int:
    """`30d`, `12h`, `5m`, `90s` or bare seconds (`1.5`) in milliseconds; raises
    argparse.ArgumentTypeError otherwise."""
    units = {"s": 1_000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}
    try:
        return int(float(value[:-1]) * units[value[-1]]) if value[-1] in units else int(float(value) * 1000)
    except (ValueError, IndexError):
        raise argparse.ArgumentTypeError(f"{value!r}: use a number with s, m, h or d (e.g. 30d)") from None


def size_bytes(value: str) -> int:
    """`500M`, `20G`, `1.5t`, `64kb` (binary units) or bare bytes in bytes; raises
    argparse.ArgumentTypeError otherwise."""
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
    text = value.strip().lower().removesuffix("b")
    try:
        return int(float(text[:-1]) * units[text[-1]]) if text and text[-1] in units else int(text)
    except (ValueError, IndexError):
        raise argparse.ArgumentTypeError(f"{value!r}: a size such as 500M, 20G or 1048576") from None


def add_api_options(parser: argparse.ArgumentParser) -> None:
    """`--url` and `--token`: which API an HTTP command talks to, and as whom."""
    parser.add_argument("--url", help="the API (default: BACKSTREAM_URL or http://127.0.0.1:8000)")
    parser.add_argument("--token", help="a bearer token (default: BACKSTREAM_TOKEN)")
