"""How the dashboard shows values, metrics, parameters and events as text (no HTML here: the
templates escape what these return)."""

from __future__ import annotations

import json
import math
from typing import Any

# Metrics counted in whole units; every other metric shows two decimals (results.js agrees).
WHOLE_METRICS = frozenset(
    ("num_trades", "duration_days", "max_drawdown_duration_days", "max_trade_duration_days", "size")
)
# A sweep list longer than this shows its first two values, its last and its length.
SHORT_LIST = 6


def fmt(value: Any) -> str:
    """A value for people: `—` for None and non-finite floats, yes/no for booleans, amounts and
    prices to the cent (168.21, with thousands separators), small rates to 4 significant digits,
    lists and dicts as JSON, anything else as `str`."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if not math.isfinite(value):
            return "—"
        return f"{value:,.2f}" if abs(value) >= 1 or value == 0 else f"{value:.4g}"
    if isinstance(value, list | dict):
        return json.dumps(value)
    return str(value)


def metric_text(name: str, value: Any) -> str:
    """A metric as tables show it: whole units for counts (WHOLE_METRICS), two decimals for
    everything else; anything not a finite number as `fmt` shows it."""
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return f"{value:,.0f}" if name in WHOLE_METRICS else f"{value:,.2f}"
    return fmt(value)


def params_text(value: Any) -> str:
    """A parameter's value; a sweep of more than SHORT_LIST values is shortened to
    `first, second, …, last (n values: a sweep)`."""
    if isinstance(value, list) and len(value) > SHORT_LIST:
        return f"{fmt(value[0])}, {fmt(value[1])}, …, {fmt(value[-1])} ({len(value)} values: a sweep)"
    return fmt(value)


def percent(progress: float) -> float:
    """Progress (0..1, clamped) as a percentage, 0..100."""
    return max(0.0, min(progress, 1.0)) * 100


def event_detail(event: dict[str, Any]) -> str:
    """An event's own fields as `k=v, …` (an `EventView` as builtins): a submitted event without
    its spec (the page shows it), a completed one with its result's fields but the metrics."""
    data = dict(event["data"])
    if event["type"] == "submitted":
        data.pop("spec", None)
    if event["type"] == "completed":
        result = data.pop("result", {}) or {}
        data = {k: v for k, v in result.items() if k != "metrics"} | data
    return ", ".join(f"{k}={fmt(v)}" for k, v in data.items())


def progress_run_detail(run: list[dict[str, Any]]) -> str:
    """A run of consecutive progress events: `progress 10% → 80%`."""
    return f"progress {run[0]['data']['progress']:.0%} → {run[-1]['data']['progress']:.0%}"
