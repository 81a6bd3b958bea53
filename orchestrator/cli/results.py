"""Result subcommands: `result` (download a task's full result or one table over HTTP) and
`results-retention` (delete old results from the results store, and orphans)."""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import urllib.error
import urllib.parse
import urllib.request
from typing import Any, BinaryIO

import msgspec

from orchestrator.settings import Settings

TABLES = ("equity", "trades", "sweep", "symbols")
REQUEST_TIMEOUT_S = 60.0
# The main metrics `backstream status` shows for each of a sweep's top rows.
TOP_COLUMNS = ("return_pct", "sharpe", "max_drawdown_pct", "win_rate_pct", "num_trades")


def top_rows_text(result: dict[str, Any]) -> str:
    """A sweep summary's top rows (best first by its objective) as an aligned text table; ""
    when the summary has none (a single backtest, or a result stored before `top` existed)."""
    top = result.get("top") or []
    if not top:
        return ""
    names = sorted({k for row in top for k in (row.get("params") or {})})
    header = ["#", *names, "objective", *TOP_COLUMNS]
    lines = [header]
    for i, row in enumerate(top, start=1):
        params = row.get("params") or {}
        cells = [params.get(n) for n in names] + [row.get("objective")] + [row.get(c) for c in TOP_COLUMNS]
        lines.append([str(i), *(_cell(v) for v in cells)])
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    body = "\n".join("  ".join(c.rjust(w) for c, w in zip(line, widths, strict=True)) for line in lines)
    return f"top {len(top)} of {result.get('combinations')} by {result.get('objective')}:\n{body}"


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1e-3 and value != 0 else f"{value:,.2f}"
    return str(value)


def _download(args: argparse.Namespace, settings: Settings) -> int:
    query = {"format": args.format}
    if args.table:
        query["table"] = args.table
    for name in ("sort", "where", "limit"):
        if getattr(args, name) is not None:
            query[name] = str(getattr(args, name))
    base = (args.url or settings.api_url).rstrip("/")
    task_id = urllib.parse.quote(args.task_id, safe="")
    request = urllib.request.Request(f"{base}/api/backtests/tasks/{task_id}/result?{urllib.parse.urlencode(query)}")
    token = args.token or settings.api_token
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    if args.format == "parquet" and args.output in (None, "-") and sys.stdout.isatty():
        print("backstream result: Parquet is binary; write it to a file with -o FILE", file=sys.stderr)
        return 2
    try:
        with urllib.request.urlopen(request, timeout=REQUEST_TIMEOUT_S) as reply:  # the user's URL
            if args.output in (None, "-"):
                _copy(reply, sys.stdout.buffer)
                sys.stdout.flush()
            else:
                with open(args.output, "wb") as out:
                    _copy(reply, out)
    except urllib.error.HTTPError as e:
        print(f"backstream result: {_problem(e)}", file=sys.stderr)
        return 1
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        print(f"backstream result: cannot reach the Backstream API at {base}: {reason}", file=sys.stderr)
        return 1
    return 0


def _copy(reply: Any, out: BinaryIO) -> None:
    shutil.copyfileobj(reply, out, 1 << 20)  # streamed: a large table never sits whole in memory


def _problem(error: urllib.error.HTTPError) -> str:
    try:
        body = json.loads(error.read())
        fields = "; ".join(f"{f['field']}: {f['message']}" for f in body.get("fields", []) if f.get("field"))
        return f"{error.code} {body.get('error', '')}: {body.get('message', '')}" + (f" ({fields})" if fields else "")
    except (ValueError, AttributeError):
        return f"{error.code} {error.reason}"


async def _retention(args: argparse.Namespace, settings: Settings) -> int:
    from consumers.maintenance.result_retention import ResultPolicy, apply_result_retention
    from orchestrator.storage.connections import Connections
    from orchestrator.storage.keys import Keys
    from orchestrator.storage.readmodel import ReadModel
    from orchestrator.storage.results import results_for
    from orchestrator.storage.store import EventStore

    results = results_for(settings)
    if results is None:
        print("backstream results-retention: no results store (set BACKSTREAM_RESULTS_URL)", file=sys.stderr)
        return 2
    policy = ResultPolicy(
        max_age_ms=args.max_age, max_count=args.max_count, max_bytes=args.max_bytes, orphan_grace_ms=args.orphan_grace
    )
    conns = Connections(settings)
    keys = Keys(prefix=settings.prefix)
    try:
        report = await apply_result_retention(
            EventStore(conns.commands, keys),
            ReadModel(conns.commands, keys, follow_live=True),
            results,
            policy,
            dry_run=args.dry_run,
        )
        print(json.dumps(msgspec.to_builtins(report), indent=2))
        return 0
    finally:
        await conns.close()


def _size(value: str) -> int:
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
    text = value.strip().lower().removesuffix("b")
    try:
        return int(float(text[:-1]) * units[text[-1]]) if text and text[-1] in units else int(text)
    except (ValueError, IndexError):
        raise argparse.ArgumentTypeError(f"{value!r}: a size such as 500M, 20G or 1048576") from None


def register(sub: Any) -> None:
    from orchestrator.cli.audit import _duration_ms, _needs_redis
    from orchestrator.cli.home import HOME_HELP

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
    result.add_argument("--url", help="the API (default: BACKSTREAM_URL or http://127.0.0.1:8000)")
    result.add_argument("--token", help="a bearer token (default: BACKSTREAM_TOKEN)")

    def run_result(args: argparse.Namespace, settings: Settings) -> int:
        if args.format is None:  # from -o's extension, else CSV for a table, JSON for the whole
            extension = (args.output or "").rpartition(".")[2].lower()
            args.format = extension if extension in ("json", "csv", "parquet") else "csv" if args.table else "json"
        return _download(args, settings)

    result.set_defaults(run=run_result)

    retention = sub.add_parser(
        "results-retention", help="delete full results beyond an age, count or total size, and orphaned uploads"
    )
    retention.add_argument("--max-age", type=_duration_ms, help="delete results older than this: 90d, 12h, …")
    retention.add_argument("--max-count", type=int, help="keep at most this many results (newest)")
    retention.add_argument("--max-bytes", type=_size, help="keep at most this much in total (newest first): 50G")
    retention.add_argument(
        "--orphan-grace", type=_duration_ms, default=6 * 3_600_000, help="collect orphaned uploads older than this (6h)"
    )
    retention.add_argument("--dry-run", action="store_true", help="report what would be deleted")
    retention.add_argument("--home", help=HOME_HELP)
    retention.set_defaults(run=_needs_redis(_retention))
