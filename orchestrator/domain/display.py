"""How values and events read as text: the one formatter the command line and the dashboard share.

Each surface has its own `Style` (the terminal's `TEXT`, the dashboard's `WEB`, the sweep table's
`TABLE`); the rules are written once here. `event_fields` picks what a one-line summary of an event
shows; each surface lays those fields out its own way.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping
from typing import Any

# A parameter list longer than this shows as its ends and its length (a sweep).
LIST_SHOWN_WHOLE = 6
# The headline metrics a one-line summary of a `completed` event shows (of the result's metrics).
SUMMARY_METRICS = ("return_pct", "sharpe", "num_trades")


@dataclasses.dataclass(frozen=True, slots=True)
class Style:
    """How one surface writes values.

    `missing`: what None, NaN and ±inf show as. Floats with `abs(x) >= cents_from` show to the
    cent with thousands separators (`1,234.50`), smaller ones with 4 significant digits (`0.01235`);
    `zero_in_cents` shows 0.0 as `0.00` rather than `0`. `booleans`: the (true, false) words, or
    None for Python's `True`/`False`. Parameter values: a list's values are joined by `list_sep`
    (or, unless `join_short_lists`, a short list shows as JSON), a long one ends with
    `(N <sweep_note>)`; parameters are joined by `params_sep`.
    """

    missing: str
    cents_from: float
    zero_in_cents: bool = False
    booleans: tuple[str, str] | None = None
    list_sep: str = ","
    sweep_note: str = "values"
    join_short_lists: bool = True
    params_sep: str = " "


# The terminal (`backstream status`, `ls`, `tail`): `fast=5,10,20 slow=50`, `-` for nothing.
TEXT = Style(missing="-", cents_from=1000.0)
# The dashboard: amounts and prices to the cent (168.21, never 168.2), small rates keep their digits.
WEB = Style(
    missing="—",
    cents_from=1.0,
    zero_in_cents=True,
    booleans=("yes", "no"),
    list_sep=", ",
    sweep_note="values: a sweep",
    join_short_lists=False,
    params_sep=", ",
)
# A sweep's top rows (`backstream status`): two decimals unless a value is tiny.
TABLE = Style(missing="-", cents_from=1e-3, zero_in_cents=True)


def fmt(value: object, style: Style = TEXT) -> str:
    """`value` as `style` shows it: None and non-finite floats as `style.missing`, booleans as its
    words, floats by magnitude (see Style), lists and dicts as JSON, anything else as `str`."""
    if value is None:
        return style.missing
    if isinstance(value, bool) and style.booleans is not None:
        return style.booleans[0] if value else style.booleans[1]
    if isinstance(value, float):
        if not math.isfinite(value):
            return style.missing
        cents = abs(value) >= style.cents_from or (style.zero_in_cents and value == 0)
        return f"{value:,.2f}" if cents else f"{value:.4g}"
    if isinstance(value, list | dict):
        return json.dumps(value)
    return str(value)


def param_text(value: object, style: Style = TEXT) -> str:
    """One parameter's value: a number, or a list to sweep. A list of more than LIST_SHOWN_WHOLE
    values shows as its first two, `…`, its last and its length: `5,10,…,50 (10 values)`."""
    if isinstance(value, list) and len(value) > LIST_SHOWN_WHOLE:
        ends = style.list_sep.join([fmt(value[0], style), fmt(value[1], style), "…", fmt(value[-1], style)])
        return f"{ends} ({len(value)} {style.sweep_note})"
    if isinstance(value, list) and style.join_short_lists:
        return style.list_sep.join(fmt(x, style) for x in value)
    return fmt(value, style)


def params_text(params: Mapping[str, object], style: Style = TEXT) -> str:
    """A request's parameters as `name=value` pairs: `fast=10 slow=20` (TEXT)."""
    return style.params_sep.join(f"{name}={param_text(value, style)}" for name, value in params.items())


@dataclasses.dataclass(frozen=True, slots=True)
class EventFields:
    """What a one-line summary of an event can show, in groups each surface orders as it likes.

    `request`: a `submitted` event's strategy, symbol and params (a dict name -> value or list);
    `outcome`: a `completed` event's result summary without its metrics (kind, combinations,
    best_params, data, ...); `headline`: those of SUMMARY_METRICS its metrics hold; `rest`: every
    other field of the event's data, in order. Groups that do not apply are empty."""

    request: dict[str, Any]
    outcome: dict[str, Any]
    headline: dict[str, Any]
    rest: dict[str, Any]


def event_fields(event: Mapping[str, Any]) -> EventFields:
    """The fields of one event as the API and `backstream audit --json` give it (`type`, `data`,
    ...: see orchestrator.domain.history.event_view), grouped for a summary line."""
    rest = dict(event["data"])
    spec = rest.pop("spec", None)
    request: dict[str, Any] = {}
    if spec is not None:
        request = {"strategy": spec.get("strategy"), "symbol": spec.get("symbol"), "params": spec.get("params", {})}
    result = rest.pop("result", None) or {}
    metrics = result.get("metrics") or {}
    return EventFields(
        request=request,
        outcome={k: v for k, v in result.items() if k != "metrics"},
        headline={k: metrics[k] for k in SUMMARY_METRICS if k in metrics},
        rest=rest,
    )
