"""The HTTP client commands (`submit`, `status`, `cancel`, `retry`, `ls`, `tail`): they talk to any
Backstream API over HTTP (`--url` / BACKSTREAM_URL, `--token` / BACKSTREAM_TOKEN)."""

from __future__ import annotations

import argparse
import json
import math
import sys
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from typing import Any, TextIO

from orchestrator.settings import Settings

TERMINAL = ("completed", "failed", "cancelled")
# A live stream sends a keep-alive at least every 15 s; silence for this long means it is gone.
STREAM_TIMEOUT_S = 45.0
REQUEST_TIMEOUT_S = 30.0
RECONNECTS = 5
BAR_WIDTH = 30


class ClientError(Exception):
    """The API refused or could not be reached; the message says why."""

    # True when trying again may help (unreachable, or a 5xx); a refusal (4xx) will not change.
    transient = True


class Refused(ClientError):
    transient = False


class Api:
    def __init__(self, url: str, token: str | None) -> None:
        self.url = url.rstrip("/")
        self.token = token

    def _request(
        self,
        method: str,
        path: str,
        body: Any = None,
        headers: dict[str, str] | None = None,
        timeout: float = REQUEST_TIMEOUT_S,
    ) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data=data, method=method)
        if data is not None:
            request.add_header("Content-Type", "application/json")
        if self.token:
            request.add_header("Authorization", f"Bearer {self.token}")
        for name, value in (headers or {}).items():
            request.add_header(name, value)
        try:
            return urllib.request.urlopen(request, timeout=timeout)  # the user's URL
        except urllib.error.HTTPError as e:
            raise (ClientError if e.code >= 500 else Refused)(_problem(e)) from None
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise ClientError(
                f"cannot reach the Backstream API at {self.url}: {reason} (set --url or BACKSTREAM_URL)"
            ) from None

    def call(self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None) -> Any:
        with self._request(method, path, body, headers) as reply:
            return json.loads(reply.read() or b"null")

    def events(self, path: str, after: str | None = None) -> Iterator[dict[str, Any]]:
        """The events of an SSE stream, reconnecting with Last-Event-ID when it ends or breaks,
        until the server says there is nothing more (204 or an `end` event)."""
        failures = 0
        pause = threading.Event()
        while True:
            headers = {"Accept": "text/event-stream"}
            if after:
                headers["Last-Event-ID"] = after
            try:
                reply = self._request("GET", path, headers=headers, timeout=STREAM_TIMEOUT_S)
            except ClientError as e:
                failures += 1
                if not e.transient or failures > RECONNECTS:
                    raise
                pause.wait(min(2.0**failures / 4, 5.0))
                continue
            with reply:
                if reply.status == 204:
                    return
                failures = 0
                try:
                    for event_name, event_id, data in _sse(reply):
                        if event_name == "end":
                            return
                        if event_id:
                            after = event_id
                        if data:
                            yield json.loads(data)
                except (OSError, TimeoutError):
                    continue  # broken or silent: reconnect where we were


def _problem(error: urllib.error.HTTPError) -> str:
    try:
        body = json.loads(error.read())
        fields = "; ".join(f"{f['field']}: {f['message']}" for f in body.get("fields", []) if f.get("field"))
        return f"{error.code} {body.get('error', '')}: {fields or body.get('message', '')}"
    except (ValueError, AttributeError):
        return f"{error.code} {error.reason}"


def _sse(reply: Any) -> Iterator[tuple[str, str | None, str]]:
    """(event name, id, data) per SSE event; comments are skipped."""
    name, event_id, data = "message", None, list[str]()
    for raw in reply:
        line = raw.decode("utf-8").rstrip("\r\n")
        if not line:
            if data or name != "message":
                yield name, event_id, "\n".join(data)
            name, event_id, data = "message", None, list[str]()
        elif line.startswith(":"):
            continue
        else:
            field, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if field == "data":
                data.append(value)
            elif field == "id":
                event_id = value
            elif field == "event":
                name = value


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


class ProgressBar:
    """A one-line bar redrawn in place on a terminal; on anything else, a line per change of
    status and per tenth of progress."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.tty = out.isatty()
        self._last: tuple[str, int] | None = None

    def show(self, status: str, progress: float, attempt: int, worker: str | None) -> None:
        filled = round(max(0.0, min(progress, 1.0)) * BAR_WIDTH)
        where = f"  attempt {attempt} on {worker}" if worker and status == "running" else ""
        line = f"[{'#' * filled}{'.' * (BAR_WIDTH - filled)}] {progress * 100:5.1f}%  {status}{where}"
        if self.tty:
            self.out.write("\r" + line.ljust(78))
        else:
            key = (status, int(progress * 10))
            if key == self._last:
                return
            self._last = key
            self.out.write(line + "\n")
        self.out.flush()

    def done(self) -> None:
        if self.tty:
            self.out.write("\n")
            self.out.flush()


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
        from orchestrator.result_commands import top_rows_text

        out.write("\n" + top_rows_text(result) + "\n")
    data = result.get("data")
    if data:
        prices = "adjusted" if data["adjusted"] else f"not adjusted ({data['not_adjusted_reason']})"
        out.write(
            f"\ncomputed on {data['symbol']} ({data['source']}) {data['first_bar']} to {data['last_bar']}, "
            f"{data['bars']} bars, {prices}, sha256 {data['sha256']}\n"
        )


# --- the commands ---


def _api(args: argparse.Namespace, settings: Settings) -> Api:
    return Api(args.url or settings.api_url, args.token or settings.api_token)


def _number(text: str) -> int | float:
    try:
        return int(text)
    except ValueError:
        return float(text)


def _params(pairs: list[str]) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise ClientError(f"--param {pair!r}: expected NAME=VALUE or NAME=V1,V2,… (a sweep)")
        try:
            values = [_number(v) for v in value.split(",") if v.strip()]
        except ValueError:
            raise ClientError(f"--param {pair!r}: values must be numbers") from None
        params[name.strip()] = values if "," in value else values[0] if values else value
    return params


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
    ):
        if getattr(args, name) is not None:
            spec[name] = getattr(args, name)
    if args.long_only:
        spec["long_only"] = True
    if args.unadjusted:
        spec["adjusted"] = False
    return spec


def wait(api: Api, task_id: str, err: TextIO) -> dict[str, Any]:
    """Follow the task's stream with a progress bar until it ends; return the task."""
    bar = ProgressBar(err)
    status, progress, attempt, worker = "queued", 0.0, 0, None
    bar.show(status, progress, attempt, worker)
    for event in api.events(f"/api/backtests/tasks/{task_id}/stream"):
        kind, data = event["type"], event["data"]
        if kind == "started":
            status, progress, attempt, worker = "running", 0.0, event["attempt"], data.get("worker")
        elif kind == "progress":
            progress = data["progress"]
        elif kind == "completed":
            status, progress = "completed", 1.0
        elif kind in ("failed", "cancelled"):
            status = kind
        elif kind in ("retry_scheduled", "released", "requeued"):
            status, progress = "queued", 0.0
        bar.show(status, progress, attempt, worker)
        if status in TERMINAL:
            break
    bar.done()
    return api.call("GET", f"/api/backtests/tasks/{task_id}")  # type: ignore[no-any-return]


def _submit(args: argparse.Namespace, settings: Settings) -> int:
    api = _api(args, settings)
    headers = {"Idempotency-Key": args.idempotency_key} if args.idempotency_key else None
    reply = api.call("POST", "/api/backtests", _spec(args), headers)
    task_id = reply["task_id"]
    if not args.wait:
        print(task_id)
        return 0
    print(f"submitted {task_id}", file=sys.stderr)
    task = wait(api, task_id, sys.stderr)
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
    query = {"limit": str(args.limit), **({"status": args.status} if args.status else {})}
    page = _api(args, settings).call("GET", "/api/backtests/tasks?" + urllib.parse.urlencode(query))
    if args.json:
        print(json.dumps(page["tasks"], indent=2))
        return 0
    rows = [
        [
            t["task_id"],
            t["status"],
            f"{t['progress'] * 100:.0f}%",
            t["spec"]["symbol"],
            t["spec"]["strategy"],
            t["attempt"],
            t.get("worker"),
            t["created_at"],
        ]
        for t in page["tasks"]
    ]
    print(table(rows, ["task", "status", "progress", "symbol", "strategy", "attempt", "worker", "created"]))
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
    submit.add_argument("strategy", help="e.g. sma_cross, momentum, bollinger, rsi, buy_and_hold")
    submit.add_argument("symbol", help="e.g. AAPL (GET /api/datasets lists them)")
    submit.add_argument(
        "-p",
        "--param",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a strategy parameter; NAME=V1,V2,… sweeps over the values (repeatable)",
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
    ls.add_argument("--limit", type=int, default=20)
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(run=_guarded(_ls))

    tail = sub.add_parser("tail", parents=[common], help="live events of every task (or one), until Ctrl-C")
    tail.add_argument("--task", help="only this task's events, from its start; ends with the task")
    tail.add_argument("--since", help="a stream id: start after it instead of now")
    tail.add_argument("--count", type=int, help="stop after this many events")
    tail.add_argument("--json", action="store_true", help="one JSON object per line")
    tail.set_defaults(run=_guarded(_tail))
