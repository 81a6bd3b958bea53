"""Audit and replay subcommands: `audit`, `replay`, `export`, `retention` (they read Redis directly:
REDIS_URL's, or the embedded store of the home)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import msgspec

from consumers.maintenance import replay
from consumers.maintenance.archive import export_layout, read_entries
from consumers.maintenance.retention import apply_layout_retention
from orchestrator.cli.args import Subcommands, duration_ms
from orchestrator.cli.home import HOME_HELP
from orchestrator.cli.render import audit_line
from orchestrator.cli.stores import needs_redis
from orchestrator.domain.history import event_view
from orchestrator.domain.timeline import as_of_id
from orchestrator.domain.views import to_api
from orchestrator.settings import Settings
from orchestrator.storage.connections import connect
from orchestrator.storage.partitions import deployment_layout
from orchestrator.storage.readmodel import HistoryArchived, ReadModel


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
        """End the bar's line."""
        if self.tty:
            print(file=sys.stderr)


async def _audit(args: argparse.Namespace, settings: Settings) -> int:
    conns = await connect(settings)
    try:
        # The same read model as the API and the dashboard: a task retention compacted still exists.
        reads = ReadModel(conns.commands, await deployment_layout(conns), follow_live=True)
        history = await reads.history(args.task_id)
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
            print(json.dumps(line, separators=(",", ":")) if args.json else audit_line(line))
        return 0
    finally:
        await conns.close()


async def _replay(args: argparse.Namespace, settings: Settings) -> int:
    conns = await connect(settings)
    archives = [Path(p) for p in args.archive]
    try:
        layout = await deployment_layout(conns)
        logged = sum([await conns.commands.xlen(keys.events) for keys in layout.partitions])
        progress = _Progress(logged + sum(1 for p in archives for _ in read_entries(p)), "replay")
        if args.rebuild:
            done = await replay.rebuild(conns.commands, layout, archives=archives, on_batch=progress)
            progress.close()
            print(
                f"rebuilt projection {done.projection}: {done.events:,} events in {done.seconds:.2f} s "
                f"({done.rate:,.0f} events/s); it is live now"
            )
            return 0
        checked = await replay.verify_replay(conns.commands, layout, archives=archives, on_batch=progress)
        progress.close()
        for d in checked.differences:
            where = f"p{d.partition:02d} " if layout.width > 1 else ""
            print(f"DIFF {where}{d.key} {d.field}: live={d.live} replayed={d.replayed}")
        tasks = len({(d.partition, d.key) for d in checked.differences})
        print(
            f"verified projection {checked.projection}: {checked.events:,} events in {checked.seconds:.2f} s "
            f"({checked.rate:,.0f} events/s); {len(checked.differences)} differences in {tasks} keys"
        )
        return 1 if checked.differences else 0
    finally:
        await conns.close()


async def _export(args: argparse.Namespace, settings: Settings) -> int:
    conns = await connect(settings)
    try:
        layout = await deployment_layout(conns)
        since = _range_bound(args.since, "-", low=True)
        until = _range_bound(args.until, "+", low=False)
        written = await export_layout(conns.commands, layout, Path(args.file), since=since, until=until)
        if since == "-":
            for part in written:
                if part.last is not None:
                    await conns.commands.set(layout.partition(part.partition).archived_through, part.last)
        count = sum(part.count for part in written)
        if layout.width == 1:
            last = written[0].last
            print(f"exported {count:,} events to {args.file}" + (f" (through {last})" if last else ""))
        else:
            print(f"exported {count:,} events of {layout.width} partitions to {args.file}")
        return 0
    finally:
        await conns.close()


async def _retention(args: argparse.Namespace, settings: Settings) -> int:
    conns = await connect(settings)
    try:
        layout = await deployment_layout(conns)
        report = await apply_layout_retention(conns.commands, layout, horizon_ms=args.horizon, dry_run=args.dry_run)
        # One partition: its report alone, as before partitions existed.
        shown = report.partitions[0] if layout.width == 1 else report
        print(json.dumps(msgspec.to_builtins(shown), indent=2))
        return 0
    finally:
        await conns.close()


def _range_bound(value: str | None, default: str, *, low: bool) -> str:
    if value is None:
        return default
    ms, seq = as_of_id(value)
    if low and "-" not in value:
        seq = 0
    return f"{ms}-{seq}"


def register(sub: Subcommands) -> None:
    """Add the audit and replay commands to `sub`."""
    audit = sub.add_parser("audit", help="a task's full history (or its state as of a moment)")
    audit.add_argument("task_id")
    audit.add_argument("--json", action="store_true", help="JSON lines, as GET …/events gives them")
    audit.add_argument("--as-of", help="a stream id or ISO time: print the task's state as it was then")
    audit.add_argument("--home", help=HOME_HELP)
    audit.set_defaults(run=needs_redis(_audit, embedded=True))

    replaying = sub.add_parser("replay", help="fold the whole log into fresh keys: verify or rebuild the projection")
    mode = replaying.add_mutually_exclusive_group(required=True)
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
    replaying.add_argument(
        "--archive", action="append", default=[], help="an exported archive to read before the live log (repeatable)"
    )
    replaying.add_argument("--home", help=HOME_HELP)
    replaying.set_defaults(run=needs_redis(_replay, embedded=True))

    exporting = sub.add_parser("export", help="write the log to newline-delimited JSON (.gz compresses)")
    exporting.add_argument("file")
    exporting.add_argument("--since", help="stream id or ISO time (default: the beginning)")
    exporting.add_argument("--until", help="stream id or ISO time (default: now)")
    exporting.add_argument("--home", help=HOME_HELP)
    exporting.set_defaults(run=needs_redis(_export, embedded=True))

    retention = sub.add_parser(
        "retention", help="trim the log older than a horizon, once archived and folded into every projection"
    )
    retention.add_argument("--horizon", type=duration_ms, required=True, help="keep this much: 30d, 12h, …")
    retention.add_argument("--dry-run", action="store_true", help="report what would be trimmed")
    retention.add_argument("--home", help=HOME_HELP)
    retention.set_defaults(run=needs_redis(_retention, embedded=True))
