"""Domain checks of a request, shared by the API (as a 422) and the worker: a pure function."""

from __future__ import annotations

import math
from typing import Any, cast

import msgspec

from consumers.engine.bars import Bars
from consumers.engine.constraints import Constraint, ConstraintError
from consumers.engine.datasets import Catalog
from consumers.engine.errors import DatasetError, DataUnavailable, InvalidSymbolError, UnknownSymbolError
from consumers.engine.interface import ParamDef, Registered
from consumers.engine.limits import MAX_MONEY, MAX_UNITS, lowest_fill_price
from consumers.engine.metrics import OBJECTIVES
from consumers.engine.registry import Registry, strategies
from consumers.engine.strategies import min_bars
from consumers.engine.sweep import MAX_COMBINATIONS, admissible, grid_size
from orchestrator.domain.spec import BacktestSpec

# backtesting.py rejects commission rates of 10% or more; so do we, as such a rate is a typo.
MAX_COMMISSION = 0.1


class FieldError(msgspec.Struct, frozen=True):
    field: str  # dotted path into the request, e.g. "params.fast" or "params.fast[2]"
    message: str


def _number_errors(spec: BacktestSpec) -> list[FieldError]:
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
        if isinstance(value, bool) or not isinstance(value, int | float) or not _finite(value):
            errors.append(FieldError(name, f"must be a finite number, got {_shown(value)}"))
        elif value < low or (value == low and not inclusive):
            errors.append(
                FieldError(name, f"must be {'at least' if inclusive else 'greater than'} {low:g}, got {value:g}")
            )
        elif high is not None and value >= high:
            why = " (2^46: float64 resolves money to a cent only below it)" if high == MAX_MONEY else ""
            errors.append(FieldError(name, f"must be less than {high:g}{why}, got {value:g}"))
    return errors


def _finite(value: int | float) -> bool:
    # An int (exact, any size) too large for a float cannot be computed with.
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else f"{text[:12]}... ({len(text)} characters)"


def _value_error(strategy: Registered, name: str, value: Any) -> str | None:
    pdef = next(p for p in strategy.params if p.name == name)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return f"must be a number, got {value!r}"
    if pdef.kind is int and not isinstance(value, int):
        return f"must be an integer, got {value!r}"
    if not _finite(value):
        return f"must be finite, got {_shown(value)}"
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


def _param_errors(spec: BacktestSpec, strategy: Registered) -> list[FieldError]:
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
    if isinstance(value, bool) or not isinstance(value, int | float) or not _finite(value):
        return f"must be a finite number, got {_shown(value)}"
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


def _management_errors(spec: BacktestSpec) -> list[FieldError]:
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


def _date_field(spec: BacktestSpec) -> str:
    return "start" if spec.start is not None else "end" if spec.end is not None else "symbol"


def check_spec(spec: BacktestSpec, catalog: Catalog, known: Registry | None = None) -> list[FieldError]:
    """Every domain problem with the request, as field errors; an empty list means runnable.
    `known`: the strategies to check against (default: this process's, `registry.strategies()`)."""
    errors: list[FieldError] = []
    known = strategies() if known is None else known
    strategy = known.get(spec.strategy)
    if strategy is None:
        errors.append(FieldError("strategy", f"unknown strategy {spec.strategy!r}; choose one of {', '.join(known)}"))
    bars: Bars | None = None
    try:
        bars = catalog.load(spec.symbol)
    except InvalidSymbolError as e:
        errors.append(FieldError("symbol", str(e)))
    except UnknownSymbolError:
        errors.append(
            FieldError("symbol", f"unknown symbol {spec.symbol!r}; available: {', '.join(catalog.symbols())}")
        )
    except DataUnavailable:
        raise  # not a fault of the request: the caller may try again
    except DatasetError as e:
        errors.append(FieldError("symbol", str(e)))
    range_errors = [] if bars is None else _range_errors(spec, bars)
    errors += range_errors
    errors += _number_errors(spec)
    errors += _management_errors(spec)
    unit = spec.fractional_unit
    if unit is not None and (isinstance(unit, bool) or not _finite(unit) or not 0 < unit <= 1):
        errors.append(FieldError("fractional_unit", f"must be above 0 and at most 1, got {_shown(unit)}"))
    if spec.start is not None and spec.end is not None and spec.end <= spec.start:
        errors.append(FieldError("end", f"must be after start ({spec.start}), got {spec.end}"))
    if spec.objective not in OBJECTIVES:
        errors.append(
            FieldError("objective", f"unknown metric {spec.objective!r}; choose one of {', '.join(OBJECTIVES)}")
        )
    constraint_ok = True
    if spec.constraint is not None:
        try:
            Constraint(spec.constraint, [*spec.params, *spec.management])
        except ConstraintError as e:
            errors.append(FieldError("constraint", str(e)))
            constraint_ok = False
    if strategy is None:
        return errors
    param_errors = _param_errors(spec, strategy)
    errors += param_errors
    if param_errors:
        return errors
    if any(e.field.split("[")[0] in spec.management for e in errors):
        return errors
    size = grid_size({**spec.params, **spec.management})
    if size > MAX_COMBINATIONS:
        errors.append(FieldError("params", f"the sweep has {size} combinations; at most {MAX_COMBINATIONS} allowed"))
        return errors
    if bars is None or not constraint_ok or range_errors or any(e.field in ("end",) for e in errors):
        return errors
    window = bars.prices(spec.adjusted)[0].between(spec.start, spec.end)  # the prices the run uses
    if not any(
        e.field.split("[")[0] in ("cash", "spread", "slippage_bps", "margin", "size", "fractional_unit") for e in errors
    ):
        errors += _unit_errors(spec, window)
    if not spec.is_sweep:
        scalars = strategy.with_defaults(cast("dict[str, float]", spec.params))  # not a sweep: numbers
        rule_errors = [FieldError(f, m) for f, m in strategy.rules(scalars)]
        errors += rule_errors
        need = min_bars(strategy, scalars)
        if not rule_errors and len(window) < need:
            errors.append(FieldError(_date_field(spec), _too_few(spec, bars, len(window), need)))
    elif not any(
        admissible(strategy, {**strategy.with_defaults(spec.params), **spec.management}, spec.constraint, len(window))
    ):
        errors.append(
            FieldError(
                "params",
                f"no combination of the sweep satisfies the constraint, the "
                f"strategy's rules and has enough bars ({len(window)} in the date range)",
            )
        )
    return errors


def _range_errors(spec: BacktestSpec, bars: Bars) -> list[FieldError]:
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


def with_dataset_name(spec: BacktestSpec, catalog: Catalog) -> BacktestSpec:
    """`spec` with its symbol spelled as the dataset names itself (`aapl` becomes `AAPL`), so the
    `submitted` event stores one name per dataset. Unchanged when no dataset matches: `check_spec`
    then says why. Raises DataUnavailable (the data cannot be read now; worth a retry)."""
    try:
        name = catalog.load(spec.symbol).symbol
    except DataUnavailable:
        raise
    except DatasetError:
        return spec
    return spec if name == spec.symbol else msgspec.structs.replace(spec, symbol=name)


def _unit_errors(spec: BacktestSpec, window: Bars) -> list[FieldError]:
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


def _too_few(spec: BacktestSpec, bars: Bars, have: int, need: int) -> str:
    return (
        f"{have} bars of {bars.symbol} between {spec.start or bars.start} and {spec.end or bars.end}; "
        f"this strategy needs at least {need} (data covers {bars.start} to {bars.end})"
    )
