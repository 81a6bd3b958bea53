"""The submit form (`/submit`): every installed strategy's parameters, the datasets, the costs,
position management and sweep options. dashboard.js posts it as JSON to POST /api/backtests."""

from __future__ import annotations

import asyncio
import math

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from api.context import context
from api.dashboard.render import page
from orchestrator.domain.views import Strategy, StrategyParam

# Values the form starts with (presentation only; the API validates whatever is sent).
EXAMPLE_PARAMS: dict[str, dict[str, float]] = {
    "sma_cross": {"fast": 10, "slow": 20},
    "momentum": {"lookback": 20, "threshold": 0.02},
    "bollinger": {"window": 20, "k": 2},
    "rsi": {"period": 14, "lower": 30, "upper": 70},
}
# The objective a sweep maximises unless the user picks another.
DEFAULT_OBJECTIVE = "sqn"
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


class ParamInput(msgspec.Struct, frozen=True):
    """One parameter's input: its name, `integer` or `number`, the value it starts with (text,
    empty without an example), what it means, and its bounds as text (`-inf`/`inf` unbounded)."""

    name: str
    kind: str
    example: str
    doc: str
    low: str
    high: str


def bound_text(value: float | None, *, upper: bool) -> str:
    """A parameter bound as the form shows it (`:g`: 2, 0.5, 1e+03); None (unbounded) is ±inf."""
    return f"{(math.inf if upper else -math.inf) if value is None else value:g}"


def _inputs(strategy: Strategy) -> list[ParamInput]:
    examples = EXAMPLE_PARAMS.get(strategy.name, {})

    def one(p: StrategyParam) -> ParamInput:
        example = examples.get(p.name)
        return ParamInput(
            name=p.name,
            kind=p.type,
            example="" if example is None else str(example),
            doc=p.description,
            low=bound_text(p.minimum, upper=False),
            high=bound_text(p.maximum, upper=True),
        )

    return [one(p) for p in strategy.params]


async def submit_page(request: Request) -> Response:
    """`GET /submit`: the form. The catalog reads the user's data files: off the event loop."""
    catalog = context(request).catalog
    datasets = await asyncio.to_thread(catalog.datasets)
    known = await asyncio.to_thread(catalog.strategies)
    return page(
        request,
        "submit.html",
        title="Backstream: submit",
        name="submit",
        strategies=[(s, _inputs(s)) for s in known.strategies],
        datasets=datasets,
        objectives=known.objectives,
        default_objective=DEFAULT_OBJECTIVE,
        management=MANAGEMENT_INPUTS,
    )
