"""Result subcommands: `result` (download a task's full result or one table over HTTP) and
`results-retention` (delete old results from the results store, and orphans)."""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import urllib.parse
from http.client import HTTPResponse
from typing import BinaryIO

import msgspec

from consumers.maintenance.result_retention import ResultPolicy, apply_result_retention
from orchestrator.cli.args import Subcommands, add_api_options, duration_ms, size_bytes
from orchestrator.cli.home import HOME_HELP
from orchestrator.cli.stores import needs_redis
from orchestrator.client.http import Api, HttpError, Unreachable
from orchestrator.settings import Settings
from orchestrator.storage.commands import Commands
from orchestrator.storage.connections import connect
from orchestrator.storage.partitions import deployment_layout
from orchestrator.storage.readmodel import ReadModel
from orchestrator.storage.results.location import results_for

TABLES = ("equity", "trades", "sweep", "symbols")
REQUEST_TIMEOUT_S = 60.0


def _download(args: argparse.Namespace, settings: Settings) -> int:
    query = {"format": args.format}
    if args.table:
        query["table"] = args.table
    for name in ("sort", "where", "limit"):
        if getattr(args, name) is not None:
            query[name] = str(getattr(args, name))
    api = Api(args.url or settings.api_url, args.token or settings.api_token)
    path = f"/api/backtests/tasks/{urllib.parse.quote(args.task_id, safe='')}/result?{urllib.parse.urlencode(query)}"
    if args.format == "parquet" and args.output in (None, "-") and sys.stdout.isatty():
        print("backstream result: Parquet is binary; write it to a file with -o FILE", file=sys.stderr)
        return 2
    try:
        with api.open("GET", path, timeout=REQUEST_TIMEOUT_S) as reply:
            if args.output in (None, "-"):
                _copy(reply, sys.stdout.buffer)
                sys.stdout.flush()
            else:
                with open(args.output, "wb") as out:
                    _copy(reply, out)
    except HttpError as e:
        print(f"backstream result: {_problem(e)}", file=sys.stderr)
        return 1
    except (Unreachable, OSError) as e:
        reason = e.reason if isinstance(e, Unreachable) else e
        print(f"backstream result: cannot reach the Backstream API at {api.url}: {reason}", file=sys.stderr)
        return 1
    return 0


def _copy(reply: HTTPResponse, out: BinaryIO) -> None:
    shutil.copyfileobj(reply, out, 1 << 20)  # streamed: a large table never sits whole in memory


def _problem(error: HttpError) -> str:
    """`404 task_not_found: message (field: problem)`, or the status and reason phrase when the
    body is not the API's error shape."""
    if error.body is None:
        return f"{error.status} {error.reason}"
    fields = "; ".join(f"{f.field}: {f.message}" for f in error.body.fields if f.field)
    return f"{error.status} {error.body.error}: {error.body.message}" + (f" ({fields})" if fields else "")


async def _retention(args: argparse.Namespace, settings: Settings) -> int:
    results = results_for(settings)
    if results is None:
        print("backstream results-retention: no results store (set BACKSTREAM_RESULTS_URL)", file=sys.stderr)
        return 2
    policy = ResultPolicy(
        max_age_ms=args.max_age, max_count=args.max_count, max_bytes=args.max_bytes, orphan_grace_ms=args.orphan_grace
    )
    conns = await connect(settings)
    try:
        layout = await deployment_layout(conns)
        report = await apply_result_retention(
            Commands(conns.commands, layout),
            ReadModel(conns.commands, layout, follow_live=True),
            results,
            policy,
            dry_run=args.dry_run,
        )
        print(json.dumps(msgspec.to_builtins(report), indent=2))
        return 0
    finally:
        await conns.close()


def register(sub: Subcommands) -> None:
    """Add the result commands to `sub`."""
    result = sub.add_parser(
        "result", help="download a completed task's full result (JSON) or one table (JSON, CSV, Parquet)"
    )
    result.add_argument("task_id")
    result.add_argument("--table", choices=TABLES, help="one table instead of the whole result")
    result.add_argument("--format", choices=("json", "csv", "parquet"), default=None, help="default: json")
    result.add_argument("--sort", help="a sweep table's column, '-' for descending: -sharpe")
    result.add_argument("--where", help="a sweep table filter: num_trades>=10,sharpe>0.5")
    result.add_argument("--limit", type=int, help="at most this many rows of a sweep table")
    result.add_argument("-o", "--output", help="write to FILE (default: standard output)")
    add_api_options(result)

    def run_result(args: argparse.Namespace, settings: Settings) -> int:
        if args.format is None:  # from -o's extension, else CSV for a table, JSON for the whole
            extension = (args.output or "").rpartition(".")[2].lower()
            args.format = extension if extension in ("json", "csv", "parquet") else "csv" if args.table else "json"
        return _download(args, settings)

    result.set_defaults(run=run_result)

    retention = sub.add_parser(
        "results-retention", help="delete full results beyond an age, count or total size, and orphaned uploads"
    )
    retention.add_argument("--max-age", type=duration_ms, help="delete results older than this: 90d, 12h, …")
    retention.add_argument("--max-count", type=int, help="keep at most this many results (newest)")
    retention.add_argument("--max-bytes", type=size_bytes, help="keep at most this much in total (newest first): 50G")
    retention.add_argument(
        "--orphan-grace", type=duration_ms, default=6 * 3_600_000, help="collect orphaned uploads older than this (6h)"
    )
    retention.add_argument("--dry-run", action="store_true", help="report what would be deleted")
    retention.add_argument("--home", help=HOME_HELP)
    retention.set_defaults(run=needs_redis(_retention, embedded=True))
