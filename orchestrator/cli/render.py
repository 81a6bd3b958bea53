"""The command line's text output: aligned tables, a task, an event line, a sweep's top rows.
Values are written by orchestrator.domain.display (the TEXT style; TABLE for the top rows)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from orchestrator.domain.display import TABLE, event_fields, fmt, params_text

# The main metrics `backstream status` shows for each of a sweep's top rows.
TOP_COLUMNS = ("return_pct", "sharpe", "max_drawdown_pct", "win_rate_pct", "num_trades")


def table(rows: Sequence[Sequence[Any]], header: Sequence[str] | None = None) -> str:
    """`rows` as left-aligned columns two spaces apart, values by `fmt`; a `header` is underlined
    with dashes. "" for no rows and no header."""
    cells = [[fmt(c) for c in row] for row in ([header] if header else []) + list(rows)]
    if not cells:
        return ""
    widths = [max(len(row[i]) for row in cells) for i in range(len(cells[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=False)).rstrip() for row in cells]
    if header:
        lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def task_text(task: Mapping[str, Any]) -> str:
    """A task as the API gives it (TaskView as builtins) as `backstream status` prints it: a table
    of its fields, then what its result says (best parameters, metrics, top rows, data used)."""
    spec = task.get("spec", {})
    rows = [
        ["task", task["task_id"]],
        ["status", task["status"]],
        ["progress", f"{task['progress'] * 100:.1f}%"],
        ["strategy", spec.get("strategy")],
        ["symbol" if spec.get("symbol") else "symbols", spec.get("symbol") or symbols_text(spec.get("symbols"))],
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
    chunk = spec.get("chunk")
    if chunk:
        rows.append(
            ["chunk", f"{chunk['index']} of job {chunk['parent']}: combinations {chunk['start']}–{chunk['stop']}"]
        )
    job = task.get("job")
    if job:
        rows += job_rows(job, task.get("result") or {})
    return table(rows) + "\n" + _result_text(task.get("result") or {})


def symbols_text(symbols: Any) -> str | None:
    """A universe's `symbols` as given: `*` (every dataset) or `AAPL,IBM`; None for none."""
    return symbols if symbols is None or isinstance(symbols, str) else ",".join(symbols)


def job_rows(job: Mapping[str, Any], result: Mapping[str, Any]) -> list[list[Any]]:
    """A job's rows of `backstream status` (TaskView.job as builtins, and its result summary):
    its chunks' counts, the symbols it ran on, the ranges of failed chunks (`missing`)."""
    rows: list[list[Any]] = [
        ["chunks", f"{job['done']} done, {job['failed']} failed of {job['chunks']}"],
        ["combinations", job["combinations"]],
    ]
    if len(job.get("symbols") or []) > 1:
        rows.append(["universe", f"{len(job['symbols'])} symbols: {', '.join(job['symbols'])}"])
    for k, span in enumerate(result.get("missing") or []):
        rows.append(["missing" if k == 0 else "", f"{span['symbol']} combinations {span['start']}–{span['stop']}"])
    return rows


def _result_text(result: Mapping[str, Any]) -> str:
    out = ""
    if result.get("best_params"):
        out += (
            f"\nbest of {result.get('combinations')} combinations by {result.get('objective')}: "
            f"{json.dumps(result['best_params'])}" + (f" on {result['symbol']}" if result.get("symbol") else "") + "\n"
        )
    if result.get("metrics"):
        out += "\n" + table([[k, v] for k, v in result["metrics"].items()], ["metric", "value"]) + "\n"
    if result.get("top"):
        out += "\n" + top_rows_text(result) + "\n"
    data = result.get("data")
    if data:
        prices = "adjusted" if data["adjusted"] else f"not adjusted ({data['not_adjusted_reason']})"
        out += (
            f"\ncomputed on {data['symbol']} ({data['source']}) {data['first_bar']} to {data['last_bar']}, "
            f"{data['bars']} bars, {prices}, sha256 {data['sha256']}\n"
        )
    return out


def top_rows_text(result: Mapping[str, Any]) -> str:
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
        lines.append([str(i), *(fmt(v, TABLE) for v in cells)])
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    body = "\n".join("  ".join(c.rjust(w) for c, w in zip(line, widths, strict=True)) for line in lines)
    return f"top {len(top)} of {result.get('combinations')} by {result.get('objective')}:\n{body}"


def event_line(event: Mapping[str, Any]) -> str:
    """An event as the API streams it, as one line of `backstream tail`: time, task id's first 8
    characters, type, attempt, then the fields of `event_fields` that are set (request, headline
    metrics, the rest), values by `fmt`."""
    shown = event_fields(event)
    request = shown.request and {**shown.request, "params": params_text(shown.request["params"])}
    fields = {**request, **shown.headline, **shown.rest}
    details = " ".join(f"{k}={fmt(v)}" for k, v in fields.items() if v is not None)
    return f"{event['time']}  {event['task_id'][:8]}  {event['type']:<15} #{event['attempt']}  {details}".rstrip()


def audit_line(event: Mapping[str, Any]) -> str:
    """An event (event_view's shape) as one line of `backstream audit`: time, type, attempt, then
    the fields of `event_fields` (request, the rest, headline metrics), each value as JSON."""
    shown = event_fields(event)
    fields = {**shown.request, **shown.rest, **shown.headline}
    summary = " ".join(f"{k}={json.dumps(v, separators=(',', ':'))}" for k, v in fields.items())
    return f"{event['time']}  {event['type']:<16} attempt={event['attempt']}  {summary}"


def strategies_text(reply: Mapping[str, Any]) -> str:
    """`GET /api/strategies` as `backstream strategies` prints it: one row per strategy, then one
    per parameter with its type, bounds, default and description."""
    rows = []
    for s in reply["strategies"]:
        rows.append([s["name"], "", "", "", s["summary"]])
        for p in s["params"]:
            bounds = f"{fmt(p['minimum'])}..{fmt(p['maximum'])}"
            rows.append(["", p["name"], f"{p['type']} {bounds}", fmt(p["default"]), p["description"]])
    return table(rows, ["strategy", "param", "type", "default", "description"])
