"""The field-by-field checks of a request: each field's type and range, parameters against the
strategy's declaration, dates against the data, cash against what the engine represents.

`validation.check_spec` runs them in order and decides which apply; each here is a pure
function of the request (and the strategy or bars it names) that returns `FieldError`s.
"""

from __future__ import annotations

import math
from typing import Any

import msgspec

from consumers.engine.bars import Bars
from consumers.engine.interface import ParamDef, Registered
from consumers.engine.limits import MAX_MONEY, MAX_UNITS, lowest_fill_price
from orchestrator.domain.spec import BacktestSpec

# backtesting.py rejects commission rates of 10% or more; so do we, as such a rate is a typo.
MAX_COMMISSION = 0.1


class FieldError(msgspec.Struct, frozen=True):
    """One problem with a request: the field it concerns and what is wrong with it."""

    field: str  # dotted path into the request, e.g. "params.fast" or "params.fast[2]"
    message: str


def number_errors(spec: BacktestSpec) -> list[FieldError]:
    """The request's money, cost and timeout fields each finite and within its range."""
    errors = []
    limits: list[tuple[str, float, float | None, bool]] = [
        # field, lowest allowed, upper bound (exclusive) or None, lowest itself allowed
        ("cash", 0.0, MAX_MONEY, False),
        ("commission", 0.0, MAX_COMMISSION, True),
        ("commission_fixed", 0.0, MAX_MONEY, True),
        ("spread", 0.0, 1.0, True),
        ("slippage_bps", 0.0, 10_000.0, True),
        ("timeout_s", 0.0, None, False),
    ]
    for name, low, high, inclusive in limits:
        value = getattr(spec, name)
        if value is None and name == "timeout_s":
            continue  # optional: the worker's limit applies
        if isinstance(value, bool) or not isinstance(value, int | float) or not finite(value):
            errors.append(FieldError(name, f"must be a finite number, got {shown(value)}"))
        elif value < low or (value == low and not inclusive):
            errors.append(
                FieldError(name, f"must be {'at least' if inclusive else 'greater than'} {low:g}, got {value:g}")
            )
        elif high is not None and value >= high:
            why = " (2^46: float64 resolves money to a cent only below it)" if high == MAX_MONEY else ""
            errors.append(FieldError(name, f"must be less than {high:g}{why}, got {value:g}"))
    return errors


def finite(value: int | float) -> bool:
    """Whether `value` is a finite number; an int (exact, any size) too large for a float is not,
    as it cannot be computed with."""
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


def shown(value: Any) -> str:
    """`value` as a message quotes it: its repr, cut to 12 characters when over 40."""
    text = repr(value)
    return text if len(text) <= 40 else f"{text[:12]}... ({len(text)} characters)"


def _value_error(strategy: Registered, name: str, value: Any) -> str | None:
    """What is wrong with one value of parameter `name` (type, finiteness, bounds), or None."""
    pdef = next(p for p in strategy.params if p.name == name)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return f"must be a number, got {value!r}"
    if pdef.kind is int and not isinstance(value, int):
        return f"must be an integer, got {value!r}"
    if not finite(value):
        return f"must be finite, got {shown(value)}"
    low_ok = value > pdef.minimum if pdef.min_exclusive else value >= pdef.minimum
    high_ok = value < pdef.maximum if pdef.max_exclusive else value <= pdef.maximum
    if not (low_ok and high_ok):
        return f"must be {_range(pdef)}, got {value:g}"
    return None


def _range(p: ParamDef) -> str:
    if not p.min_exclusive and not p.max_exclusive:
        return f"between {p.minimum:g} and {p.maximum:g}"
    low = f"{'above' if p.min_exclusive else 'at least'} {p.minimum:g}"
    high = f"{'below' if p.max_exclusive else 'at most'} {p.maximum:g}"
    return f"{low} and {high}"


def param_errors(spec: BacktestSpec, strategy: Registered) -> list[FieldError]:
    """Unknown and missing parameters, and each value (or each of a sweep list) of the known ones."""
    errors = []
    expected = strategy.param_names
    for name in spec.params:
        if name not in expected:
            errors.append(
                FieldError(
                    f"params.{name}", f"unknown parameter for {strategy.name}; expected {', '.join(expected) or 'none'}"
                )
            )
    for name in expected:
        if name not in spec.params and name in strategy.defaults:
            continue  # the default applies
        if name not in spec.params:
            errors.append(FieldError(f"params.{name}", f"missing; {strategy.name} needs {', '.join(expected)}"))
            continue
        value = spec.params[name]
        if isinstance(value, list):
            if not value:
                errors.append(FieldError(f"params.{name}", "a sweep list needs at least one value"))
            if len(set(value)) != len(value):
                errors.append(FieldError(f"params.{name}", "a sweep list must not repeat values"))
            for k, v in enumerate(value):
                if (msg := _value_error(strategy, name, v)) is not None:
                    errors.append(FieldError(f"params.{name}[{k}]", msg))
        elif (msg := _value_error(strategy, name, value)) is not None:
            errors.append(FieldError(f"params.{name}", msg))
    return errors


# Position management: field, lowest, highest, lowest allowed, highest allowed, integer only.
MANAGEMENT_LIMITS: dict[str, tuple[float, float, bool, bool, bool]] = {
    "size": (0.0, float(MAX_UNITS), False, True, False),
    "margin": (0.0, 1.0, False, True, False),
    # A stop 100% or more from the entry would be at or beyond a price of 0 for a long.
    "stop_loss_pct": (0.0, 100.0, False, False, False),
    # A short's target 100% or more below the entry would be at or below a price of 0.
    "take_profit_pct": (0.0, 100.0, False, False, False),
    "trailing_stop_pct": (0.0, 100.0, False, False, False),
    "trailing_atr": (0.0, 1000.0, False, True, False),
    "max_bars": (1.0, 10_000_000.0, True, True, True),
}


def _management_value_error(name: str, value: Any) -> str | None:
    low, high, low_ok, high_ok, integer = MANAGEMENT_LIMITS[name]
    if isinstance(value, bool) or not isinstance(value, int | float) or not finite(value):
        return f"must be a finite number, got {shown(value)}"
    if integer and value != int(value):
        return f"must be a whole number, got {value!r}"
    if value < low or (value == low and not low_ok) or value > high or (value == high and not high_ok):
        return (
            f"must be {'at least' if low_ok else 'above'} {low:g} and {'at most' if high_ok else 'below'} {high:g}, "
            f"got {value:g}"
        )
    if name == "size" and value >= 1 and value != int(value):
        return f"a size of 1 or more is a number of units and must be whole (backtesting.py's rule), got {value!r}"
    return None


def management_errors(spec: BacktestSpec) -> list[FieldError]:
    """Each position-management field within its range (MANAGEMENT_LIMITS), one value or a sweep list."""
    errors = []
    for name, value in spec.management.items():
        if isinstance(value, list):
            if not value:
                errors.append(FieldError(name, "a sweep list needs at least one value"))
            if len(set(value)) != len(value):
                errors.append(FieldError(name, "a sweep list must not repeat values"))
            errors += [
                FieldError(f"{name}[{k}]", msg)
                for k, v in enumerate(value)
                if (msg := _management_value_error(name, v)) is not None
            ]
        elif (msg := _management_value_error(name, value)) is not None:
            errors.append(FieldError(name, msg))
    return errors


def range_errors(spec: BacktestSpec, bars: Bars) -> list[FieldError]:
    """`start` and `end` must lie within the data: a range beyond it is refused, never clipped."""
    covers = f"the data of {bars.symbol} covers {bars.start} to {bars.end}"
    errors = []
    if spec.start is not None and not bars.start <= spec.start <= bars.end:
        where = "before the first bar" if spec.start < bars.start else "after the last bar"
        errors.append(FieldError("start", f"{spec.start} is {where}; {covers}"))
    if spec.end is not None and not bars.start <= spec.end <= bars.end:
        where = "after the last bar" if spec.end > bars.end else "before the first bar"
        errors.append(FieldError("end", f"{spec.end} is {where}; {covers}"))
    return errors


def unit_errors(spec: BacktestSpec, window: Bars) -> list[FieldError]:
    """The cash must not buy more units than the engine represents (MAX_UNITS) at the lowest
    price an entry in the date range can fill at (fees only lower the count)."""
    if not len(window):
        return []
    price = lowest_fill_price(float(window.open.min()), spec.spread, spec.slippage_bps / 10_000, spec.long_only)
    price *= spec.fractional_unit or 1.0  # a fractional run counts units of that fraction
    # With margin, an order buys up to cash / margin (backtesting.py's leverage).
    margins = spec.margin if isinstance(spec.margin, list) else [spec.margin]
    leverage = 1 / min(margins)
    if price > 0 and spec.cash * leverage / price <= MAX_UNITS:
        return []
    most = MAX_UNITS * price / leverage
    with_margin = f" with margin {min(margins):g}" if leverage != 1 else ""
    return [
        FieldError(
            "cash",
            f"{spec.cash:g}{with_margin} would buy {spec.cash * leverage / price if price > 0 else math.inf:.3g} "
            f"units at the lowest fill price in the date range ({price:.6g}); the engine holds at most 2^53 "
            f"({MAX_UNITS:.3g}) units, so cash must be at most {most:.6g} here",
        )
    ]


def too_few(spec: BacktestSpec, bars: Bars, have: int, need: int) -> str:
    """The message for a date range of `have` bars where the strategy needs `need`."""
    return (
        f"{have} bars of {bars.symbol} between {spec.start or bars.start} and {spec.end or bars.end}; "
        f"this strategy needs at least {need} (data covers {bars.start} to {bars.end})"
    )


def job_errors(spec: BacktestSpec, system: bool) -> list[FieldError]:
    """The fields of a job: one of `symbol` and `symbols` (the shape of a universe; its symbols
    are checked against the data by `check_spec`), the objective's direction, the failure
    tolerance, and `chunk`, which only the system sets (`system`: accept it)."""
    errors = []
    if spec.symbols is None and not spec.symbol:
        errors.append(FieldError("symbol", "missing: name a symbol, or a universe in symbols"))
    elif spec.symbols is not None and spec.symbol:
        errors.append(FieldError("symbols", f"give either symbol ({spec.symbol!r}) or symbols, not both"))
    if isinstance(spec.symbols, str) and spec.symbols != "*":
        errors.append(FieldError("symbols", f'a list of symbols, or "*" for every dataset; got {shown(spec.symbols)}'))
    elif isinstance(spec.symbols, list) and not spec.symbols:
        errors.append(FieldError("symbols", "a universe needs at least one symbol"))
    if spec.objective.startswith("-") and spec.direction == "max":
        errors.append(
            FieldError("direction", f"'max' contradicts the objective {spec.objective!r} (a leading '-' minimises)")
        )
    tolerance = spec.failure_tolerance
    if isinstance(tolerance, bool) or not isinstance(tolerance, int | float) or not finite(tolerance):
        errors.append(FieldError("failure_tolerance", f"must be a finite number, got {shown(tolerance)}"))
    elif not 0 <= tolerance < 1:
        errors.append(
            FieldError("failure_tolerance", f"a fraction of the chunks: at least 0 and below 1, got {tolerance:g}")
        )
    errors += _chunk_errors(spec, system)
    return errors


def _chunk_errors(spec: BacktestSpec, system: bool) -> list[FieldError]:
    chunk = spec.chunk
    if chunk is None:
        return []
    if not system:
        return [FieldError("chunk", "set by the system on the chunk tasks of a job; leave it out")]
    if spec.symbols is not None or not 0 <= chunk.start < chunk.stop or chunk.index < 0:
        return [
            FieldError(
                "chunk",
                f"a chunk computes combinations [start, stop) of one symbol, with 0 <= start < stop and "
                f"index >= 0; got index {chunk.index}, [{chunk.start}, {chunk.stop})",
            )
        ]
    return []
