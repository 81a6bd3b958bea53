"""Audit and replay subcommands: `audit`, `replay`, `export`, `retention` (they read Redis directly:
REDIS_URL's, or the embedded store of the home)."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

import msgspec

from orchestrator.cli.home import HOME_HELP, HomeError, store_for
from orchestrator.domain.history import event_view
from orchestrator.domain.timeline import as_of_id
from orchestrator.domain.views import to_api
from orchestrator.settings import Settings
from orchestrator.storage.connections import Connections
from orchestrator.storage.keys import Keys
from orchestrator.storage.readmodel import HistoryArchived, ReadModel


def _summary(line: dict[str, Any]) -> str:
    data = dict(line["data"])
    if "spec" in data:
        spec = data.pop("spec")
        data = {"strategy": spec["strategy"], "symbol": spec["symbol"], "params": spec.get("params", {}), **data}
    if "result" in data:
        metrics = data.pop("result").get("metrics", {})
        data.update({k: metrics[k] for k in ("return_pct", "sharpe", "num_trades") if k in metrics})
    return " ".join(f"{k}={json.dumps(v, separators=(',', ':'))}" for k, v in data.items())


class _Progress:
    """A progress bar with the rate, on a terminal; nothing otherwise."""

    def __init__(self, total: int, label: str) -> None:
        self.total, self.label, self.done = max(total, 1), label, 0
        self.started = time.perf_counter()
        self.tty = sys.stderr.isatty()

    def __call__(self, count: int) -> None:
        self.done += count
        if self.tty:
            share = min(self.done / self.total, 1.0)
            rate = self.done / max(time.perf_counter() - self.started, 1e-9)
            bar = "#" * int(share * 30)
            print(
                f"\r{self.label} [{bar:<30}] {share:4.0%} {self.done:,} events {rate:,.0f}/s",
                end="",
                file=sys.stderr,
                flush=True,
            )

    def close(self) -> None:
        if self.tty:
            print(file=sys.stderr)


async def _audit(args: argparse.Namespace, settings: Settings) -> int:
    conns = Connections(settings)
    try:
        keys = Keys(prefix=settings.prefix)
        # The same read model as the API and the dashboard: a task retention compacted still exists.
        history = await ReadModel(conns.commands, keys, follow_live=True).history(args.task_id)
        if history is None:
            print(f"backstream audit: no task {args.task_id}", file=sys.stderr)
            return 1
        if args.as_of:
            try:
                state = history.as_of(as_of_id(args.as_of))
            except ValueError as e:
                print(f"backstream audit: --as-of {e}", file=sys.stderr)
                return 2
            except HistoryArchived as e:
                print(f"backstream audit: --as-of {args.as_of}: {e}", file=sys.stderr)
                return 1
            if state is None:
                print(f"backstream audit: task {args.task_id} did not exist as of {args.as_of}", file=sys.stderr)
                return 1
            print(json.dumps(to_api(state), indent=None if args.json else 2))
            return 0
        if history.archived is not None:
            # Not a JSON line: --json output stays one event per line.
            print(f"earlier history: {history.archived.describe()}", file=sys.stderr if args.json else sys.stdout)
        events = history.events
        for stored in events:
            line = event_view(stored)
            if args.json:
                print(json.dumps(line, separators=(",", ":")))
            else:
                print(f"{line['time']}  {line['type']:<16} attempt={line['attempt']}  {_summary(line)}")
        return 0
    finally:
        await conns.close()


async def _replay(args: argparse.Namespace, settings: Settings) -> int:
    from consumers.maintenance import replay
    from consumers.maintenance.archive import read_entries

    conns = Connections(settings)
    keys = Keys(prefix=settings.prefix)
    archives = [Path(p) for p in args.archive]
    total = await conns.commands.xlen(keys.events) + sum(1 for p in archives for _ in read_entries(p))
    progress = _Progress(total, "replay")
    try:
        if args.rebuild:
            done = await replay.rebuild(conns.commands, keys, archives=archives, on_batch=progress)
            progress.close()
            print(
                f"rebuilt projection {done.projection}: {done.events:,} events in {done.seconds:.2f} s "
                f"({done.rate:,.0f} events/s); it is live now"
            )
            return 0
        checked = await replay.verify_replay(conns.commands, keys, archives=archives, on_batch=progress)
        progress.close()
        for d in checked.differences:
            print(f"DIFF {d.key} {d.field}: live={d.live} replayed={d.replayed}")
        tasks = len({d.key for d in checked.differences})
        print(
            f"verified projection {checked.projection}: {checked.events:,} events in {checked.seconds:.2f} s "
            f"({checked.rate:,.0f} events/s); {len(checked.differences)} differences in {tasks} keys"
        )
        return 1 if checked.differences else 0
    finally:
        await conns.close()


async def _export(args: argparse.Namespace, settings: Settings) -> int:
    from consumers.maintenance.archive import export

    conns = Connections(settings)
    keys = Keys(prefix=settings.prefix)
    try:
        since = _range_bound(args.since, "-", low=True)
        until = _range_bound(args.until, "+", low=False)
        count, last = await export(conns.commands, keys, Path(args.file), since=since, until=until)
        if last is not None and since == "-":
            await conns.commands.set(keys.archived_through, last)
        print(f"exported {count:,} events to {args.file}" + (f" (through {last})" if last else ""))
        return 0
    finally:
        await conns.close()


async def _retention(args: argparse.Namespace, settings: Settings) -> int:
    from consumers.maintenance.retention import apply_retention

    conns = Connections(settings)
    try:
        report = await apply_retention(
            conns.commands, Keys(prefix=settings.prefix), horizon_ms=args.horizon, dry_run=args.dry_run
        )
        print(json.dumps(msgspec.to_builtins(report), indent=2))
        return 0
    finally:
        await conns.close()


def _duration_ms(value: str) -> int:
    units = {"s": 1_000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}
    try:
        return int(float(value[:-1]) * units[value[-1]]) if value[-1] in units else int(float(value) * 1000)
    except (ValueError, IndexError):
        raise argparse.ArgumentTypeError(f"{value!r}: use a number with s, m, h or d (e.g. 30d)") from None


def _range_bound(value: str | None, default: str, *, low: bool) -> str:
    if value is None:
        return default
    ms, seq = as_of_id(value)
    if low and "-" not in value:
        seq = 0
    return f"{ms}-{seq}"


def _needs_redis(run: Any) -> Any:
    """Run the command on REDIS_URL's Redis or, without it, on the embedded store of the home:
    the running `backstream up`'s, or one this command starts and stops itself."""

    def wrapped(args: argparse.Namespace, settings: Settings) -> int:
        if settings.redis_url is not None:
            return int(asyncio.run(run(args, settings)))
        assert settings.home is not None
        try:
            with store_for(Path(settings.home), args.command) as url:
                return int(asyncio.run(run(args, msgspec.structs.replace(settings, redis_url=url))))
        except HomeError as e:
            print(f"backstream {args.command}: {e}", file=sys.stderr)
            return 2

    return wrapped


def register(sub: Any) -> None:
    audit = sub.add_parser("audit", help="a task's full history (or its state as of a moment)")
    audit.add_argument("task_id")
    audit.add_argument("--json", action="store_true", help="JSON lines, as GET …/events gives them")
    audit.add_argument("--as-of", help="a stream id or ISO time: print the task's state as it was then")
    audit.add_argument("--home", help=HOME_HELP)
    audit.set_defaults(run=_needs_redis(_audit))

    replay = sub.add_parser("replay", help="fold the whole log into fresh keys: verify or rebuild the projection")
    mode = replay.add_mutually_exclusive_group(required=True)
    mode.add_argument(
        "--verify",
        action="store_true",
        help="compare with the live projection field by field; exit 1 on any difference",
    )
    mode.add_argument(
        "--rebuild",
        action="store_true",
        help="build a new projection beside the live one, then switch to it atomically",
    )
    replay.add_argument(
        "--archive", action="append", default=[], help="an exported archive to read before the live log (repeatable)"
    )
    replay.add_argument("--home", help=HOME_HELP)
    replay.set_defaults(run=_needs_redis(_replay))

    export = sub.add_parser("export", help="write the log to newline-delimited JSON (.gz compresses)")
    export.add_argument("file")
    export.add_argument("--since", help="stream id or ISO time (default: the beginning)")
    export.add_argument("--until", help="stream id or ISO time (default: now)")
    export.add_argument("--home", help=HOME_HELP)
    export.set_defaults(run=_needs_redis(_export))

    retention = sub.add_parser(
        "retention", help="trim the log older than a horizon, once archived and folded into every projection"
    )
    retention.add_argument("--horizon", type=_duration_ms, required=True, help="keep this much: 30d, 12h, …")
    retention.add_argument("--dry-run", action="store_true", help="report what would be trimmed")
    retention.add_argument("--home", help=HOME_HELP)
    retention.set_defaults(run=_needs_redis(_retention))
