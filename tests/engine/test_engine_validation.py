"""check_spec: every domain problem of a request as (field, message)."""

from __future__ import annotations

import datetime as dt
import math
from pathlib import Path
from typing import Any

import msgspec
import pytest

from consumers.engine.datasets import Catalog
from consumers.engine.limits import MAX_UNITS
from consumers.engine.runner import start_run
from consumers.engine.validation import FieldError, check_spec, with_dataset_name
from orchestrator.domain.spec import BacktestSpec


def fields(catalog: Catalog, **kw: Any) -> list[str]:
    base: dict[str, Any] = {"strategy": "sma_cross", "symbol": "GOOG", "params": {"fast": 10, "slow": 20}}
    return [e.field for e in check_spec(BacktestSpec(**{**base, **kw}), catalog)]


def test_valid_requests_have_no_errors(catalog: Catalog) -> None:
    assert fields(catalog) == []
    assert fields(catalog, strategy="buy_and_hold", params={}) == []
    assert fields(catalog, strategy="rsi", params={"period": 14, "lower": 30, "upper": 70.5}) == []
    assert (
        fields(catalog, params={"fast": [5, 10], "slow": [20, 40]}, constraint="fast < slow", objective="sharpe") == []
    )


@pytest.mark.parametrize(
    ("kw", "expected"),
    [
        ({"strategy": "martingale"}, ["strategy"]),
        ({"symbol": "NOPE"}, ["symbol"]),
        ({"params": {"fast": 30}}, ["params.fast"]),  # slow takes its default, 20: fast must be below it
        ({"params": {"fast": 10, "slow": 20, "extra": 1}}, ["params.extra"]),
        ({"params": {"fast": 10.5, "slow": 20}}, ["params.fast"]),
        ({"params": {"fast": 0, "slow": 20}}, ["params.fast"]),
        ({"params": {"fast": 20, "slow": 20}}, ["params.fast"]),
        ({"params": {"fast": 30, "slow": 20}}, ["params.fast"]),
        ({"start": dt.date(2010, 1, 1), "end": dt.date(2009, 1, 1)}, ["end"]),
        ({"start": dt.date(2013, 2, 1)}, ["start"]),
        ({"end": dt.date(2004, 9, 1)}, ["end"]),
        ({"cash": -1.0}, ["cash"]),
        ({"cash": 0.0}, ["cash"]),
        ({"commission": -0.01}, ["commission"]),
        ({"commission": 0.5}, ["commission"]),
        ({"commission_fixed": -1.0}, ["commission_fixed"]),
        ({"spread": -0.001}, ["spread"]),
        ({"slippage_bps": -2.0}, ["slippage_bps"]),
        ({"objective": "happiness"}, ["objective"]),
        ({"params": {"fast": [5, 10], "slow": 20}, "constraint": "__import__('os')"}, ["constraint"]),
        ({"params": {"fast": [5, 10], "slow": 20}, "constraint": "fast <"}, ["constraint"]),
        ({"params": {"fast": [5, 10], "slow": 20}, "constraint": "fast < sloww"}, ["constraint"]),
        ({"params": {"fast": [5, 10.5], "slow": 20}}, ["params.fast[1]"]),
        ({"params": {"fast": [], "slow": 20}}, ["params.fast"]),
        ({"params": {"fast": [5, 5], "slow": 20}}, ["params.fast"]),
        ({"params": {"fast": [30, 40], "slow": [10, 20]}}, ["params"]),
        ({"params": {"fast": [5, 10], "slow": [20, 30]}, "constraint": "fast > slow"}, ["params"]),
        ({"params": {"fast": list(range(1, 102)), "slow": list(range(2, 102))}}, ["params"]),
        ({"strategy": "rsi", "params": {"period": 14, "lower": 70, "upper": 30}}, ["params.lower"]),
        ({"strategy": "rsi", "params": {"period": 14, "lower": True, "upper": 70}}, ["params.lower"]),
    ],
)
def test_errors_point_at_the_field(catalog: Catalog, kw: dict[str, Any], expected: list[str]) -> None:
    assert fields(catalog, **kw) == expected


def test_messages_say_what_to_do(catalog: Catalog) -> None:
    [err] = check_spec(
        BacktestSpec(strategy="sma_cross", symbol="GOOG", params={"fast": 10, "slow": 20}, start=dt.date(2013, 2, 1)),
        catalog,
    )
    assert err == FieldError("start", err.message)
    assert "needs at least 22" in err.message and "2004-08-19" in err.message
    [err] = check_spec(BacktestSpec(strategy="nope", symbol="GOOG"), catalog)
    assert "sma_cross" in err.message


@pytest.mark.parametrize(
    ("kw", "field", "where"),
    [
        ({"start": dt.date(1990, 1, 1)}, "start", "1990-01-01 is before the first bar"),
        ({"start": dt.date(2013, 3, 2)}, "start", "2013-03-02 is after the last bar"),
        ({"end": dt.date(2020, 1, 1)}, "end", "2020-01-01 is after the last bar"),
        ({"end": dt.date(2004, 8, 18)}, "end", "2004-08-18 is before the first bar"),
        ({"start": dt.date(2004, 8, 18), "end": dt.date(2013, 3, 2)}, "start", "2004-08-18 is before the first bar"),
    ],
)
def test_a_range_beyond_the_data_is_refused_not_clipped(
    catalog: Catalog, kw: dict[str, Any], field: str, where: str
) -> None:
    errors = check_spec(
        BacktestSpec(strategy="sma_cross", symbol="GOOG", params={"fast": 10, "slow": 20}, **kw), catalog
    )
    assert errors[0] == FieldError(field, f"{where}; the data of GOOG covers 2004-08-19 to 2013-03-01")
    assert len(errors) == len(kw)  # both ends named when both are outside


def test_a_range_on_the_datas_own_ends_or_between_bars_is_accepted(catalog: Catalog) -> None:
    assert fields(catalog, start=dt.date(2004, 8, 19), end=dt.date(2013, 3, 1)) == []
    assert fields(catalog, start=dt.date(2005, 1, 1), end=dt.date(2012, 12, 30)) == []  # weekend, holiday


@pytest.mark.parametrize("symbol", ["  IBM  ", "ıbm", "goog\t"])
def test_a_symbol_outside_the_rule_is_a_symbol_error(catalog: Catalog, symbol: str) -> None:
    [err] = check_spec(BacktestSpec(strategy="sma_cross", symbol=symbol, params={"fast": 10, "slow": 20}), catalog)
    assert err.field == "symbol" and "is not a symbol: use 1 to 32 ASCII" in err.message


def test_with_dataset_name_spells_the_symbol_as_the_dataset_does(catalog: Catalog) -> None:
    spec = BacktestSpec(strategy="sma_cross", symbol="goog", params={"fast": 10, "slow": 20})
    assert with_dataset_name(spec, catalog).symbol == "GOOG"
    assert with_dataset_name(msgspec.structs.replace(spec, symbol="googbt"), catalog).symbol == "GOOGBT"
    unknown = msgspec.structs.replace(spec, symbol="  goog ")
    assert with_dataset_name(unknown, catalog) is unknown  # check_spec says why


@pytest.mark.parametrize(
    ("kw", "expected"),
    [
        # Money: float64 resolves a cent only below 2^46.
        ({"cash": 1e25}, ["cash"]),
        ({"cash": 1e308}, ["cash"]),
        ({"cash": 2.0**46}, ["cash"]),
        ({"cash": 2.0**46 - 1}, []),  # GOOG's lowest Open (~100) buys far fewer than 2^53 units
        ({"commission_fixed": 2.0**46}, ["commission_fixed"]),
        ({"commission_fixed": math.inf}, ["commission_fixed"]),
        ({"timeout_s": math.inf}, ["timeout_s"]),
        ({"timeout_s": math.nan}, ["timeout_s"]),
        ({"timeout_s": 0.0}, ["timeout_s"]),
        ({"timeout_s": 1e300}, []),  # the worker's own limit applies
        ({"params": {"fast": math.inf, "slow": 20}}, ["params.fast"]),
    ],
)
def test_numbers_beyond_what_the_engine_represents(catalog: Catalog, kw: dict[str, Any], expected: list[str]) -> None:
    assert fields(catalog, **kw) == expected


def _penny(tmp_path: Path, price: float) -> Catalog:
    lines = ["Date,Open,High,Low,Close,Volume"]
    for k in range(30):
        day = dt.date(2020, 1, 1) + dt.timedelta(days=k)
        p = price * (1 + 0.01 * (k % 3))
        lines.append(f"{day},{p!r},{p * 1.02!r},{p!r},{p * 1.01!r},1")
    (tmp_path / "PENNY.csv").write_text("\n".join(lines) + "\n")
    return Catalog.from_env_dir(str(tmp_path))


def test_cash_may_buy_at_most_2_to_the_53_units(tmp_path: Path) -> None:
    """At the lowest price an entry can fill at: the Open, or for a short below it by the
    spread and slippage. At the limit the run completes; one step above it is refused."""
    price = 1e-9
    catalog = _penny(tmp_path, price)
    limit = MAX_UNITS * price
    spec = BacktestSpec(strategy="buy_and_hold", symbol="PENNY", cash=limit)
    assert check_spec(spec, catalog) == []
    run = start_run(spec, catalog)
    while not run.done:
        run.advance(1.0)
    assert 0 < max(run.outcome().detail["trades"]["size"]) <= MAX_UNITS
    [error] = check_spec(msgspec.structs.replace(spec, cash=limit * 1.001), catalog)
    assert error.field == "cash" and "2^53" in error.message
    # A short fills at Open * (1 - spread): the same cash buys twice the units at a 50% spread.
    short_spread = BacktestSpec(strategy="sma_cross", symbol="PENNY", params={"fast": 2, "slow": 3}, spread=0.5)
    assert [e.field for e in check_spec(msgspec.structs.replace(short_spread, cash=limit * 0.6), catalog)] == ["cash"]
    assert check_spec(msgspec.structs.replace(short_spread, cash=limit * 0.6, long_only=True), catalog) == []
