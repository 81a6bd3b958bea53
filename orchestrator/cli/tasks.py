"""The HTTP client commands (`submit`, `strategies`, `status`, `cancel`, `retry`, `ls`, `tail`): they
talk to any Backstream API through orchestrator.client (`--url` / BACKSTREAM_URL, `--token` /
BACKSTREAM_TOKEN) and print with orchestrator.cli.render."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, TextIO, cast

import msgspec

from orchestrator.cli import render, request
from orchestrator.cli.args import Command, Subcommands, add_api_options
from orchestrator.client import Client, ClientError, Run
from orchestrator.client.progress import ProgressBar
from orchestrator.domain.status import Status
from orchestrator.settings import Settings

# The metric `ls` shows for each completed task (for a sweep, its best run's).
MAIN_METRIC = "return_pct"


def _client(args: argparse.Namespace, settings: Settings) -> Client:
    return Client(args.url or settings.api_url, args.token or settings.api_token)


def wait(client: Client, task_id: str, err: TextIO) -> dict[str, Any]:
    """Follow the task's stream with a progress bar on `err` until it ends; return the task (the
    API's TaskView as builtins). Raises ClientError."""
    task = Run(client, task_id).wait(bar=ProgressBar(err))
    return cast(dict[str, Any], msgspec.to_builtins(task))  # a TaskView Struct: a JSON object


def _submit(args: argparse.Namespace, settings: Settings) -> int:
    client = _client(args, settings)
    headers = {"Idempotency-Key": args.idempotency_key} if args.idempotency_key else None
    reply = client.api.call("POST", "/api/backtests", request.spec(args), headers)
    task_id = reply["task_id"]
    if not args.wait:
        print(task_id)
        return 0
    print(f"submitted {task_id}", file=sys.stderr)
    task = wait(client, task_id, sys.stderr)
    sys.stdout.write(render.task_text(task))
    return 0 if task["status"] == Status.COMPLETED else 1


def _status(args: argparse.Namespace, settings: Settings) -> int:
    task = _client(args, settings).api.call("GET", f"/api/backtests/tasks/{args.task_id}")
    if args.json:
        print(json.dumps(task, indent=2))
    else:
        sys.stdout.write(render.task_text(task))
    return 0


def _cancel(args: argparse.Namespace, settings: Settings) -> int:
    task = _client(args, settings).api.call("DELETE", f"/api/backtests/tasks/{args.task_id}")
    print(f"{task['task_id']} {task['status']}")
    return 0


def _retry(args: argparse.Namespace, settings: Settings) -> int:
    task = _client(args, settings).api.call("POST", f"/api/backtests/tasks/{args.task_id}/retry")
    print(f"{task['task_id']} {task['status']}")
    return 0


def _ls(args: argparse.Namespace, settings: Settings) -> int:
    page = _client(args, settings).page(
        status=args.status, symbol=args.symbol, strategy=args.strategy, limit=args.limit
    )
    tasks = [msgspec.to_builtins(t) for t in page.tasks]
    if args.json:
        print(json.dumps(tasks, indent=2))
        return 0
    rows = [
        [
            t["task_id"],
            t["status"],
            f"{t['progress'] * 100:.0f}%",
            t["spec"].get("symbol") or render.symbols_text(t["spec"].get("symbols")),
            t["spec"]["strategy"],
            ((t.get("result") or {}).get("metrics") or {}).get(MAIN_METRIC),
            t["attempt"],
            t.get("worker"),
            t["created_at"],
        ]
        for t in tasks
    ]
    header = ["task", "status", "progress", "symbol", "strategy", MAIN_METRIC, "attempt", "worker", "created"]
    print(render.table(rows, header))
    return 0


def _tail(args: argparse.Namespace, settings: Settings) -> int:
    api = _client(args, settings).api
    path = f"/api/backtests/tasks/{args.task}/stream" if args.task else "/api/stream"
    shown = 0
    try:
        for event in api.events(path, after=args.since):
            print(json.dumps(event) if args.json else render.event_line(event), flush=True)
            shown += 1
            if args.count and shown >= args.count:
                break
    except KeyboardInterrupt:
        pass
    return 0


def _strategies(args: argparse.Namespace, settings: Settings) -> int:
    reply = _client(args, settings).api.call("GET", "/api/strategies")
    if args.json:
        print(json.dumps(reply, indent=2))
        return 0
    print(render.strategies_text(reply))
    for f in reply.get("load_failures", []):
        print(f"not loaded: {f['entry_point']}: {f['error']}", file=sys.stderr)
    return 0


def _guarded(run: Command) -> Command:
    """`run`, printing a ClientError as `backstream COMMAND: why` and exiting 1."""

    def guarded(args: argparse.Namespace, settings: Settings) -> int:
        try:
            return int(run(args, settings))
        except ClientError as e:
            print(f"backstream {args.command}: {e}", file=sys.stderr)
            return 1

    return guarded


def register(sub: Subcommands) -> None:
    """Add the HTTP client commands to `sub`."""
    common = argparse.ArgumentParser(add_help=False)
    add_api_options(common)
    _add_submit(sub, common)

    strategies = sub.add_parser("strategies", parents=[common], help="the strategies the API accepts, with parameters")
    strategies.add_argument("--json", action="store_true")
    strategies.set_defaults(run=_guarded(_strategies))

    status = sub.add_parser("status", parents=[common], help="a task's status, progress and metrics")
    status.add_argument("task_id")
    status.add_argument("--json", action="store_true")
    status.set_defaults(run=_guarded(_status))

    cancel = sub.add_parser("cancel", parents=[common], help="cancel a queued or running task")
    cancel.add_argument("task_id")
    cancel.set_defaults(run=_guarded(_cancel))

    retry = sub.add_parser("retry", parents=[common], help="run a failed task again")
    retry.add_argument("task_id")
    retry.set_defaults(run=_guarded(_retry))

    ls = sub.add_parser("ls", parents=[common], help="tasks, newest first")
    ls.add_argument("--status", choices=[str(s) for s in Status])
    ls.add_argument("--symbol", help="only this symbol's tasks")
    ls.add_argument("--strategy", help="only this strategy's tasks")
    ls.add_argument("--limit", type=int, default=20)
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(run=_guarded(_ls))

    tail = sub.add_parser("tail", parents=[common], help="live events of every task (or one), until Ctrl-C")
    tail.add_argument("--task", help="only this task's events, from its start; ends with the task")
    tail.add_argument(
        "--since",
        help="a stream id or millisecond time (0: from the first event), in every partition, or a "
        "cursor an earlier stream gave (one id per partition): start after it instead of now",
    )
    tail.add_argument("--count", type=int, help="stop after this many events")
    tail.add_argument("--json", action="store_true", help="one JSON object per line")
    tail.set_defaults(run=_guarded(_tail))


def _add_submit(sub: Subcommands, common: argparse.ArgumentParser) -> None:
    submit = sub.add_parser("submit", parents=[common], help="submit a backtest through the API")
    submit.add_argument("strategy", help="e.g. sma_cross, or any installed plugin (`backstream strategies`)")
    submit.add_argument(
        "symbol", nargs="?", help="e.g. AAPL (GET /api/datasets lists them); or --symbols / --all-symbols"
    )
    submit.add_argument(
        "-s", "--symbols", metavar="A,B,…", help="a universe: run on each of these symbols (a job over the fleet)"
    )
    submit.add_argument("--all-symbols", action="store_true", help="a universe of every dataset the server has")
    submit.add_argument(
        "-p",
        "--param",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a strategy parameter; NAME=V1,V2,… sweeps over the values, NAME=START:STOP:STEP over a "
        "range with STOP included (5:50:5 is 5,10,…,50; STEP defaults to 1) (repeatable)",
    )
    submit.add_argument("--start", help="first date, YYYY-MM-DD")
    submit.add_argument("--end", help="last date, YYYY-MM-DD")
    submit.add_argument("--cash", type=float)
    submit.add_argument("--commission", type=float, help="rate of the traded value, each side")
    submit.add_argument("--commission-fixed", type=float, help="per order")
    submit.add_argument("--spread", type=float, help="relative bid-ask spread, paid on entry")
    submit.add_argument("--slippage-bps", type=float)
    submit.add_argument("--long-only", action="store_true")
    submit.add_argument(
        "--unadjusted", action="store_true", help="raw prices, not split- and dividend-adjusted (the default)"
    )
    submit.add_argument("--fractional-unit", type=float, help="trade multiples of this fraction of a unit (1e-8)")
    for name, meaning in request.MANAGEMENT.items():
        submit.add_argument(f"--{name.replace('_', '-')}", metavar="V[,V2,…]", help=f"{meaning}; a list sweeps")
    submit.add_argument("--objective", help="sweeps: rank by this metric (default sqn; --objective=-NAME minimises it)")
    submit.add_argument(
        "--direction", choices=["max", "min"], help="sweeps: maximise (default) or minimise the objective"
    )
    submit.add_argument(
        "--failure-tolerance",
        type=float,
        metavar="F",
        help="jobs: the fraction of chunks (0..1) that may fail before the job does (default 0)",
    )
    submit.add_argument("--constraint", help='sweeps: e.g. "fast < slow"')
    submit.add_argument("--timeout-s", type=float, help="a time limit for this task")
    submit.add_argument("--idempotency-key", help="a retried submit with the same key makes no second task")
    submit.add_argument(
        "--wait",
        action="store_true",
        help="show a progress bar until the task ends, then its metrics; exit 1 unless completed",
    )
    submit.set_defaults(run=_guarded(_submit))
