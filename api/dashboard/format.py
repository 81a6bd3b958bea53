"""How the dashboard shows values, metrics, parameters and events as text (no HTML here: the
templates escape what these return)."""

from __future__ import annotations

import math
from typing import Any

from orchestrator.domain import display
from orchestrator.domain.display import WEB, event_fields, param_text

# Metrics counted in whole units; every other metric shows two decimals (results.js agrees).
WHOLE_METRICS = frozenset(
    ("num_trades", "duration_days", "max_drawdown_duration_days", "max_trade_duration_days", "size")
)


def fmt(value: Any) -> str:
    """A value as the dashboard shows it (`display.fmt` in the WEB style: `—` for nothing,
    yes/no, amounts to the cent)."""
    return display.fmt(value, WEB)


def metric_text(name: str, value: Any) -> str:
    """A metric as tables show it: whole units for counts (WHOLE_METRICS), two decimals for
    everything else; anything not a finite number as `fmt` shows it."""
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return f"{value:,.0f}" if name in WHOLE_METRICS else f"{value:,.2f}"
    return fmt(value)


def params_text(value: Any) -> str:
    """A parameter's value as the dashboard shows it (`display.param_text` in the WEB style)."""
    return param_text(value, WEB)


def percent(progress: float) -> float:
    """Progress (0..1, clamped) as a percentage, 0..100."""
    return max(0.0, min(progress, 1.0)) * 100


def event_detail(event: dict[str, Any]) -> str:
    """An event's own fields as `k=v, …` (an `EventView` as builtins): its outcome and the rest
    (`display.event_fields`), without the spec or the metrics the page shows elsewhere."""
    fields = event_fields(event)
    return ", ".join(f"{k}={fmt(v)}" for k, v in {**fields.outcome, **fields.rest}.items())


def progress_run_detail(run: list[dict[str, Any]]) -> str:
    """A run of consecutive progress events: `progress 10% → 80%`."""
    return f"progress {run[0]['data']['progress']:.0%} → {run[-1]['data']['progress']:.0%}"
