"""Domain checks of a request, shared by the API (as a 422) and the worker: a pure function.

`check_spec` decides which checks apply (a request with a bad symbol is not also checked against
its data); the checks themselves are `field_checks.py`.
"""

from __future__ import annotations

from typing import cast

import msgspec

from consumers.engine.bars import Bars
from consumers.engine.constraints import Constraint, ConstraintError
from consumers.engine.datasets import Catalog
from consumers.engine.errors import DatasetError, DataUnavailable, InvalidSymbolError, UnknownSymbolError
from consumers.engine.field_checks import (
    FieldError,
    finite,
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


def check_spec(spec: BacktestSpec, catalog: Catalog, known: Registry | None = None) -> list[FieldError]:
    """Every domain problem with the request, as field errors; an empty list means runnable.
    `known`: the strategies to check against (default: this process's, `registry.strategies()`).

    `field` is a dotted path into the request (`params.fast`, `params.fast[2]`). Raises
    DataUnavailable when the data cannot be read now (not a fault of the request: retry)."""
    errors: list[FieldError] = []
    known = strategies() if known is None else known
    strategy = known.get(spec.strategy)
    if strategy is None:
        errors.append(FieldError("strategy", f"unknown strategy {spec.strategy!r}; choose one of {', '.join(known)}"))
    bars = _load(spec, catalog, errors)
    dates = [] if bars is None else range_errors(spec, bars)
    errors += dates
    errors += number_errors(spec)
    errors += management_errors(spec)
    errors += _request_errors(spec)
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
    if bars is None or constraint or dates or any(e.field in ("end",) for e in errors):
        return errors
    return errors + _run_errors(spec, strategy, bars, errors)


def _load(spec: BacktestSpec, catalog: Catalog, errors: list[FieldError]) -> Bars | None:
    """The bars of the request's symbol, or None with the reason appended to `errors`. Raises
    DataUnavailable."""
    try:
        return catalog.load(spec.symbol)
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
    return None


def _request_errors(spec: BacktestSpec) -> list[FieldError]:
    """The fractional unit, the order of the dates and the objective."""
    errors = []
    unit = spec.fractional_unit
    if unit is not None and (isinstance(unit, bool) or not finite(unit) or not 0 < unit <= 1):
        errors.append(FieldError("fractional_unit", f"must be above 0 and at most 1, got {shown(unit)}"))
    if spec.start is not None and spec.end is not None and spec.end <= spec.start:
        errors.append(FieldError("end", f"must be after start ({spec.start}), got {spec.end}"))
    if spec.objective not in OBJECTIVES:
        errors.append(
            FieldError("objective", f"unknown metric {spec.objective!r}; choose one of {', '.join(OBJECTIVES)}")
        )
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


def _run_errors(spec: BacktestSpec, strategy: Registered, bars: Bars, errors: list[FieldError]) -> list[FieldError]:
    """Against the prices the run would use (`errors`: those found so far): the cash against
    the units the engine holds, the strategy's rules, and enough bars for a single run or for
    some combination of a sweep."""
    found: list[FieldError] = []
    window = bars.prices(spec.adjusted)[0].between(spec.start, spec.end)  # the prices the run uses
    if not any(e.field.split("[")[0] in _UNIT_INPUTS for e in errors):
        found += unit_errors(spec, window)
    if not spec.is_sweep:
        scalars = strategy.with_defaults(cast("dict[str, float]", spec.params))  # not a sweep: numbers
        rule_errors = [FieldError(f, m) for f, m in strategy.rules(scalars)]
        found += rule_errors
        need = min_bars(strategy, scalars)
        if not rule_errors and len(window) < need:
            found.append(FieldError(_date_field(spec), too_few(spec, bars, len(window), need)))
    elif not any(
        admissible(strategy, {**strategy.with_defaults(spec.params), **spec.management}, spec.constraint, len(window))
    ):
        found.append(
            FieldError(
                "params",
                f"no combination of the sweep satisfies the constraint, the "
                f"strategy's rules and has enough bars ({len(window)} in the date range)",
            )
        )
    return found


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
