"""Trades, equity and statistics equal backtesting.py 0.6.6's on the same data, strategy and costs."""

from __future__ import annotations

import csv
import datetime as dt
import gzip
import math
from typing import Any

import bt_oracle
import msgspec
import numpy as np
import pandas as pd
import pytest

from consumers.engine.datasets import BUNDLED_PATH, Catalog
from consumers.engine.runner import Outcome, start_run
from orchestrator.domain.spec import BacktestSpec

SMA_PARAMS = [(10, 20), (5, 20), (3, 7), (20, 50), (50, 200), (2, 3)]
COSTS: list[dict[str, Any]] = [
    {},
    {"commission": 0.002},
    {"commission": 0.001, "commission_fixed": 5.0, "spread": 0.0015},
    {"spread": 0.002, "long_only": True},
    {"commission": 0.05, "cash": 1_000_000.0},
]


def cases() -> list[tuple[str, str, dict[str, Any], dict[str, Any]]]:
    out = []
    for fast, slow in SMA_PARAMS:
        for k, costs in enumerate(COSTS):
            if (fast, slow) in ((10, 20), (5, 20)) or k in (0, 2):
                out.append(("GOOGBT", "sma_cross", {"fast": fast, "slow": slow}, costs))
    for symbol in ("AAPL", "IBM", "MSFT", "GOOG", "FB"):
        bundled: list[tuple[str, str, dict[str, Any], dict[str, Any]]] = [
            (symbol, "sma_cross", {"fast": 10, "slow": 30}, {"commission": 0.001}),
            (symbol, "momentum", {"lookback": 20, "threshold": 0.02}, {}),
            (symbol, "momentum", {"lookback": 5, "threshold": 0.0}, {"spread": 0.001, "long_only": True}),
            (symbol, "bollinger", {"window": 20, "k": 2.0}, {"commission": 0.001}),
            (symbol, "bollinger", {"window": 10, "k": 1.0}, {"long_only": True}),
            (symbol, "rsi", {"period": 14, "lower": 30.0, "upper": 70.0}, {}),
            (symbol, "rsi", {"period": 5, "lower": 20.0, "upper": 80.0}, {"commission_fixed": 2.0, "long_only": True}),
            (symbol, "buy_and_hold", {}, {"commission": 0.01}),
        ]
        # Adjusted prices are the default; the same cases run on the unadjusted ones too.
        out += bundled + [(s, strategy, p, {**c, "adjusted": False}) for s, strategy, p, c in bundled]
    out += [
        ("GOOGBT", "rsi", {"period": 2, "lower": 25.0, "upper": 75.0}, {"commission": 0.0005}),
        ("GOOGBT", "bollinger", {"window": 5, "k": 0.5}, {}),
        ("GOOGBT", "momentum", {"lookback": 1, "threshold": 0.0}, {}),
        ("GOOGBT", "buy_and_hold", {}, {}),
        # Too little cash for one share: every order is cancelled, no trade at all.
        ("GOOGBT", "sma_cross", {"fast": 10, "slow": 20}, {"cash": 100.0}),
        # Short into a gap to three times the price: equity reaches zero and the run stops there.
        ("ROCKET", "sma_cross", {"fast": 5, "slow": 20}, {}),
        ("ROCKET", "sma_cross", {"fast": 3, "slow": 10}, {"commission": 0.01}),
    ]
    return out


def run_engine(catalog: Catalog, spec: BacktestSpec, max_seconds: float = 1.0) -> Outcome:
    run = start_run(spec, catalog)
    while not run.done:
        run.advance(max_seconds)
    return run.outcome()


def assert_parity(catalog: Catalog, spec: BacktestSpec) -> dict[str, Any]:
    bars = bt_oracle.bars_of(catalog, spec)
    stats = bt_oracle.run(bars, spec)
    detail = run_engine(catalog, spec).detail

    theirs = stats["_trades"]
    ours = pd.DataFrame(detail["trades"])[
        ["size", "entry_bar", "exit_bar", "entry_price", "exit_price", "pnl", "commission", "return_pct"]
    ]
    assert len(ours) == len(theirs)
    for mine, col in [
        ("size", "Size"),
        ("entry_bar", "EntryBar"),
        ("exit_bar", "ExitBar"),
        ("entry_price", "EntryPrice"),
        ("exit_price", "ExitPrice"),
        ("pnl", "PnL"),
        ("commission", "Commission"),
    ]:
        np.testing.assert_array_equal(ours[mine].to_numpy(float), theirs[col].to_numpy(float), err_msg=mine)
    np.testing.assert_array_equal(ours["return_pct"].to_numpy(float), theirs["ReturnPct"].to_numpy(float) * 100)
    np.testing.assert_array_equal(
        np.array(detail["equity_curve"]["equity"], float), stats["_equity_curve"]["Equity"].to_numpy()
    )
    mismatches = bt_oracle.metric_mismatches(detail["metrics"], stats)
    assert set(mismatches) <= bt_oracle.allowed_deviations(detail), mismatches
    return detail


@pytest.mark.parametrize(
    ("symbol", "strategy", "params", "costs"), cases(), ids=lambda v: v if isinstance(v, str) else None
)
def test_matches_backtesting_py(
    catalog: Catalog, symbol: str, strategy: str, params: dict[str, Any], costs: dict[str, Any]
) -> None:
    assert_parity(catalog, BacktestSpec(strategy=strategy, symbol=symbol, params=params, **costs))


def test_date_range_is_a_slice_of_the_data(catalog: Catalog) -> None:
    spec = BacktestSpec(
        strategy="sma_cross",
        symbol="AAPL",
        params={"fast": 10, "slow": 40},
        start=dt.date(2005, 1, 1),
        end=dt.date(2009, 12, 31),
        commission=0.001,
    )
    detail = assert_parity(catalog, spec)
    assert detail["equity_curve"]["time"][0] == "2005-01-03"
    assert detail["equity_curve"]["time"][-1] == "2009-12-31"


def test_bankrupt_run_stops_at_zero(catalog: Catalog) -> None:
    detail = assert_parity(catalog, BacktestSpec(strategy="sma_cross", symbol="ROCKET", params={"fast": 5, "slow": 20}))
    assert detail["bankrupt_at"] is not None
    metrics = detail["metrics"]
    assert metrics["equity_final"] == 0.0
    # Deviations from backtesting.py (which reports 0 for these): everything is lost, so the
    # annualised return and the compound growth are -100%, and every ratio is negative.
    assert metrics["return_pct"] == metrics["return_ann_pct"] == metrics["cagr_pct"] == -100.0
    assert metrics["calmar"] == -1.0 and metrics["max_drawdown_pct"] == -100.0
    assert metrics["sharpe"] < 0 and metrics["sortino"] < 0
    i = detail["equity_curve"]["time"].index(detail["bankrupt_at"])
    assert set(detail["equity_curve"]["equity"][i:]) == {0.0}


def test_no_trade_run_keeps_its_cash(catalog: Catalog) -> None:
    detail = assert_parity(
        catalog, BacktestSpec(strategy="sma_cross", symbol="GOOGBT", params={"fast": 10, "slow": 20}, cash=100.0)
    )
    assert detail["trades"]["size"] == []
    assert set(detail["equity_curve"]["equity"]) == {100.0}


def _csv_prices(symbol: str, first: str, last: str) -> tuple[list[float], list[float]]:
    """Open and Open · (Adj Close / Close) of `symbol` from first to last, read straight from the
    bundled CSV (not through the engine)."""
    raw, adjusted = [], []
    with gzip.open(BUNDLED_PATH, "rt") as f:
        for row in csv.DictReader(f):
            if row["Ticker"] == symbol and first <= row["Date"] <= last:
                raw.append(float(row["Open"]))
                adjusted.append(float(row["Open"]) * (float(row["Adj Close"]) / float(row["Close"])))
    return raw, adjusted


@pytest.mark.parametrize(
    ("symbol", "start", "end", "split"),
    [("AAPL", "2005-01-01", "2005-06-30", "2005-02-28"), ("MSFT", "2003-01-01", "2003-03-31", "2003-02-18")],
)
def test_buy_and_hold_sees_no_crash_at_a_split(catalog: Catalog, symbol: str, start: str, end: str, split: str) -> None:
    """Before adjustment AAPL 2005 H1 returned -43% and MSFT 2003 Q1 -55%: each a 2:1 split."""
    spec = BacktestSpec(
        strategy="buy_and_hold", symbol=symbol, start=dt.date.fromisoformat(start), end=dt.date.fromisoformat(end)
    )
    detail = assert_parity(catalog, spec)
    raw_open, adj_open = _csv_prices(symbol, start, end)
    # Bought at the third bar's Open (backtesting.py first decides on the second bar; an order fills
    # at the next Open), with whole units of all the cash, and closed at the last bar's Open.
    units = math.floor(spec.cash / adj_open[2])
    expected = spec.cash + units * (adj_open[-1] - adj_open[2])
    assert detail["trades"]["entry_price"] == [adj_open[2]]
    assert detail["trades"]["exit_price"] == [adj_open[-1]]
    assert detail["metrics"]["equity_final"] == pytest.approx(expected, rel=1e-12)
    day = detail["equity_curve"]["time"].index(split)
    equity = detail["equity_curve"]["equity"]
    assert equity[day] / equity[day - 1] > 0.9  # no split crash
    assert detail["data"]["adjusted"] is True and detail["data"]["not_adjusted_reason"] is None

    unadjusted = assert_parity(catalog, msgspec.structs.replace(spec, adjusted=False))
    units = math.floor(spec.cash / raw_open[2])
    assert unadjusted["trades"]["entry_price"] == [raw_open[2]]
    assert unadjusted["metrics"]["equity_final"] == pytest.approx(spec.cash + units * (raw_open[-1] - raw_open[2]))
    equity = unadjusted["equity_curve"]["equity"]
    assert equity[day] / equity[day - 1] < 0.6  # the raw prices halve at the split
    assert unadjusted["data"]["adjusted"] is False and unadjusted["data"]["not_adjusted_reason"] == "not_requested"


def test_the_readme_sma_example_opens_no_short_on_the_split(catalog: Catalog) -> None:
    """README "Try it": sma_cross 10/20 on AAPL 2005-2012. On unadjusted prices the 2:1 split of
    2005-02-28 crosses the averages and the run goes short the next morning; adjusted, it does not."""
    spec = BacktestSpec(
        strategy="sma_cross",
        symbol="AAPL",
        params={"fast": 10, "slow": 20},
        start=dt.date(2005, 1, 1),
        end=dt.date(2012, 12, 31),
        commission=0.002,
    )

    def positions(detail: dict[str, Any]) -> list[int]:
        curve = detail["equity_curve"]
        return [p for t, p in zip(curve["time"], curve["position"], strict=True) if "2005-02-25" <= t <= "2005-03-04"]

    adjusted = positions(assert_parity(catalog, spec))
    assert len(set(adjusted)) == 1 and adjusted[0] >= 0
    unadjusted = positions(assert_parity(catalog, msgspec.structs.replace(spec, adjusted=False)))
    assert unadjusted[0] >= 0 and unadjusted[-1] < 0
