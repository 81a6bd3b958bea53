"""The dashboard: server-rendered pages (tasks, a task, submit, workers) with a little JavaScript."""

from __future__ import annotations

import asyncio
import html
import json
import math
import string
import uuid
from functools import cache
from pathlib import Path
from typing import Any

import msgspec
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from api.metrics import consumer_groups, projector_lag
from api.results import full_result_json
from consumers.engine.metrics import OBJECTIVES
from consumers.engine.strategies import STRATEGIES
from orchestrator.codec import decode_json, text
from orchestrator.history import event_view
from orchestrator.keys import WORKER_GROUP
from orchestrator.presence import read_beats
from orchestrator.state import to_api

HERE = Path(__file__).parent
STATUSES = ("queued", "running", "completed", "failed", "cancelled")
PAGE_SIZE = 100
MAX_TRADES = 200
MAX_SWEEP_ROWS = 20
# Values the submit form starts with (presentation only; the API validates whatever is sent).
EXAMPLE_PARAMS: dict[str, dict[str, float]] = {
    "sma_cross": {"fast": 10, "slow": 20},
    "momentum": {"lookback": 20, "threshold": 0.02},
    "bollinger": {"window": 20, "k": 2},
    "rsi": {"period": 14, "lower": 30, "upper": 70},
}


def e(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def fmt(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if not math.isfinite(value):
            return "—"
        return f"{value:,.2f}" if abs(value) >= 1000 else f"{value:.4g}"
    if isinstance(value, list | dict):
        return json.dumps(value)
    return str(value)


@cache
def _layout() -> string.Template:
    return string.Template((HERE / "templates" / "layout.html").read_text(encoding="utf-8"))


def page(
    request: Request,
    title: str,
    body: str,
    *,
    name: str,
    data: dict[str, str] | None = None,
    refresh_s: int | None = None,
) -> HTMLResponse:
    attrs = " ".join(f'data-{k}="{e(v)}"' for k, v in {"page": name, **(data or {})}.items())
    user = request.scope.get("user")
    nav = "".join(
        f'<a href="{href}"{" class=here" if name == key else ""}>{label}</a>'
        for key, href, label in (
            ("tasks", "/", "Tasks"),
            ("submit", "/submit", "Submit"),
            ("workers", "/workers", "Workers"),
            ("metrics", "/metrics", "Metrics"),
        )
    )
    text = _layout().substitute(
        title=e(title),
        attrs=attrs,
        nav=nav,
        body=body,
        user=f'<span class="user">signed in as {e(user)}</span>' if user else "",
        refresh=f'<meta http-equiv="refresh" content="{refresh_s}">' if refresh_s else "",
        # The session's CSRF token (api/csrf.py): the scripts send it with every state change.
        csrf=f'<meta name="csrf-token" content="{e(request.scope.get("csrf_token") or "")}">',
    )
    return HTMLResponse(text, headers={"Cache-Control": "no-store"})


def _ctx(request: Request) -> Any:
    return request.app.state.ctx


def progress_bar(progress: float) -> str:
    pct = max(0.0, min(progress, 1.0)) * 100
    return (
        f'<div class="bar" role="progressbar" aria-valuenow="{pct:.0f}" aria-valuemin="0" '
        f'aria-valuemax="100"><span style="width:{pct:.1f}%"></span></div>'
        f'<small class="pct">{pct:.0f}%</small>'
    )


def _task_row(state: Any) -> str:
    spec = state.spec
    return (
        f'<tr data-task="{e(state.task_id)}" data-seq="{state.seq}" data-status="{e(state.status)}" '
        f'data-created="{e(state.created_at)}">'
        f'<td><a href="/tasks/{e(state.task_id)}" class="mono">{e(state.task_id[:8])}</a></td>'
        f'<td class="status"><span class="badge {e(state.status)}">{e(state.status)}</span></td>'
        f'<td class="progress">{progress_bar(state.progress)}</td>'
        f"<td>{e(spec.symbol)}</td><td>{e(spec.strategy)}</td>"
        f'<td class="attempt">{state.attempt}</td><td class="worker">{e(state.worker or "")}</td>'
        f'<td class="age" title="{e(state.created_at)}"></td>'
        f'<td class="actions"><button class="cancel">Cancel</button><button class="retry">Retry</button></td></tr>'
    )


async def tasks_page(request: Request) -> Response:
    ctx = _ctx(request)
    status = request.query_params.get("status")
    if status not in STATUSES:
        status = None
    # The position first: the stream replays from it, and rows ignore events they already include.
    position = await ctx.projection.position() or "0-0"
    tasks, _ = await ctx.projection.list_tasks(status=status, limit=PAGE_SIZE, cursor=None)
    filters = "".join(
        f'<a href="/{f"?status={s}" if s else ""}" class="{"here" if s == status else ""}">{s or "all"}</a>'
        for s in (None, *STATUSES)
    )
    rows = "".join(_task_row(t) for t in tasks)
    body = f"""
<section><div class="toolbar"><nav class="filters">{filters}</nav>
<a class="button" href="/submit">New backtest</a></div>
<p id="flash" class="flash" hidden></p>
<table id="tasks"><thead><tr><th>task</th><th>status</th><th>progress</th><th>symbol</th><th>strategy</th>
<th>attempt</th><th>worker</th><th>age</th><th></th></tr></thead><tbody>{rows}</tbody></table>
<p class="empty" {"hidden" if tasks else ""}>No tasks{f" {e(status)}" if status else ""} yet.</p>
<p class="note">Newest {PAGE_SIZE} shown; updates live.</p></section>"""
    return page(request, "Backstream: tasks", body, name="tasks", data={"since": position, "filter": status or ""})


def _downsample(times: list[str], values: list[float | None], most: int) -> list[tuple[int, float]]:
    """At most about `most` points that keep each bucket's extremes, so peaks and troughs show."""
    points = [(i, v) for i, v in enumerate(values) if v is not None and math.isfinite(v)]
    if len(points) <= most:
        return points
    size = math.ceil(len(points) / (most / 2))
    out = []
    for start in range(0, len(points), size):
        bucket = points[start : start + size]
        low, high = min(bucket, key=lambda p: p[1]), max(bucket, key=lambda p: p[1])
        out += sorted({low, high})
    return out


def line_chart(
    times: list[str], values: list[float | None], *, css: str, fill: bool, width: int = 960, height: int = 240
) -> str:
    """An inline SVG line chart with min/max/last labels and the first, middle and last dates."""
    points = _downsample(times, values, width)
    if len(points) < 2:
        return "<p>Not enough data to draw.</p>"
    left, right, top, bottom = 70, 10, 10, 24
    lo, hi = min(v for _, v in points), max(v for _, v in points)
    if fill:
        hi = max(hi, 0.0)
    span = (hi - lo) or 1.0
    n = max(len(values) - 1, 1)

    def xy(i: int, v: float) -> tuple[float, float]:
        return (left + (width - left - right) * i / n, top + (height - top - bottom) * (hi - v) / span)

    path = " ".join(f"{x:.1f},{y:.1f}" for x, y in (xy(i, v) for i, v in points))
    shape = f'<polyline class="line" points="{path}"/>'
    if fill:
        x0, y0 = xy(points[0][0], 0.0)
        x1, _ = xy(points[-1][0], 0.0)
        shape = f'<polygon class="area" points="{x0:.1f},{y0:.1f} {path} {x1:.1f},{y0:.1f}"/>' + shape
    labels = "".join(
        f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">{e(fmt(v))}</text>'
        f'<line class="grid" x1="{left}" x2="{width - right}" y1="{y:.1f}" y2="{y:.1f}"/>'
        for v, y in ((hi, xy(0, hi)[1]), (lo, xy(0, lo)[1]), ((hi + lo) / 2, xy(0, (hi + lo) / 2)[1]))
    )
    dates = "".join(
        f'<text x="{xy(i, lo)[0]:.1f}" y="{height - 6}" text-anchor="{anchor}">{e(times[i])}</text>'
        for i, anchor in ((0, "start"), (n // 2, "middle"), (n, "end"))
        if i < len(times)
    )
    svg = f'<svg class="{css}" viewBox="0 0 {width} {height}" role="img" aria-label="{css} chart">'
    return f"{svg}{labels}{shape}{dates}</svg>"


def _kv_table(rows: list[tuple[str, Any]], cls: str = "kv") -> str:
    return (
        f'<table class="{cls}">'
        + "".join(f"<tr><th>{e(k)}</th><td>{e(fmt(v))}</td></tr>" for k, v in rows)
        + "</table>"
    )


def _event_detail(event: dict[str, Any]) -> str:
    data = dict(event["data"])
    if event["type"] == "submitted":
        data.pop("spec", None)
    if event["type"] == "completed":
        result = data.pop("result", {}) or {}
        data = {k: v for k, v in result.items() if k != "metrics"} | data
    return ", ".join(f"{k}={fmt(v)}" for k, v in data.items())


def _progress_run(run: list[dict[str, Any]]) -> str:
    """Consecutive progress events as one row: how many, and from what to what."""
    if len(run) == 1:
        return event_row(run[0])
    first, last = run[0], run[-1]
    return (
        f'<tr data-id="{e(last["id"])}" class="progress-run"><td>{first["seq"]}–{last["seq"]}</td>'
        f'<td class="mono">{e(first["time"])} – {e(last["time"][11:])}</td>'
        f'<td><span class="badge progress">progress ×{len(run)}</span></td><td>{last["attempt"]}</td>'
        f"<td>progress {first['data']['progress']:.0%} → {last['data']['progress']:.0%}</td></tr>"
    )


def audit_rows(events: list[dict[str, Any]]) -> str:
    out: list[str] = []
    run: list[dict[str, Any]] = []
    for event in events:
        if event["type"] == "progress" and (not run or run[-1]["attempt"] == event["attempt"]):
            run.append(event)
            continue
        if run:
            out.append(_progress_run(run))
        run = [event] if event["type"] == "progress" else []
        if not run:
            out.append(event_row(event))
    if run:
        out.append(_progress_run(run))
    return "".join(out)


def params_text(value: Any) -> str:
    if isinstance(value, list) and len(value) > 6:
        return f"{fmt(value[0])}, {fmt(value[1])}, …, {fmt(value[-1])} ({len(value)} values: a sweep)"
    return fmt(value)


def event_row(event: dict[str, Any]) -> str:
    return (
        f'<tr data-id="{e(event["id"])}"><td>{event["seq"]}</td><td class="mono">{e(event["time"])}</td>'
        f'<td><span class="badge {e(event["type"])}">{e(event["type"])}</span></td><td>{event["attempt"]}</td>'
        f"<td>{e(_event_detail(event))}</td></tr>"
    )


def _trades(trades: dict[str, list[Any]]) -> str:
    """The result's trades come as columns (one list per field, aligned by index)."""
    count = len(trades.get("entry_bar", []))
    if not count:
        return "<p>No trades.</p>"
    cols = ("entry_time", "exit_time", "size", "entry_price", "exit_price", "pnl", "return_pct", "duration_days")
    head = "".join(f"<th>{c.replace('_', ' ')}</th>" for c in cols)
    body = "".join(
        "<tr>" + "".join(f"<td>{e(fmt(trades.get(c, [None] * count)[i]))}</td>" for c in cols) + "</tr>"
        for i in range(min(count, MAX_TRADES))
    )
    more = f"<p class=note>First {MAX_TRADES} of {count} trades.</p>" if count > MAX_TRADES else ""
    return f'<table class="trades"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>{more}'


def _result_sections(detail: dict[str, Any]) -> str:
    out = []
    if detail.get("kind") == "sweep":
        rows = detail.get("table", [])[:MAX_SWEEP_ROWS]
        if rows:
            names = list(rows[0]["params"])
            head = "".join(f"<th>{e(n)}</th>" for n in names) + f"<th>{e(detail.get('objective'))}</th>"
            body = "".join(
                "<tr>"
                + "".join(f"<td>{e(fmt(r['params'].get(n)))}</td>" for n in names)
                + f"<td>{e(fmt(r.get('objective')))}</td></tr>"
                for r in rows
            )
            out.append(
                f"<h2>Sweep: best {len(rows)} of {detail.get('combinations')} combinations</h2>"
                f'<table class="sweep"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'
            )
        detail = detail.get("best") or {}
        out.append(f"<h2>Best parameters: {e(fmt(detail.get('params')))}</h2>")
    curve = detail.get("equity_curve")
    if curve:
        out.append(
            '<h2>Equity</h2><figure class="chart" id="equity-chart">'
            + line_chart(curve["time"], curve["equity"], css="equity", fill=False)
            + "</figure>"
        )
        out.append(
            '<h2>Drawdown (%)</h2><figure class="chart" id="drawdown-chart">'
            + line_chart(curve["time"], curve["drawdown_pct"], css="drawdown", fill=True)
            + "</figure>"
        )
    if "trades" in detail:
        out.append(f"<h2>Trades ({len(detail['trades'].get('entry_bar', []))})</h2>" + _trades(detail["trades"]))
    return "".join(out)


async def task_page(request: Request) -> Response:
    ctx = _ctx(request)
    raw = request.path_params["task_id"]
    try:
        task_id = str(uuid.UUID(raw))
    except ValueError:
        task_id = ""
    # State and audit trail from the read model, in one read, so they agree with each other
    # and with every other reader (the API, the live streams), also once retention trimmed the log.
    history = await ctx.projection.history(task_id, ctx.store) if task_id else None
    if history is None:
        body = f"<section><h1>No such task</h1><p>There is no task {e(raw)}.</p></section>"
        response = page(request, "Backstream: no such task", body, name="task")
        response.status_code = 404
        return response
    state = history.state
    api = to_api(state)
    events = [event_view(s) for s in history.events]
    archived = ""
    if history.archived is not None:
        archived = f'<p class="archived" id="archived">Earlier history: {e(history.archived.describe())}.</p>'
    spec = msgspec.to_builtins(state.spec)
    params = spec.pop("params", {})
    summary = [
        ("status", state.status),
        ("attempt", state.attempt),
        ("worker", state.worker),
        ("created", state.created_at),
        ("started", state.started_at),
        ("finished", state.finished_at),
        ("submitted by", state.submitted_by),
    ]
    if state.status == "cancelled":
        summary.append(("cancelled by", state.cancelled_by))
    if state.error:
        summary.append(("error", state.error))
    metrics = (state.result or {}).get("metrics") or {}
    parameter_rows = [(f"params.{k}", params_text(v)) for k, v in params.items()] + list(spec.items())
    result = ""
    if state.status == "completed":
        stored = await full_result_json(ctx, state)
        if stored:
            detail = decode_json(stored)
            # The summary has the headline metrics; the stored result has all of them.
            metrics = (detail.get("best") or detail).get("metrics") or metrics
            result = _result_sections(detail)
    body = f"""
<section class="task-head"><h1>{e(state.spec.strategy)} on {e(state.spec.symbol)}
<span class="badge {e(state.status)}" id="status">{e(state.status)}</span></h1>
<p class="mono">{e(task_id)}</p>
<div id="progress" class="progress big">{progress_bar(state.progress)}</div>
<p id="flash" class="flash" hidden></p>
<div class="actions"><button class="cancel">Cancel</button><button class="retry">Retry</button></div></section>
<section class="columns"><div><h2>Task</h2>{_kv_table(summary)}</div>
<div><h2>Parameters</h2>{_kv_table(parameter_rows)}</div>
<div><h2>Metrics</h2>{_kv_table(list(metrics.items())) if metrics else "<p>None yet.</p>"}</div></section>
<section>{result}</section>
<section><h2>Audit trail</h2>{archived}<table id="events"><thead><tr><th>seq</th><th>time</th><th>event</th>
<th>attempt</th><th>details</th></tr></thead><tbody>{audit_rows(events)}</tbody></table>
</section>"""
    return page(
        request,
        f"Backstream: task {task_id[:8]}",
        body,
        name="task",
        data={"task": task_id, "since": state.last_event_id, "status": api["status"], "seq": str(state.seq)},
    )


def _strategy_fields() -> str:
    out = []
    for name, strategy in STRATEGIES.items():
        inputs = []
        for p in strategy.params:
            kind = "integer" if p.kind is int else "number"
            example = EXAMPLE_PARAMS.get(name, {}).get(p.name, "")
            inputs.append(
                f'<label data-field="params.{e(p.name)}">{e(p.name)} '
                f'<input name="param:{e(p.name)}" value="{e(example)}" data-kind="{kind}" required '
                f'title="{e(p.doc)}; a {kind} from {p.minimum:g} to {p.maximum:g}, or a comma-separated list to sweep">'
                f"<small>{e(p.doc)} ({kind}, {p.minimum:g}–{p.maximum:g}; a list such as 5,10,15 sweeps)</small>"
                f'<em class="error"></em></label>'
            )
        out.append(
            f'<fieldset class="params" data-strategy="{e(name)}"><legend>{e(name)} parameters</legend>'
            f'<p class="note">{e(strategy.summary)}</p>{"".join(inputs) or "<p>No parameters.</p>"}</fieldset>'
        )
    return "".join(out)


def _field(name: str, label: str, control: str, hint: str = "") -> str:
    return (
        f'<label data-field="{name}">{label} {control}'
        f'{f"<small>{hint}</small>" if hint else ""}<em class="error"></em></label>'
    )


async def submit_page(request: Request) -> Response:
    datasets = await asyncio.to_thread(_ctx(request).catalog.datasets)  # reads user files: off the loop
    strategies = "".join(f'<option value="{e(n)}">{e(n)}</option>' for n in STRATEGIES)
    symbols = "".join(
        f'<option value="{e(d.symbol)}" data-start="{d.start}" data-end="{d.end}">'
        f"{e(d.symbol)} ({d.start} to {d.end}, {d.rows} bars)</option>"
        for d in datasets
    )
    objectives = "".join(f"<option{' selected' if o == 'sqn' else ''}>{e(o)}</option>" for o in OBJECTIVES)
    number = 'type="number" step="any" min="0"'
    body = f"""
<section><h1>New backtest</h1>
<form id="submit-form" novalidate>
<div class="columns"><div>
{_field("strategy", "Strategy", f'<select name="strategy">{strategies}</select>')}
{_field("symbol", "Symbol", f'<select name="symbol">{symbols}</select>')}
{_field("start", "Start", '<input name="start" type="date">', "empty: the first bar")}
{_field("end", "End", '<input name="end" type="date">', "empty: the last bar")}
</div><div>{_strategy_fields()}</div><div>
{_field("cash", "Cash", f'<input name="cash" {number} value="10000">')}
{
        _field(
            "commission",
            "Commission rate",
            f'<input name="commission" {number} value="0.002">',
            "of traded value, each side; below 0.1",
        )
    }
{_field("commission_fixed", "Fixed commission", f'<input name="commission_fixed" {number} value="0">', "per order")}
{_field("spread", "Spread", f'<input name="spread" {number} value="0">', "relative, paid on entry")}
{_field("slippage_bps", "Slippage (bps)", f'<input name="slippage_bps" {number} value="0">')}
{_field("long_only", "Long only", '<input name="long_only" type="checkbox">')}
{_field("objective", "Sweep objective", f'<select name="objective">{objectives}</select>', "sweeps only")}
{_field("constraint", "Sweep constraint", '<input name="constraint" placeholder="fast < slow">', "sweeps only")}
</div></div>
<p id="form-errors" class="flash" hidden></p>
<button type="submit" id="submit-button">Submit backtest</button>
</form></section>"""
    return page(request, "Backstream: submit", body, name="submit")


async def workers_page(request: Request) -> Response:
    ctx = _ctx(request)
    keys = ctx.store.keys
    groups, consumers = await consumer_groups(ctx.store.redis, keys.work)
    running, _ = await ctx.projection.list_tasks(status="running", limit=500, cursor=None)
    position = await ctx.projection.position()
    lag, lag_s = await projector_lag(ctx.store.redis, keys.events, position)
    dead = await ctx.store.redis.xlen(keys.dead_letters)
    by_worker: dict[str, list[Any]] = {}
    for t in running:
        by_worker.setdefault(t.worker or "?", []).append(t)
    group_rows = "".join(
        f"<tr><td>{e(text(g['name']))}</td><td>{g['consumers']}</td><td>{g['pending']}</td>"
        f"<td>{e(fmt(g.get('lag')))}</td><td class=mono>{e(text(g.get('last-delivered-id')))}</td></tr>"
        for g in groups
    )
    lease = ctx.settings.lease_ms
    beats = await read_beats(ctx.store.redis, keys.worker_heartbeats)
    members = {text(c["name"]): c for c in consumers.get(WORKER_GROUP, [])}
    consumer_rows = []
    for name in sorted(members.keys() | beats.ages_s.keys()):
        c = members.get(name, {"pending": 0})
        age = beats.ages_s.get(name)
        alive = age is not None and age * 1000 < lease
        beat = f"{age:.1f} s ago" if age is not None else "never"
        tasks = "".join(
            f'<a href="/tasks/{e(t.task_id)}" class="mono">{e(t.task_id[:8])}</a> '
            f"{e(t.spec.strategy)}/{e(t.spec.symbol)} {progress_bar(t.progress)}<br>"
            for t in by_worker.pop(name, [])
        )
        consumer_rows.append(
            f'<tr class="{"alive" if alive else "silent"}"><td>{e(name)}</td>'
            f'<td><span class="badge {"running" if alive else "failed"}">{"alive" if alive else "silent"}</span></td>'
            f"<td>{c['pending']}</td><td>{beat}</td><td>{tasks or 'idle'}</td></tr>"
        )
    body = f"""
<section><h1>Workers</h1>
<p>A worker is <em>alive</em> while its own heartbeat, sent on a timer whether it is busy or
idle, is younger than the lease ({lease / 1000:g} s).</p>
<table id="consumers"><thead><tr><th>worker</th><th>state</th><th>pending</th><th>last heartbeat</th>
<th>running</th></tr>
</thead><tbody>{"".join(consumer_rows)}</tbody></table>
<h2>Consumer groups on {e(keys.work)}</h2>
<table id="groups"><thead><tr><th>group</th><th>consumers</th><th>pending</th><th>lag</th><th>last delivered</th>
</tr></thead><tbody>{group_rows}</tbody></table>
<h2>Projector and dead letters</h2>
{
        _kv_table(
            [
                ("projector position", position),
                ("log entries not yet projected", lag),
                ("projector behind by (s)", lag_s),
                ("dead letters", dead),
            ]
        )
    }
</section>"""
    return page(request, "Backstream: workers", body, name="workers", refresh_s=3)


routes = [
    Route("/", tasks_page),
    Route("/tasks/{task_id}", task_page),
    Route("/submit", submit_page),
    Route("/workers", workers_page),
    Mount("/static", app=StaticFiles(directory=HERE / "static"), name="static"),
]
