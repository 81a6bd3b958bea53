"""The results as Markdown tables: medians of the repetitions and ratios to Backstream."""

from __future__ import annotations

from typing import Any

# The row of the work alone in plain processes (bench/bounds.py): a bound, not a system.
WORK_ALONE = "work_alone"

TARGETS = {
    "throughput": "Backstream >= 2x the fastest peer",
    "http": "HTTP submit p50 <= 2x the bare-XADD floor; no errors at concurrency 32",
    "cancel": "cancel of a running backtest p99 <= 100 ms",
    "ceiling": "events appended >= 30% of pipelined redis-benchmark XADD",
    "memory": "<= 4 KB per finished task without results",
}


def _f(value: Any, digits: int = 0) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return str(value)


def _throughput(res: dict[str, Any], meta: dict[str, Any]) -> list[str]:
    lines = [
        "## 1. Throughput",
        "",
        f"Tasks/s from first submit to last completion (median of {meta['settings']['reps']} runs of "
        f"{meta['settings']['tasks']:,} tasks; RQ's forking worker {meta['settings']['rq_fork_tasks']:,}), "
        "end-to-end latency p50/p99, and `x BS` = Backstream's rate / the system's rate "
        "(Backstream = its own client).",
        "",
    ]
    keys = sorted(
        {(int(k.split("|")[1]), k.split("|")[2]) for k in res if "|" in k}, key=lambda x: (x[1] != "noop", x[0])
    )
    for workers, kind in keys:
        rows = {k.split("|")[0]: v for k, v in res.items() if k.endswith(f"|{workers}|{kind}")}
        bs = rows.get("backstream", {}).get("tasks_per_s")
        lines += [
            f"### {kind}, {workers} worker process{'es' if workers > 1 else ''}",
            "",
            "| system | tasks/s | x BS | p50 ms | p99 ms | Redis commands/task | used_memory B/task |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        peers = []
        alone = rows.pop(WORK_ALONE, {}).get("tasks_per_s")
        for name, row in rows.items():
            if "error" in row and "tasks_per_s" not in row:
                lines.append(f"| {name} | failed: {row['error'][:120]} | | | | | |")
                continue
            rate = row.get("tasks_per_s")
            if not name.startswith("backstream") and rate:
                peers.append((rate, name))
            lines.append(
                f"| {name} | {_f(rate)} | {_f(bs / rate, 2) if bs and rate else '–'} | "
                f"{_f(row.get('p50_ms'), 1)} | {_f(row.get('p99_ms'), 1)} | "
                f"{_f(row.get('commands_per_task'), 1)} | {_f(row.get('mem_per_task'))} |"
            )
        if peers and bs:
            rate, name = max(peers)
            verdict = "met" if bs >= 2 * rate else "missed"
            lines += [
                "",
                f"Fastest peer: {name} ({_f(rate)}/s); Backstream / fastest = {bs / rate:.2f} "
                f"(target >= 2: {verdict}).",
            ]
            if alone:
                lines.append(
                    f"The work alone, called in a loop by {workers} plain process{'es' if workers > 1 else ''} "
                    f"(no system, `bench/bounds.py`): {_f(alone)}/s; 2x the fastest peer is "
                    f"{2 * rate / alone:.2f} of that."
                )
        lines.append("")
    return lines


def _http(res: dict[str, Any]) -> list[str]:
    lines = [
        "## 2. Submit latency over HTTP",
        "",
        "`POST /api/backtests` (the SMA spec) vs a bare Starlette endpoint doing one XADD on the same "
        "Redis (same uvicorn setup), alternating, no workers running; medians of the repetitions.",
        "",
        "| concurrency | endpoint | p50 ms | p99 ms | req/s | errors | p50 / floor |",
        "| ---: | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for c in (1, 32):
        floor = res.get(f"floor|{c}", {}).get("p50_ms")
        for name in ("backstream", "floor"):
            row = res.get(f"{name}|{c}")
            if not row:
                continue
            ratio = row["p50_ms"] / floor if floor and row.get("p50_ms") else None
            lines.append(
                f"| {c} | {name} | {_f(row.get('p50_ms'), 2)} | {_f(row.get('p99_ms'), 2)} | "
                f"{_f(row.get('requests_per_s'))} | {row.get('errors')} | {_f(ratio, 2)} |"
            )
    return [*lines, ""]


def _cancel(res: dict[str, Any]) -> list[str]:
    bs = res.get("backstream", {})
    if "error" in bs:
        return ["## 3. Cancel latency", "", f"failed: {bs['error']}", ""]
    lines = [
        "## 3. Cancel latency",
        "",
        f"{bs.get('cancels')} cancels of running long backtests (a ~4 s sweep), 2 workers, one cancel per "
        "worker at a time, each 20-60 ms after the task started running. From just before the `DELETE`:",
        "",
        "| measured from DELETE sent to | p50 ms | p99 ms | max ms |",
        "| --- | ---: | ---: | ---: |",
    ]
    for key, label in (
        ("http_ms", "the HTTP 200"),
        ("cancelled_event_ms", "the `cancelled` event (its stream id time)"),
        ("worker_stopped_ms", "the worker's `task.stopped` log line (it stopped computing)"),
    ):
        v = bs.get(key, {})
        lines.append(f"| {label} | {_f(v.get('p50'), 1)} | {_f(v.get('p99'), 1)} | {_f(v.get('max'), 1)} |")
    lines += [
        "",
        f"Events appended for a task after its `cancelled` event: {bs.get('events_after_cancel')} "
        f"(fencing); problems: {bs.get('problem_count')} {bs.get('problems') or ''}",
        "",
    ]
    peers = {k: v for k, v in res.items() if k != "backstream"}
    if peers:
        lines += [
            "The peers that can stop a running job, same long job, 2 workers, one cancel per worker at a "
            "time, 20-60 ms after the job stamped its start (RQ: `send_stop_job_command`, forking worker; "
            "Celery: `revoke(terminate=True)`, prefork pool). From just before the cancel call to the "
            "system recording the job stopped (RQ `stopped`, Celery `REVOKED`):",
            "",
            "| system | cancels | call p50 ms | stopped p50 ms | stopped p99 ms | max ms "
            "| ran to completion anyway | problems |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
        ]
        for name, p in peers.items():
            if "error" in p:
                lines.append(f"| {name} | failed: {p['error'][:120]} | | | | | | |")
                continue
            call, stop = p.get("call_ms", {}), p.get("stopped_ms", {})
            lines.append(
                f"| {name} | {p.get('cancels')} | {_f(call.get('p50'), 1)} | {_f(stop.get('p50'), 1)} | "
                f"{_f(stop.get('p99'), 1)} | {_f(stop.get('max'), 1)} | {p.get('completed_anyway')} | "
                f"{p.get('problem_count')} {p.get('problems') or ''} |"
            )
        lines.append("")
    return lines


def _ceiling(results: dict[str, Any]) -> list[str]:
    ceil = results.get("ceiling", {})
    tp = results.get("throughput", {})
    lines = [
        "## 4. The Redis ceiling",
        "",
        "redis-benchmark `XADD bench:ceiling * f v`, 50 clients, on the same private server:",
        "",
        f"- no pipelining: {_f(ceil.get('xadd_P1'))} XADD/s; pipeline 16: {_f(ceil.get('xadd_P16'))} XADD/s",
    ]
    if ceil.get("xadd_P16_event_sized"):
        lines.append(
            f"- pipeline 16 with entries the size of Backstream's events (6 fields, ~200 B): "
            f"{_f(ceil['xadd_P16_event_sized'])} XADD/s"
        )
    producer = ceil.get("python_producer") or {}
    if "pipelined_xadd_per_s" in producer:
        lines.append(
            f"- one Python process appending Backstream `submitted` events ({producer['per_call']} per round trip, "
            f"`bench/bounds.py`): encoding each and pipelining XADD {_f(producer['pipelined_xadd_per_s'])}/s; "
            f"pre-encoded, one Lua call appending them all {_f(producer['lua_append_per_s'])}/s"
        )
    lines += [
        "",
        "| Backstream run | events/task | events appended/s | % of XADD -P 16 | % of XADD -P 1 |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for key, row in sorted(tp.items()):
        if not key.startswith("backstream") or "events_per_s" not in row:
            continue
        eps = row["events_per_s"]
        p16, p1 = ceil.get("xadd_P16"), ceil.get("xadd_P1")
        lines.append(
            f"| {key.replace('|', ', ')} workers | {_f(row.get('events_per_task'), 1)} | {_f(eps)} | "
            f"{_f(100 * eps / p16, 1) if p16 else '–'} | {_f(100 * eps / p1, 1) if p1 else '–'} |"
        )
    return [*lines, ""]


def _memory(results: dict[str, Any]) -> list[str]:
    tp = results.get("throughput", {})
    lines = [
        "## 5. Memory",
        "",
        "`INFO memory` used_memory growth per finished task over each timed run (median), at the largest "
        "worker count; each system with its default result retention.",
        "",
        "| system | no-op B/task | SMA B/task (with results) |",
        "| --- | ---: | ---: |",
    ]
    wmax = max((int(k.split("|")[1]) for k in tp if "|" in k), default=0)
    names = sorted(
        {k.split("|")[0] for k in tp if "|" in k} - {WORK_ALONE}, key=lambda n: (not n.startswith("backstream"), n)
    )
    for name in names:
        noop, sma = tp.get(f"{name}|{wmax}|noop", {}), tp.get(f"{name}|{wmax}|sma", {})
        lines.append(f"| {name} | {_f(noop.get('mem_per_task'))} | {_f(sma.get('mem_per_task'))} |")
    for kind in ("noop", "sma"):
        census = (tp.get(f"backstream|{wmax}|{kind}") or {}).get("census")
        if not census or not isinstance(census.get("families"), dict) or "error" in census["families"]:
            continue
        tasks = census["tasks_in_redis"]
        fams = census["families"]
        lines += [
            "",
            f"Backstream's keys after the {kind} block ({tasks:,} tasks in Redis; MEMORY USAGE, "
            "sampled per family), bytes per task:",
            "",
            "| key family | type | keys | B/task |",
            "| --- | --- | ---: | ---: |",
        ]
        total = without = 0.0
        for fam, v in sorted(fams.items(), key=lambda kv: -kv[1]["bytes"]):
            per = v["bytes"] / tasks
            total += per
            if not fam.endswith(":result"):
                without += per
            lines.append(f"| `{fam}` | {v['type']} | {v['keys']:,} | {per:,.0f} |")
        lines += [
            "",
            f"Total {total:,.0f} B/task; without the result strings {without:,.0f} B/task "
            f"(target <= 4,096: {'met' if without <= 4096 else 'missed'}).",
        ]
    return [*lines, ""]


def render(results: dict[str, Any]) -> str:
    meta = results["meta"]
    m = meta["machine"]
    lines = [
        "# Backstream vs peers: results",
        "",
        f"- command: `{meta['command']}`",
        f"- date: {meta['date']} (took {meta.get('seconds', '?')} s)",
        f"- machine: {m['cores']} cores ({m['cpu']}), {m['os']}, Python {m['python']}",
        f"- Redis {m['redis']} {m['redis_flags']}",
        f"- Backstream {meta['backstream']['commit']}: "
        + ", ".join(f"{k} {v}" for k, v in meta["backstream"]["versions"].items()),
        "- peers: " + ", ".join(f"{k} {v}" for k, v in meta["peers"].items()),
        "",
        "Targets: " + "; ".join(TARGETS.values()) + ".",
        "",
    ]
    if "throughput" in results:
        lines += (
            _throughput(results["throughput"], meta)
            if "error" not in results["throughput"]
            else ["## 1. Throughput", "", f"failed: {results['throughput']['error']}", ""]
        )
    if "http" in results:
        lines += (
            _http(results["http"])
            if "error" not in results["http"]
            else ["## 2. Submit latency over HTTP", "", f"failed: {results['http']['error']}", ""]
        )
    if "cancel" in results:
        lines += _cancel(results["cancel"])
    if "ceiling" in results:
        lines += _ceiling(results)
    if "throughput" in results and "error" not in results["throughput"]:
        lines += _memory(results)
    return "\n".join(lines) + "\n"
