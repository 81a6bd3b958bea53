"""Domain checks of a request, shared by the API (as a 422) and the worker: a pure function.

`check_spec` decides which checks apply (a request with a bad symbol is not also checked against
its data); the checks themselves are `field_checks.py`.
"""

from __future__ import annotations

from typing import NamedTuple, cast

import msgspec

from consumers.engine.bars import Bars
from consumers.engine.constraints import Constraint, ConstraintError
from consumers.engine.datasets import Catalog
from consumers.engine.errors import DatasetError, DataUnavailable, InvalidSymbolError, UnknownSymbolError
from consumers.engine.field_checks import (
    FieldError,
    finite,
    job_errors,
    management_errors,
    number_errors,
    param_errors,
    range_errors,
    shown,
    too_few,
    unit_errors,
)
from consumers.engine.interface import Registered
from consumers.engine.metrics import OBJECTIVES
from consumers.engine.registry import Registry, strategies
from consumers.engine.strategies import min_bars
from consumers.engine.sweep import MAX_COMBINATIONS, admissible, grid_size
from orchestrator.domain.spec import BacktestSpec

__all__ = ["FieldError", "check_spec", "with_dataset_name"]

# Fields whose errors make the cash-against-units check meaningless.
_UNIT_INPUTS = ("cash", "spread", "slippage_bps", "margin", "size", "fractional_unit")


def _date_field(spec: BacktestSpec) -> str:
    return "start" if spec.start is not None else "end" if spec.end is not None else "symbol"


class _Target(NamedTuple):
    """One symbol's data to check the request against: `field` is None for the request's
    `symbol`, else where a universe names it (`symbols[i]`, or `symbols` for "*")."""

    field: str | None
    bars: Bars


def check_spec(
    spec: BacktestSpec, catalog: Catalog, known: Registry | None = None, *, system: bool = False
) -> list[FieldError]:
    """Every domain problem with the request, as field errors; an empty list means runnable.
    `known`: the strategies to check against (default: this process's, `registry.strategies()`).
    `system`: the request is a job's chunk task (its `chunk` set by the system), not a user's.

    `field` is a dotted path into the request (`params.fast`, `params.fast[2]`); a universe's
    per-symbol problems name the symbol's place (`symbols[1]`, or `symbols` for "*"). Raises
    DataUnavailable when the data cannot be read now (not a fault of the request: retry)."""
    errors: list[FieldError] = []
    known = strategies() if known is None else known
    strategy = known.get(spec.strategy)
    if strategy is None:
        errors.append(FieldError("strategy", f"unknown strategy {spec.strategy!r}; choose one of {', '.join(known)}"))
    shape = job_errors(spec, system)
    # A request naming no symbol, or both kinds, is not checked against any data.
    targets = [] if any(e.field in ("symbol", "symbols") for e in shape) else _targets(spec, catalog, errors)
    dated = [(t, _under(t, range_errors(spec, t.bars))) for t in targets]
    dates = [e for _, found in dated for e in found]
    errors += dates
    errors += number_errors(spec)
    errors += management_errors(spec)
    errors += _request_errors(spec)
    errors += shape
    constraint = _constraint_errors(spec)
    errors += constraint
    if strategy is None:
        return errors
    params = param_errors(spec, strategy)
    errors += params
    if params or any(e.field.split("[")[0] in spec.management for e in errors):
        return errors
    size = grid_size({**spec.params, **spec.management})
    if size > MAX_COMBINATIONS:
        errors.append(FieldError("params", f"the sweep has {size} combinations; at most {MAX_COMBINATIONS} allowed"))
        return errors
    runnable = [t for t, found in dated if not found]
    if not runnable or constraint or (dates and spec.symbols is None) or any(e.field in ("end",) for e in errors):
        return errors
    return errors + _run_errors(spec, strategy, runnable, errors)


def _under(target: _Target, errors: list[FieldError]) -> list[FieldError]:
    """`errors` found against one symbol's data, named by where the request names the symbol."""
    if target.field is None:
        return errors
    return [FieldError(target.field, f"{e.field} ({target.bars.symbol}): {e.message}") for e in errors]


def _targets(spec: BacktestSpec, catalog: Catalog, errors: list[FieldError]) -> list[_Target]:
    """The data of each symbol the request names (its `symbol`, or each of its universe), with
    the reasons appended to `errors` for those that cannot be read or repeat another. Raises
    DataUnavailable."""
    if spec.symbols is None:
        bars = _load(spec.symbol, "symbol", catalog, errors)
        return [] if bars is None else [_Target(None, bars)]
    if spec.symbols == "*":
        return [_Target("symbols", catalog.load(s)) for s in catalog.symbols()]
    targets: list[_Target] = []
    seen: dict[str, int] = {}
    for i, symbol in enumerate(spec.symbols):
        bars = _load(symbol, f"symbols[{i}]", catalog, errors)
        if bars is None:
            continue
        if bars.symbol in seen:
            errors.append(FieldError(f"symbols[{i}]", f"repeats symbols[{seen[bars.symbol]}] ({bars.symbol})"))
            continue
        seen[bars.symbol] = i
        targets.append(_Target(f"symbols[{i}]", bars))
    return targets


def _load(symbol: str, field: str, catalog: Catalog, errors: list[FieldError]) -> Bars | None:
    """The bars of `symbol`, or None with the reason appended to `errors` (on `field`). Raises
    DataUnavailable."""
    try:
        return catalog.load(symbol)
    except InvalidSymbolError as e:
        errors.append(FieldError(field, str(e)))
    except UnknownSymbolError:
        errors.append(FieldError(field, f"unknown symbol {symbol!r}; available: {', '.join(catalog.symbols())}"))
    except DataUnavailable:
        raise  # not a fault of the request: the caller may try again
    except DatasetError as e:
        errors.append(FieldError(field, str(e)))
    return None


def _request_errors(spec: BacktestSpec) -> list[FieldError]:
    """The fractional unit, the order of the dates and the objective."""
    errors = []
    unit = spec.fractional_unit
    if unit is not None and (isinstance(unit, bool) or not finite(unit) or not 0 < unit <= 1):
        errors.append(FieldError("fractional_unit", f"must be above 0 and at most 1, got {shown(unit)}"))
    if spec.start is not None and spec.end is not None and spec.end <= spec.start:
        errors.append(FieldError("end", f"must be after start ({spec.start}), got {spec.end}"))
    if spec.metric not in OBJECTIVES:
        errors.append(FieldError("objective", f"unknown metric {spec.metric!r}; choose one of {', '.join(OBJECTIVES)}"))
    return errors


def _constraint_errors(spec: BacktestSpec) -> list[FieldError]:
    """The sweep's constraint expression, parsed over the request's parameter names."""
    if spec.constraint is None:
        return []
    try:
        Constraint(spec.constraint, [*spec.params, *spec.management])
    except ConstraintError as e:
        return [FieldError("constraint", str(e))]
    return []


def _run_errors(
    spec: BacktestSpec, strategy: Registered, targets: list[_Target], errors: list[FieldError]
) -> list[FieldError]:
    """Against the prices the run would use on each symbol (`errors`: those found so far): the
    cash against the units the engine holds, the strategy's rules, and enough bars for a single
    run or for some combination of a sweep."""
    rules: list[FieldError] = []
    if not spec.is_sweep:
        scalars = strategy.with_defaults(cast("dict[str, float]", spec.params))  # not a sweep: numbers
        rules = [FieldError(f, m) for f, m in strategy.rules(scalars)]
    found = [] if spec.symbols is None else list(rules)  # a universe's rules: once, not per symbol
    units = not any(e.field.split("[")[0] in _UNIT_INPUTS for e in errors)
    for target in targets:
        window = target.bars.prices(spec.adjusted)[0].between(spec.start, spec.end)  # the prices the run uses
        own = unit_errors(spec, window) if units else []
        if target.field is None:
            own += rules
        if not rules:
            own += _bar_errors(spec, strategy, target.bars, window)
        found += _under(target, own)
    return found


def _bar_errors(spec: BacktestSpec, strategy: Registered, bars: Bars, window: Bars) -> list[FieldError]:
    """Enough bars in `window` (the date range of `bars`) for a single run, or for some
    combination of a sweep."""
    if not spec.is_sweep:
        need = min_bars(strategy, strategy.with_defaults(cast("dict[str, float]", spec.params)))
        return [FieldError(_date_field(spec), too_few(spec, bars, len(window), need))] if len(window) < need else []
    if any(
        admissible(strategy, {**strategy.with_defaults(spec.params), **spec.management}, spec.constraint, len(window))
    ):
        return []
    return [
        FieldError(
            "params",
            f"no combination of the sweep satisfies the constraint, the "
            f"strategy's rules and has enough bars ({len(window)} in the date range)",
        )
    ]


def with_dataset_name(spec: BacktestSpec, catalog: Catalog) -> BacktestSpec:
    """`spec` with its symbol, and each symbol of its universe, spelled as the dataset names
    itself (`aapl` becomes `AAPL`), so the `submitted` event stores one name per dataset. A name
    no dataset matches is left as it is: `check_spec` then says why. Raises DataUnavailable (the
    data cannot be read now; worth a retry)."""
    symbol = _dataset_name(spec.symbol, catalog) if spec.symbol else spec.symbol
    symbols = spec.symbols
    if isinstance(symbols, list):
        symbols = [_dataset_name(s, catalog) for s in symbols]
    if symbol == spec.symbol and symbols == spec.symbols:
        return spec
    return msgspec.structs.replace(spec, symbol=symbol, symbols=symbols)


def _dataset_name(symbol: str, catalog: Catalog) -> str:
    """The dataset's own name for `symbol`, or `symbol` when no dataset matches it."""
    try:
        return catalog.load(symbol).symbol
    except DataUnavailable:
        raise
    except DatasetError:
        return symbol
