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
from starlette.templating import Jinja2Templates

from consumers.engine.metrics import OBJECTIVES
from consumers.engine.registry import strategies as installed_strategies
from orchestrator.domain.history import event_view
from orchestrator.domain.views import to_api
from orchestrator.storage.codec import text
from orchestrator.storage.keys import WORKER_GROUP
from orchestrator.storage.presence import read_beats
from orchestrator.storage.readmodel.gauges import consumer_groups, projector_lag

HERE = Path(__file__).parent
STATUSES = ("queued", "running", "completed", "failed", "cancelled")
PAGE_SIZE = 100
# Compare draws two to four runs: more curves on one chart stop being readable.
COMPARE_MIN, COMPARE_MAX = 2, 4
# Metrics counted in whole units; every other metric shows two decimals (results.js agrees).
WHOLE_METRICS = frozenset(
    ("num_trades", "duration_days", "max_drawdown_duration_days", "max_trade_duration_days", "size")
)
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
        # Amounts and prices to the cent (168.21, never 168.2); small rates keep their digits.
        return f"{value:,.2f}" if abs(value) >= 1 or value == 0 else f"{value:.4g}"
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
            ("compare", "/compare", "Compare"),
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


def metric_text(name: str, value: Any) -> str:
    """A metric as tables show it: whole units for counts, two decimals for everything else."""
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return f"{value:,.0f}" if name in WHOLE_METRICS else f"{value:,.2f}"
    return fmt(value)


def _kv_table(rows: list[tuple[str, Any]], cls: str = "kv", *, metrics: bool = False) -> str:
    cells = []
    for k, v in rows:
        number = metrics and isinstance(v, int | float) and not isinstance(v, bool)
        shown = metric_text(k, v) if metrics else fmt(v)
        cells.append(f"<tr><th>{e(k)}</th><td{' class=num' if number else ''}>{e(shown)}</td></tr>")
    return f'<table class="{cls}">' + "".join(cells) + "</table>"


@cache
def _templates() -> Jinja2Templates:
    """The Jinja2 templates (autoescaped) that newer pages render their body with."""
    return Jinja2Templates(directory=HERE / "templates")


def _known_so_far(state: Any, events: list[dict[str, Any]]) -> str:
    """What a task without a result can say: where it is, or why it ended without one (a
    cancellation's `previous_status` in the log says whether an attempt was running)."""
    cancelled = [ev for ev in events if ev["type"] == "cancelled"]
    return (
        _templates()
        .get_template("outcome.html")
        .render(
            state=state,
            pct=f"{max(0.0, min(state.progress, 1.0)):.0%}",
            attempt=f"attempt {state.attempt}" if state.attempt else "no attempt yet",
            before=cancelled[-1]["data"].get("previous_status") if cancelled else None,
        )
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


async def task_page(request: Request) -> Response:
    ctx = _ctx(request)
    raw = request.path_params["task_id"]
    try:
        task_id = str(uuid.UUID(raw))
    except ValueError:
        task_id = ""
    # State and audit trail from the read model, in one read, so they agree with each other
    # and with every other reader (the API, the live streams), also once retention trimmed the log.
    history = await ctx.projection.history(task_id) if task_id else None
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
    metrics = (state.result or {}).get("metrics") or {}
    parameter_rows = [(f"params.{k}", params_text(v)) for k, v in params.items()] + list(spec.items())
    # A completed task's charts, heatmap and tables are drawn by results.js from GET …/result (the
    # same JSON every client reads); until then the headline metrics of the summary show.
    result = ""
    if state.status == "completed":
        result = (
            '<section id="result"><p class="note" id="result-loading">Loading the result…</p></section>'
            '<link rel="stylesheet" href="/static/vendor/uPlot.min.css">'
            '<script src="/static/vendor/uPlot.iife.min.js"></script><script src="/static/results.js"></script>'
        )
    compare = ""
    if state.status == "completed":
        compare = f'<a class="button" id="compare-link" href="/compare?ids={e(task_id)}">Compare with other runs</a>'
    metrics_html = _kv_table(list(metrics.items()), metrics=True) if metrics else _known_so_far(state, events)
    body = f"""
<section class="task-head"><h1>{e(state.spec.strategy)} on {e(state.spec.symbol)}
<span class="badge {e(state.status)}" id="status">{e(state.status)}</span></h1>
<p class="mono">{e(task_id)}</p>
<div id="progress" class="progress big">{progress_bar(state.progress)}</div>
<p id="flash" class="flash" hidden></p>
<div class="actions"><button class="cancel">Cancel</button><button class="retry">Retry</button>{compare}</div></section>
<section class="columns"><div><h2>Task</h2>{_kv_table(summary)}</div>
<div><h2>Parameters</h2>{_kv_table(parameter_rows)}</div>
<div><h2>{"Metrics" if metrics else "Outcome"}</h2><div id="metrics">{metrics_html}</div></div></section>
{result}
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
    for name, strategy in installed_strategies().items():
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


# Position management in the form (STRATEGIES.md, "Position management"): name, label, hint.
MANAGEMENT_INPUTS = (
    ("size", "Size", "empty: all equity; (0, 1) a fraction; ≥ 1 units"),
    ("margin", "Margin", "empty: 1; leverage is 1 / margin"),
    ("stop_loss_pct", "Stop-loss %", "from the entry price"),
    ("take_profit_pct", "Take-profit %", "from the entry price"),
    ("trailing_stop_pct", "Trailing stop %", "below the close (long)"),
    ("trailing_atr", "Trailing stop (ATRs)", "ATR over 100 bars"),
    ("max_bars", "Max bars held", "then closed at the next open"),
)


def _management_fields() -> str:
    return "".join(
        _field(name, label, f'<input name="{name}" data-management placeholder="none">', f"{hint}; a list sweeps")
        for name, label, hint in MANAGEMENT_INPUTS
    )


def _field(name: str, label: str, control: str, hint: str = "") -> str:
    return (
        f'<label data-field="{name}">{label} {control}'
        f'{f"<small>{hint}</small>" if hint else ""}<em class="error"></em></label>'
    )


async def submit_page(request: Request) -> Response:
    datasets = await asyncio.to_thread(_ctx(request).catalog.datasets)  # reads user files: off the loop
    strategies = "".join(f'<option value="{e(n)}">{e(n)}</option>' for n in installed_strategies())
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
{_management_fields()}
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
    can_run = {text(k): text(v) for k, v in (await ctx.store.redis.hgetall(keys.worker_strategies)).items()}
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
            f"<td>{c['pending']}</td><td>{beat}</td><td>{tasks or 'idle'}</td>"
            f'<td class="strategies">{e(", ".join(json.loads(can_run[name])) if name in can_run else "?")}</td></tr>'
        )
    body = f"""
<section><h1>Workers</h1>
<p>A worker is <em>alive</em> while its own heartbeat, sent on a timer whether it is busy or
idle, is younger than the lease ({lease / 1000:g} s).</p>
<table id="consumers"><thead><tr><th>worker</th><th>state</th><th>pending</th><th>last heartbeat</th>
<th>running</th><th>strategies</th></tr>
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


async def compare_page(request: Request) -> Response:
    """GET /compare?ids=A&ids=B: two to four completed runs' equity curves and metrics side by side
    (drawn by results.js from each run's GET …/result), and a picker of recent completed runs."""
    ctx = _ctx(request)
    chosen: list[str] = []
    for raw in request.query_params.getlist("ids"):
        for part in raw.split(","):
            try:
                task_id = str(uuid.UUID(part.strip()))
            except ValueError:
                continue
            if task_id not in chosen:
                chosen.append(task_id)
    recent, _ = await ctx.projection.list_tasks(status="completed", limit=PAGE_SIZE, cursor=None)
    problem = ""
    if len(chosen) > COMPARE_MAX:
        problem = f"Pick {COMPARE_MIN} to {COMPARE_MAX} runs to compare; {len(chosen)} were picked."
    elif len(chosen) == 1:
        problem = "Pick at least one more run to compare it with."
    runs = [
        {
            "id": t.task_id,
            "label": f"{t.spec.strategy} {t.spec.symbol} {t.task_id[:8]}",
            "params": ", ".join(f"{k}={params_text(v)}" for k, v in t.spec.params.items()),
            "finished": t.finished_at,
            "checked": t.task_id in chosen,
        }
        for t in recent
    ]
    body = (
        _templates()
        .get_template("compare.html")
        .render(
            runs=runs,
            chosen=chosen if not problem else [],
            problem=problem,
            least=COMPARE_MIN,
            most=COMPARE_MAX,
        )
    )
    return page(request, "Backstream: compare", body, name="compare")


routes = [
    Route("/", tasks_page),
    Route("/tasks/{task_id}", task_page),
    Route("/submit", submit_page),
    Route("/compare", compare_page, name="compare"),
    Route("/workers", workers_page),
    Mount("/static", app=StaticFiles(directory=HERE / "static"), name="static"),
]
