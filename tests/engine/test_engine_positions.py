"""Position management: sizing, margin, stop-loss, take-profit, trailing stops and a maximum holding
period, against backtesting.py 0.6.6, by properties, at the door, and in sweeps."""

from __future__ import annotations

import math
import warnings
from typing import Annotated, Any

import bt_oracle
import msgspec
import numpy as np
import pytest
from backtesting import Backtest
from backtesting import Strategy as BtStrategy
from hypothesis import given
from hypothesis import strategies as st
from test_engine_parity import assert_parity, run_engine
from test_engine_properties import SETTINGS, costs, make_bars, market, prices, strategy_params, with_opens

from consumers.engine.datasets import Catalog
from consumers.engine.indicators import IndicatorCache
from consumers.engine.interface import LONG, Decisions, Registered, Strategy
from consumers.engine.job import run_once
from consumers.engine.kernel import Costs
from consumers.engine.market import Market
from consumers.engine.strategies import STRATEGIES
from consumers.engine.validation import check_spec
from orchestrator.domain.spec import BacktestSpec

# Every management field alone, then mixed, with costs and spread, on the bundled data: trades
# and equity equal backtesting.py's exactly, statistics to 1e-9 (assert_parity).
MANAGED: list[tuple[str, str, dict[str, Any], dict[str, Any]]] = [
    ("GOOG", "sma_cross", {"fast": 10, "slow": 30}, {"stop_loss_pct": 5.0}),
    ("GOOG", "sma_cross", {"fast": 10, "slow": 30}, {"take_profit_pct": 10.0}),
    (
        "GOOG",
        "sma_cross",
        {"fast": 10, "slow": 30},
        {"stop_loss_pct": 5.0, "take_profit_pct": 10.0, "commission": 0.002, "spread": 0.001},
    ),
    ("IBM", "sma_cross", {"fast": 10, "slow": 30}, {"size": 0.5, "commission": 0.001}),
    ("IBM", "sma_cross", {"fast": 10, "slow": 30}, {"size": 20.0, "commission_fixed": 2.0}),
    ("IBM", "sma_cross", {"fast": 10, "slow": 30}, {"margin": 0.5, "commission": 0.001, "spread": 0.0005}),
    ("IBM", "sma_cross", {"fast": 10, "slow": 30}, {"margin": 0.2, "size": 0.3, "stop_loss_pct": 7.0}),
    ("MSFT", "momentum", {"lookback": 20, "threshold": 0.02}, {"trailing_stop_pct": 8.0}),
    ("MSFT", "momentum", {"lookback": 20, "threshold": 0.02}, {"trailing_stop_pct": 6.0, "spread": 0.001}),
    ("AAPL", "bollinger", {"window": 20, "k": 2.0}, {"trailing_atr": 3.0}),
    ("AAPL", "bollinger", {"window": 20, "k": 2.0}, {"trailing_atr": 2.0, "stop_loss_pct": 9.0, "commission": 0.001}),
    ("IBM", "rsi", {"period": 14, "lower": 30.0, "upper": 70.0}, {"max_bars": 10}),
    (
        "FB",
        "sma_cross",
        {"fast": 5, "slow": 20},
        {"stop_loss_pct": 4.0, "take_profit_pct": 8.0, "trailing_stop_pct": 6.0, "max_bars": 4, "long_only": True},
    ),
    ("GOOG", "buy_and_hold", {}, {"trailing_stop_pct": 10.0, "size": 0.8}),
    # Fractional units, as backtesting.py's FractionalBacktest: here in thousandths of a share.
    ("GOOG", "sma_cross", {"fast": 10, "slow": 30}, {"fractional_unit": 0.001, "commission": 0.002}),
    ("IBM", "momentum", {"lookback": 20, "threshold": 0.02}, {"fractional_unit": 1e-6, "stop_loss_pct": 8.0}),
]


@pytest.mark.parametrize(
    ("symbol", "strategy", "params", "extra"), MANAGED, ids=lambda v: v if isinstance(v, str) else None
)
def test_matches_backtesting_py(
    catalog: Catalog, symbol: str, strategy: str, params: dict[str, Any], extra: dict[str, Any]
) -> None:
    detail = assert_parity(catalog, BacktestSpec(strategy=strategy, symbol=symbol, params=params, **extra))
    reasons = set(detail["trades"]["exit_reason"])
    exits = {
        "stop_loss_pct": "stop",
        "take_profit_pct": "target",
        "trailing_stop_pct": "trailing",
        "trailing_atr": "trailing",
        "max_bars": "time",
    }
    asked = [exits[f] for f in extra if f in exits]
    if len(asked) == 1:  # alone, each rule closes some trades (with others, one may preempt it)
        assert asked[0] in reasons, (asked, reasons)
    assert reasons <= {"signal", "stop", "target", "trailing", "time", "end"}


def test_positions_over_time_in_the_result(catalog: Catalog) -> None:
    spec = BacktestSpec(strategy="sma_cross", symbol="IBM", params={"fast": 10, "slow": 30}, margin=0.5, size=0.5)
    curve = run_engine(catalog, spec).detail["equity_curve"]
    units, value, exposure, equity = (
        np.array(curve[k], float) for k in ("position", "position_value", "exposure", "equity")
    )
    close = catalog.load("IBM").prices(True)[0].close
    np.testing.assert_array_equal(value, units * close)
    np.testing.assert_array_equal(exposure, value / equity)
    # Half the equity at leverage 2: about the whole equity held, never more than 1x its margin.
    held = np.abs(exposure[units != 0])
    assert 0.8 < np.median(held) < 1.2 and held.max() < 2.0


def test_stops_and_targets_sweep_like_parameters(catalog: Catalog) -> None:
    spec = BacktestSpec(
        strategy="sma_cross",
        symbol="GOOG",
        params={"fast": [10, 20], "slow": 30},
        stop_loss_pct=[3.0, 5.0, 8.0],
        take_profit_pct=10.0,
        constraint="stop_loss_pct < take_profit_pct",
    )
    out = run_engine(catalog, spec)
    table = out.detail["table"]
    assert out.summary["combinations"] == 6 and out.detail["grid_size"] == 6
    assert sorted((r["params"]["fast"], r["params"]["stop_loss_pct"]) for r in table) == [
        (f, s) for f in (10, 20) for s in (3.0, 5.0, 8.0)
    ]
    assert all(r["params"]["take_profit_pct"] == 10.0 for r in table)
    # Each row is the single run of its combination.
    best = out.summary["best_params"]
    single = run_engine(
        catalog,
        BacktestSpec(
            strategy="sma_cross",
            symbol="GOOG",
            params={"fast": best["fast"], "slow": 30},
            stop_loss_pct=best["stop_loss_pct"],
            take_profit_pct=10.0,
        ),
    )
    assert single.summary["metrics"] == out.summary["metrics"]


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        ({"stop_loss_pct": 0.0}, "stop_loss_pct"),
        ({"stop_loss_pct": 100.0}, "stop_loss_pct"),
        ({"stop_loss_pct": [5.0, 150.0]}, "stop_loss_pct[1]"),
        ({"stop_loss_pct": [5.0, 5.0]}, "stop_loss_pct"),
        ({"take_profit_pct": -1.0}, "take_profit_pct"),
        ({"trailing_stop_pct": math.inf}, "trailing_stop_pct"),
        ({"trailing_atr": 0.0}, "trailing_atr"),
        ({"size": 0.0}, "size"),
        ({"size": 1.5}, "size"),
        ({"size": -0.5}, "size"),
        ({"margin": 0.0}, "margin"),
        ({"margin": 1.5}, "margin"),
        ({"max_bars": 0}, "max_bars"),
        ({"max_bars": []}, "max_bars"),
        ({"margin": 1e-9, "cash": 1e9}, "cash"),  # leverage 1e9: more units than the engine holds
    ],
)
def test_bad_management_is_refused_naming_the_field(catalog: Catalog, extra: dict[str, Any], field: str) -> None:
    spec = BacktestSpec(strategy="sma_cross", symbol="GOOG", params={"fast": 10, "slow": 20}, **extra)
    assert [e.field for e in check_spec(spec, catalog)] == [field]


managed_params = st.fixed_dictionaries(
    {},
    optional={
        "stop_loss_pct": st.floats(0.5, 20),
        "take_profit_pct": st.floats(0.5, 40),
        "trailing_stop_pct": st.floats(0.5, 20),
        "max_bars": st.integers(1, 30),
        "size": st.one_of(st.floats(0.05, 0.95), st.integers(1, 50).map(float)),
        "margin": st.floats(0.2, 1.0),
    },
)


@SETTINGS
@given(prices, strategy_params, costs, st.booleans(), st.floats(-0.05, 0.05), managed_params)
def test_equity_is_cash_plus_position_value(
    close: np.ndarray, sp: Any, c: Costs, long_only: bool, gap: float, mp: dict[str, Any]
) -> None:
    name, params = sp
    bars = make_bars(close, with_opens(close, gap))
    sim, _ = run_once(market(bars), STRATEGIES[name], {**params, **mp}, c, long_only, 10_000.0)
    end = len(close) - 1 if sim.bankrupt_bar is None else sim.bankrupt_bar
    for k in range(end):
        realised = sum(t.size * (t.exit_price - t.entry_price) - t.commission for t in sim.trades if t.exit_bar <= k)
        open_trades = [t for t in sim.trades if t.entry_bar <= k < t.exit_bar]
        cash = 10_000.0 + realised - sum(c.fee(t.size, t.entry_price) for t in open_trades)
        value = sum(t.size * (close[k] - t.entry_price) for t in open_trades)
        assert sim.position[k] == sum(t.size for t in open_trades)
        assert abs(sim.equity[k] - (cash + value)) <= 1e-9 * max(1.0, abs(cash) + abs(value))


@SETTINGS
@given(prices, strategy_params, costs, st.booleans(), st.floats(-0.05, 0.05), st.floats(0.5, 15), st.floats(0.5, 30))
def test_a_stop_never_fills_better_than_its_level_unless_the_bar_opens_beyond_it(
    close: np.ndarray, sp: Any, c: Costs, long_only: bool, gap: float, sl_pct: float, tp_pct: float
) -> None:
    name, params = sp
    bars = make_bars(close, with_opens(close, gap))
    sim, _ = run_once(
        market(bars),
        STRATEGIES[name],
        {**params, "stop_loss_pct": sl_pct, "take_profit_pct": tp_pct},
        c,
        long_only,
        1e4,
    )
    for t in sim.trades:
        o, hi, lo = bars.open[t.exit_bar], bars.high[t.exit_bar], bars.low[t.exit_bar]
        if t.exit_reason == "stop":
            if t.size > 0:
                level = t.entry_price * (1 - sl_pct / 100)
                assert t.exit_price <= level * (1 - c.slippage)  # never better than the stop
                assert lo <= level  # the bar reached it
                if t.exit_price < level * (1 - c.slippage):
                    assert o < level  # worse only through a gap: filled at the open
            else:
                level = t.entry_price * (1 + sl_pct / 100)
                assert t.exit_price >= level * (1 + c.slippage)
                assert hi >= level
                if t.exit_price > level * (1 + c.slippage):
                    assert o > level
        elif t.exit_reason == "target":
            level = t.entry_price * (1 + tp_pct / 100) if t.size > 0 else t.entry_price * (1 - tp_pct / 100)
            # A target fills at its level, or better when the bar opens beyond it.
            assert (t.exit_price >= level) if t.size > 0 else (t.exit_price <= level)


def test_a_long_trade_is_scanned_in_bounded_pieces_with_the_same_result() -> None:
    """A trade open for 10,000 bars is scanned SCAN_BARS bars per event: one event at a time
    (as chunks between checkpoints would) gives the uninterrupted result."""
    from consumers.engine import kernel, managed
    from consumers.engine.market import signals_for

    rng = np.random.default_rng(7)
    close = np.round(100 * np.exp(np.cumsum(rng.normal(0.0003, 0.01, 10_000))), 2)
    bars = make_bars(close, with_opens(close, 0.0))
    m = market(bars)
    params = {"trailing_stop_pct": 60.0}
    strategy = STRATEGIES["buy_and_hold"]
    mgr = m.manager(managed.Management(trailing_stop_pct=60.0))
    sig = signals_for(m, strategy, params, False)
    whole = kernel.initial_state(10_000.0, 1)
    managed.advance_managed(whole, sig, mgr, Costs(), 1 << 30)
    pieces = kernel.initial_state(10_000.0, 1)
    steps = 0
    while not pieces.done:
        managed.advance_managed(pieces, sig, mgr, Costs(), 1)
        steps += 1
    assert pieces == whole and steps >= 10_000 // managed.SCAN_BARS
    sim, _ = run_once(m, strategy, params, Costs(), False, 10_000.0)
    assert [t.exit_reason for t in sim.trades] in (["end"], ["trailing"])


class _LeveledParams(msgspec.Struct, frozen=True):
    fast: Annotated[int, msgspec.Meta(ge=1, description="fast SMA bars")] = 10
    slow: Annotated[int, msgspec.Meta(ge=2, description="slow SMA bars")] = 30


class _Leveled(Strategy[_LeveledParams]):
    """sma_cross, each entry with a stop 3% and a target 6% from the deciding bar's Close."""

    name = "leveled"
    summary = "sma_cross with per-entry price levels"
    Params = _LeveledParams

    def warmup(self, p: _LeveledParams) -> int:
        return STRATEGIES["sma_cross"].impl.warmup(p)

    def decide(self, data: IndicatorCache, p: _LeveledParams, long_only: bool) -> Decisions:
        d = STRATEGIES["sma_cross"].impl.decide(data, p, long_only)
        up = d.flat == LONG  # the cross up decides LONG in every state
        c = data.close
        return Decisions(
            d.flat, d.long, d.short, np.where(up, c - c * 0.03, c + c * 0.03), np.where(up, c + c * 0.06, c - c * 0.06)
        )


def test_strategy_price_levels_fill_as_backtesting_py_brackets(catalog: Catalog) -> None:
    """A strategy's own stop and target prices behave as backtesting.py's `buy(sl=, tp=)`."""

    class Oracle(bt_oracle.SmaCross):
        def buy(self, **_: Any) -> Any:
            c = self.data.Close[-1]
            return BtStrategy.buy(self, sl=c - c * 0.03, tp=c + c * 0.06)

        def sell(self, **_: Any) -> Any:
            c = self.data.Close[-1]
            return BtStrategy.sell(self, sl=c + c * 0.03, tp=c - c * 0.06)

    spec = BacktestSpec(strategy="sma_cross", symbol="GOOG", params={"fast": 10, "slow": 30}, commission=0.001)
    bars = bt_oracle.bars_of(catalog, spec)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        stats = Backtest(bt_oracle.frame(bars), Oracle, commission=0.001, finalize_trades=True).run(fast=10, slow=30)
    sim, _ = run_once(Market.of(bars), Registered(_Leveled()), {"fast": 10, "slow": 30}, Costs(0.001), False, 10_000.0)
    theirs = stats["_trades"]
    assert [t.entry_bar for t in sim.trades] == theirs["EntryBar"].tolist()
    assert [t.exit_bar for t in sim.trades] == theirs["ExitBar"].tolist()
    assert [t.exit_price for t in sim.trades] == theirs["ExitPrice"].tolist()
    np.testing.assert_array_equal(sim.equity, stats["_equity_curve"]["Equity"].to_numpy())
    reasons = {t.exit_reason for t in sim.trades}
    assert {"stop", "target"} <= reasons


def test_fractional_units_buy_fractions_of_a_share(catalog: Catalog) -> None:
    spec = BacktestSpec(strategy="buy_and_hold", symbol="GOOG", fractional_unit=0.001)
    detail = run_engine(catalog, spec).detail
    whole = run_engine(catalog, msgspec.structs.replace(spec, fractional_unit=None)).detail
    (size,), (entry,) = detail["trades"]["size"], detail["trades"]["entry_price"]
    assert size != int(size) and abs(size * 1000 - round(size * 1000)) < 1e-6  # thousandths of a share
    assert entry == pytest.approx(whole["trades"]["entry_price"][0], rel=1e-15)  # per share, as without
    # All the cash is invested: less than a thousandth of a share's price is left over.
    assert 10_000.0 - size * entry < entry / 1000 < 10_000.0 - whole["trades"]["size"][0] * entry
    assert detail["equity_curve"]["position"][-2] == size
