"""The HTTP client commands (`submit`, `status`, `cancel`, `retry`, `ls`, `tail`): they talk to any
Backstream API over HTTP (`--url` / BACKSTREAM_URL, `--token` / BACKSTREAM_TOKEN)."""

from __future__ import annotations

import argparse
import json
import math
import sys
from typing import Any, TextIO

import msgspec

from orchestrator.client.api import TERMINAL, Api, Client, ClientError, ProgressBar, Refused, Run
from orchestrator.settings import Settings

# The transport, errors and progress bar live in the client library; the CLI renders its answers.
__all__ = ["Api", "ClientError", "Refused"]
# The metric `ls` shows for each completed task (for a sweep, its best run's).
MAIN_METRIC = "return_pct"


# --- output ---


def fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if not math.isfinite(value):
            return "-"
        return f"{value:,.2f}" if abs(value) >= 1000 else f"{value:.4g}"
    if isinstance(value, list | dict):
        return json.dumps(value)
    return str(value)


def table(rows: list[list[Any]], header: list[str] | None = None) -> str:
    cells = [[fmt(c) for c in row] for row in ([header] if header else []) + rows]
    if not cells:
        return ""
    widths = [max(len(row[i]) for row in cells) for i in range(len(cells[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=False)).rstrip() for row in cells]
    if header:
        lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def params_text(params: dict[str, Any]) -> str:
    """`fast=10 slow=20`; a long sweep list shows as its ends and length."""

    def one(v: Any) -> str:
        if isinstance(v, list) and len(v) > 6:
            return f"{fmt(v[0])},{fmt(v[1])},…,{fmt(v[-1])} ({len(v)} values)"
        return ",".join(fmt(x) for x in v) if isinstance(v, list) else fmt(v)

    return " ".join(f"{k}={one(v)}" for k, v in params.items())


def _print_task(task: dict[str, Any], out: TextIO) -> None:
    spec = task.get("spec", {})
    rows = [
        ["task", task["task_id"]],
        ["status", task["status"]],
        ["progress", f"{task['progress'] * 100:.1f}%"],
        ["strategy", spec.get("strategy")],
        ["symbol", spec.get("symbol")],
        ["params", params_text(spec.get("params", {}))],
        ["attempt", task["attempt"]],
        ["worker", task.get("worker")],
        ["created", task.get("created_at")],
        ["started", task.get("started_at")],
        ["finished", task.get("finished_at")],
        ["submitted by", task.get("submitted_by")],
    ]
    if task.get("cancelled_by"):
        rows.append(["cancelled by", task["cancelled_by"]])
    if task.get("error"):
        rows.append(["error", task["error"]])
    out.write(table(rows) + "\n")
    result = task.get("result") or {}
    if result.get("best_params"):
        out.write(
            f"\nbest of {result.get('combinations')} combinations by {result.get('objective')}: "
            f"{json.dumps(result['best_params'])}\n"
        )
    if result.get("metrics"):
        out.write("\n" + table([[k, v] for k, v in result["metrics"].items()], ["metric", "value"]) + "\n")
    if result.get("top"):
        from orchestrator.cli.results import top_rows_text

        out.write("\n" + top_rows_text(result) + "\n")
    data = result.get("data")
    if data:
        prices = "adjusted" if data["adjusted"] else f"not adjusted ({data['not_adjusted_reason']})"
        out.write(
            f"\ncomputed on {data['symbol']} ({data['source']}) {data['first_bar']} to {data['last_bar']}, "
            f"{data['bars']} bars, {prices}, sha256 {data['sha256']}\n"
        )


# --- the commands ---


def _client(args: argparse.Namespace, settings: Settings) -> Client:
    return Client(args.url or settings.api_url, args.token or settings.api_token)


def _api(args: argparse.Namespace, settings: Settings) -> Api:
    return _client(args, settings).api


def _number(text: str) -> int | float:
    try:
        return int(text)
    except ValueError:
        return float(text)


# A sweep range NAME=START:STOP[:STEP] lists at most this many values (the API bounds the grid too).
MAX_RANGE_VALUES = 100_000


def _range(pair: str, text: str) -> list[int | float]:
    """`5:50:5` -> 5, 10, ..., 50: START, then every STEP up to STOP *inclusive* when the steps land
    on it (like numpy.arange with the stop included); STEP defaults to 1. All ints give ints."""
    parts = text.split(":")
    if len(parts) not in (2, 3):
        raise ClientError(f"--param {pair!r}: a range is START:STOP or START:STOP:STEP")
    try:
        start, stop, step = (_number(p) for p in (*parts, "1")[:3])
    except ValueError:
        raise ClientError(f"--param {pair!r}: a range's START, STOP and STEP must be numbers") from None
    if not step > 0 or stop < start:
        raise ClientError(f"--param {pair!r}: a range needs STEP > 0 and START <= STOP")
    count = int((stop - start) / step + 1e-9) + 1
    if count > MAX_RANGE_VALUES:
        raise ClientError(f"--param {pair!r}: {count} values; at most {MAX_RANGE_VALUES}")
    if all(isinstance(x, int) for x in (start, stop, step)):
        return list(range(int(start), int(stop) + 1, int(step)))
    return [round(start + k * step, 12) for k in range(count)]


def _params(pairs: list[str]) -> dict[str, Any]:
    """`-p fast=10` (a value), `-p fast=5,10,20` (a sweep over a list) and `-p fast=5:50:5` (a sweep
    over a range, STOP included: see _range)."""
    params: dict[str, Any] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise ClientError(f"--param {pair!r}: expected NAME=VALUE, NAME=V1,V2,… or NAME=START:STOP:STEP (sweeps)")
        if ":" in value:
            params[name.strip()] = _range(pair, value)
            continue
        try:
            values = [_number(v) for v in value.split(",") if v.strip()]
        except ValueError:
            raise ClientError(f"--param {pair!r}: values must be numbers") from None
        params[name.strip()] = values if "," in value else values[0] if values else value
    return params


# Position management (STRATEGIES.md, "Position management"): request fields, each a number or a
# comma-separated list to sweep.
MANAGEMENT = {
    "size": "order size: a fraction of equity in (0, 1), or whole units (default: all equity)",
    "margin": "margin in (0, 1]: leverage 1/margin",
    "stop_loss_pct": "stop-loss, percent from the entry price",
    "take_profit_pct": "take-profit, percent from the entry price",
    "trailing_stop_pct": "a stop trailing the close by this percent",
    "trailing_atr": "a stop trailing the close by this many ATRs",
    "max_bars": "close a trade after this many bars",
}


def _spec(args: argparse.Namespace) -> dict[str, Any]:
    spec: dict[str, Any] = {"strategy": args.strategy, "symbol": args.symbol, "params": _params(args.param)}
    for name in (
        "start",
        "end",
        "cash",
        "commission",
        "commission_fixed",
        "spread",
        "slippage_bps",
        "objective",
        "constraint",
        "timeout_s",
        "fractional_unit",
    ):
        if getattr(args, name) is not None:
            spec[name] = getattr(args, name)
    for name in MANAGEMENT:
        value = getattr(args, name)
        if value is not None:
            try:
                numbers = [_number(v) for v in value.split(",")]
            except ValueError:
                raise ClientError(
                    f"--{name.replace('_', '-')} {value!r}: expected a number or V1,V2,… (a sweep)"
                ) from None
            spec[name] = numbers if "," in value else numbers[0]
    if args.long_only:
        spec["long_only"] = True
    if args.unadjusted:
        spec["adjusted"] = False
    return spec


def wait(client: Client, task_id: str, err: TextIO) -> dict[str, Any]:
    """Follow the task's stream with a progress bar on `err` until it ends; return the task."""
    task = Run(client, task_id).wait(bar=ProgressBar(err))
    return msgspec.to_builtins(task)  # type: ignore[no-any-return]


def _submit(args: argparse.Namespace, settings: Settings) -> int:
    client = _client(args, settings)
    headers = {"Idempotency-Key": args.idempotency_key} if args.idempotency_key else None
    reply = client.api.call("POST", "/api/backtests", _spec(args), headers)
    task_id = reply["task_id"]
    if not args.wait:
        print(task_id)
        return 0
    print(f"submitted {task_id}", file=sys.stderr)
    task = wait(client, task_id, sys.stderr)
    _print_task(task, sys.stdout)
    return 0 if task["status"] == "completed" else 1


def _status(args: argparse.Namespace, settings: Settings) -> int:
    task = _api(args, settings).call("GET", f"/api/backtests/tasks/{args.task_id}")
    if args.json:
        print(json.dumps(task, indent=2))
    else:
        _print_task(task, sys.stdout)
    return 0


def _cancel(args: argparse.Namespace, settings: Settings) -> int:
    task = _api(args, settings).call("DELETE", f"/api/backtests/tasks/{args.task_id}")
    print(f"{task['task_id']} {task['status']}")
    return 0


def _retry(args: argparse.Namespace, settings: Settings) -> int:
    task = _api(args, settings).call("POST", f"/api/backtests/tasks/{args.task_id}/retry")
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
            t["spec"]["symbol"],
            t["spec"]["strategy"],
            ((t.get("result") or {}).get("metrics") or {}).get(MAIN_METRIC),
            t["attempt"],
            t.get("worker"),
            t["created_at"],
        ]
        for t in tasks
    ]
    header = ["task", "status", "progress", "symbol", "strategy", MAIN_METRIC, "attempt", "worker", "created"]
    print(table(rows, header))
    return 0


def describe(event: dict[str, Any]) -> str:
    data = dict(event["data"])
    if event["type"] == "submitted":
        spec = data.pop("spec", {})
        data = {
            "strategy": spec.get("strategy"),
            "symbol": spec.get("symbol"),
            "params": params_text(spec.get("params", {})),
            **data,
        }
    if event["type"] == "completed":
        metrics = (data.pop("result", {}) or {}).get("metrics", {})
        data = {k: metrics.get(k) for k in ("return_pct", "sharpe", "num_trades") if k in metrics} | data
    details = " ".join(f"{k}={fmt(v)}" for k, v in data.items() if v is not None)
    return f"{event['time']}  {event['task_id'][:8]}  {event['type']:<15} #{event['attempt']}  {details}".rstrip()


def _tail(args: argparse.Namespace, settings: Settings) -> int:
    api = _api(args, settings)
    path = f"/api/backtests/tasks/{args.task}/stream" if args.task else "/api/stream"
    shown = 0
    try:
        for event in api.events(path, after=args.since):
            print(json.dumps(event) if args.json else describe(event), flush=True)
            shown += 1
            if args.count and shown >= args.count:
                break
    except KeyboardInterrupt:
        pass
    return 0


def _strategies(args: argparse.Namespace, settings: Settings) -> int:
    reply = _api(args, settings).call("GET", "/api/strategies")
    if args.json:
        print(json.dumps(reply, indent=2))
        return 0
    rows = []
    for s in reply["strategies"]:
        rows.append([s["name"], "", "", "", s["summary"]])
        for p in s["params"]:
            bounds = f"{fmt(p['minimum'])}..{fmt(p['maximum'])}"
            rows.append(["", p["name"], f"{p['type']} {bounds}", fmt(p["default"]), p["description"]])
    print(table(rows, ["strategy", "param", "type", "default", "description"]))
    for f in reply.get("load_failures", []):
        print(f"not loaded: {f['entry_point']}: {f['error']}", file=sys.stderr)
    return 0


def _guarded(run: Any) -> Any:
    def guarded(args: argparse.Namespace, settings: Settings) -> int:
        try:
            return int(run(args, settings))
        except ClientError as e:
            print(f"backstream {args.command}: {e}", file=sys.stderr)
            return 1

    return guarded


def register(sub: Any) -> None:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--url", help="the API (default: BACKSTREAM_URL or http://127.0.0.1:8000)")
    common.add_argument("--token", help="a bearer token (default: BACKSTREAM_TOKEN)")

    submit = sub.add_parser("submit", parents=[common], help="submit a backtest through the API")
    submit.add_argument("strategy", help="e.g. sma_cross, or any installed plugin (`backstream strategies`)")
    submit.add_argument("symbol", help="e.g. AAPL (GET /api/datasets lists them)")
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
    for name, meaning in MANAGEMENT.items():
        submit.add_argument(f"--{name.replace('_', '-')}", metavar="V[,V2,…]", help=f"{meaning}; a list sweeps")
    submit.add_argument("--objective", help="sweeps: the metric to maximise (default sqn)")
    submit.add_argument("--constraint", help='sweeps: e.g. "fast < slow"')
    submit.add_argument("--timeout-s", type=float, help="a time limit for this task")
    submit.add_argument("--idempotency-key", help="a retried submit with the same key makes no second task")
    submit.add_argument(
        "--wait",
        action="store_true",
        help="show a progress bar until the task ends, then its metrics; exit 1 unless completed",
    )
    submit.set_defaults(run=_guarded(_submit))

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
    ls.add_argument("--status", choices=("queued", "running", *TERMINAL))
    ls.add_argument("--symbol", help="only this symbol's tasks")
    ls.add_argument("--strategy", help="only this strategy's tasks")
    ls.add_argument("--limit", type=int, default=20)
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(run=_guarded(_ls))

    tail = sub.add_parser("tail", parents=[common], help="live events of every task (or one), until Ctrl-C")
    tail.add_argument("--task", help="only this task's events, from its start; ends with the task")
    tail.add_argument("--since", help="a stream id (or 0: from the first event): start after it instead of now")
    tail.add_argument("--count", type=int, help="stop after this many events")
    tail.add_argument("--json", action="store_true", help="one JSON object per line")
    tail.set_defaults(run=_guarded(_tail))
