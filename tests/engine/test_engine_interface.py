"""The strategy interface: Decisions builders, parameter declarations, and what the engine refuses."""

from __future__ import annotations

from typing import Annotated

import msgspec
import numpy as np
import pytest

from consumers.engine.indicators import IndicatorCache
from consumers.engine.interface import (
    FLAT,
    HOLD,
    LONG,
    SHORT,
    Decisions,
    InterfaceError,
    Registered,
    Strategy,
    from_target,
    param_defs,
    rules,
    to_signals,
)
from consumers.engine.strategies import STRATEGIES


def test_rules_take_the_first_true_mask_per_state() -> None:
    a = np.array([True, True, False, False])
    b = np.array([False, True, True, False])
    d = rules(4, flat=[(a, LONG), (b, SHORT)], long=[(b, FLAT)])
    assert d.flat.tolist() == [LONG, LONG, SHORT, HOLD]  # bar 1: both true, the first wins
    assert d.long.tolist() == [HOLD, FLAT, FLAT, HOLD]
    assert d.short.tolist() == [HOLD] * 4


def test_from_target_trades_where_the_target_differs_from_the_position() -> None:
    d = from_target(np.array([np.nan, 1.0, 1.0, 0.0, -1.0, np.nan]))
    assert d.flat.tolist() == [HOLD, LONG, LONG, HOLD, SHORT, HOLD]
    assert d.long.tolist() == [HOLD, HOLD, HOLD, FLAT, SHORT, HOLD]
    assert d.short.tolist() == [HOLD, LONG, LONG, FLAT, HOLD, HOLD]
    with pytest.raises(ValueError, match="bar 1 has 0.5"):
        from_target(np.array([1.0, 0.5]))


def test_to_signals_drops_the_warm_up() -> None:
    d = from_target(np.array([1.0, -1.0, 1.0, -1.0]))
    sig = to_signals(d, 2)
    assert sig.bars == {0: [2, 3], 1: [3], -1: [2]}
    assert sig.acts == {0: [LONG, SHORT], 1: [SHORT], -1: [LONG]}


def test_builtins_declare_their_parameters_in_the_struct() -> None:
    fast, slow = STRATEGIES["sma_cross"].params
    assert (fast.name, fast.kind, fast.minimum, fast.maximum, fast.default) == ("fast", int, 1, 100_000, 10)
    assert slow.doc == "bars in the slow simple moving average of Close"
    k = STRATEGIES["bollinger"].params[1]
    assert (k.kind, k.minimum, k.maximum, k.default) == (float, 0.0, 100.0, 2.0)
    assert STRATEGIES["buy_and_hold"].params == ()


class _Untyped(msgspec.Struct):
    mode: Annotated[str, msgspec.Meta(description="a text")] = "x"


class _Undocumented(msgspec.Struct):
    n: int = 3


class _Exclusive(msgspec.Struct):
    rate: Annotated[float, msgspec.Meta(gt=0, lt=1, description="a rate")]


def test_parameters_are_documented_numbers() -> None:
    with pytest.raises(InterfaceError, match="_Untyped.mode: a parameter is an int or a float"):
        param_defs(_Untyped)
    with pytest.raises(InterfaceError, match="_Undocumented.n: give it a description"):
        param_defs(_Undocumented)
    (rate,) = param_defs(_Exclusive)
    assert rate.as_json() == {
        "name": "rate",
        "type": "number",
        "minimum": 0.0,
        "maximum": 1.0,
        "exclusive_minimum": True,
        "exclusive_maximum": True,
        "default": None,  # required
        "description": "a rate",
    }


class _Clash(msgspec.Struct):
    stop_loss_pct: Annotated[float, msgspec.Meta(description="clashes with position management")] = 1.0


class _Wrong(Strategy[_Exclusive]):
    name = "wrong"
    summary = "returns a list"
    Params = _Exclusive

    def decide(self, data: IndicatorCache, p: _Exclusive, long_only: bool) -> Decisions:
        return [1, 2]  # type: ignore[return-value]


def test_the_engine_refuses_what_breaks_the_interface() -> None:
    clash = type("Clash", (_Wrong,), {"name": "clash", "Params": _Clash})
    with pytest.raises(InterfaceError, match="stop_loss_pct name position management"):
        Registered(clash())
    bad_name = type("BadName", (_Wrong,), {"name": "no spaces"})
    with pytest.raises(InterfaceError, match="letters, digits and underscores"):
        Registered(bad_name())
    data = IndicatorCache(np.arange(1.0, 6.0))
    with pytest.raises(InterfaceError, match="must return Decisions, got list"):
        Registered(_Wrong()).decide(data, {"rate": 0.5}, False)
    short = type("Short", (_Wrong,), {"decide": lambda self, data, p, lo: rules(3)})
    with pytest.raises(InterfaceError, match="one value per bar"):
        Registered(short()).decide(data, {"rate": 0.5}, False)
