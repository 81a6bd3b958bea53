"""The sweep's compiled fast path gives the interpreted path's table, every number, row for row."""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
import numpy as np
import pytest

from consumers.engine import batch_kernel, batch_stats, fast_sweep, pairwise
from consumers.engine.datasets import Catalog
from consumers.engine.indicators import IndicatorCache
from consumers.engine.interface import Decisions, Registered, Strategy, from_target
from consumers.engine.job import run_once
from consumers.engine.runner import BacktestRun, start_run
from consumers.engine.sweep import SweepRow, make_row, ranked
from orchestrator.domain.spec import BacktestSpec


def interpreted_rows(run: BacktestRun, strategy: Registered | None = None) -> list[SweepRow]:
    """Every admissible combination through today's interpreted path: a full backtest each."""
    spec = run.spec
    s = strategy or run.strategy
    return [
        make_row(c, run_once(run.market, s, c, run.costs, spec.long_only, spec.cash)[1], spec.objective)
        for c in run.combinations
    ]


def finish(run: BacktestRun) -> dict[str, Any]:
    while not run.done:
        run.advance(0.0)
    return run.outcome().detail


def encoded(rows: list[SweepRow]) -> list[bytes]:
    return [msgspec.json.encode(r) for r in rows]


SPECS = [
    BacktestSpec(strategy="sma_cross", symbol="GOOG", params={"fast": list(range(2, 30, 2)), "slow": [30, 45, 60]}),
    BacktestSpec(
        strategy="sma_cross",
        symbol="AAPL",
        params={"fast": [3, 8, 13], "slow": list(range(20, 60, 7))},
        commission=0.002,
        commission_fixed=3.0,
        spread=0.001,
        slippage_bps=5,
        objective="sharpe",
    ),
    BacktestSpec(
        strategy="sma_cross",
        symbol="GOOG",
        params={"fast": [2, 5, 9], "slow": [10, 20, 40]},
        long_only=True,
        objective="sortino",
    ),
    BacktestSpec(
        strategy="rsi", symbol="MSFT", params={"period": [5, 14], "lower": [20, 30], "upper": [70, 80]}, objective="sqn"
    ),
    BacktestSpec(
        strategy="momentum",
        symbol="GOOG",
        params={"lookback": [1, 5, 20], "threshold": [0.0, 0.02]},
        objective="volatility_ann_pct",
    ),
    BacktestSpec(
        strategy="bollinger", symbol="GOOG", params={"window": [10, 20, 40], "k": [1.0, 2.0]}, objective="profit_factor"
    ),
    # Shorts wiped out by a gap: bankrupt combinations take the interpreted path mid-sweep.
    BacktestSpec(
        strategy="sma_cross",
        symbol="ROCKET",
        params={"fast": [2, 5, 20], "slow": [60, 8, 90, 30]},
        constraint="fast < slow",
    ),
    BacktestSpec(
        strategy="sma_cross",
        symbol="GOOG",
        params={"fast": [5, 10], "slow": [20, 30]},
        fractional_unit=0.01,
        objective="return_ann_pct",
    ),
]


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: f"{s.strategy}-{s.symbol}-{s.objective}")
def test_fast_sweep_table_equals_the_interpreted_path(catalog: Catalog, spec: BacktestSpec) -> None:
    run = start_run(spec, catalog)
    assert run._fast is not None  # the fast path is what this test measures
    expected = ranked(interpreted_rows(run))
    detail = finish(run)
    got = [msgspec.json.encode(row) for row in detail["table"]]
    want = [msgspec.json.encode({"params": r.params, "objective": r.objective, **r.metrics}) for r in expected]
    assert got == want
    assert detail["best"]["params"] == expected[0].params


def test_bankrupt_combinations_fall_back_and_the_rest_stay_fast(catalog: Catalog) -> None:
    spec = SPECS[6]
    run = start_run(spec, catalog)
    rows = interpreted_rows(run)
    bankrupt = [i for i, r in enumerate(rows) if r.metrics["equity_final"] == 0]
    assert bankrupt and len(bankrupt) < len(rows)  # both kinds are in this grid
    fast = fast_sweep.FastSweep(
        run.market.indicators, run.market.bars.dates, run.strategy, run.costs, False, spec.cash, spec.objective
    )
    first = bankrupt[0]
    assert encoded(fast.step(run.combinations, 0) or []) == encoded(rows[:first])
    assert fast.step(run.combinations, first) is None  # the interpreted path decides it


class _BreakoutParams(msgspec.Struct, frozen=True):
    window: Annotated[int, msgspec.Meta(ge=2, description="bars of the channel")] = 20
    exit_window: Annotated[int, msgspec.Meta(ge=2, description="bars of the exit channel")] = 10


class _Breakout(Strategy[_BreakoutParams]):
    """A plugin-like strategy written on the interface only: Donchian breakouts, by target."""

    name = "test_breakout"
    summary = "channel breakout"
    Params = _BreakoutParams

    def warmup(self, p: _BreakoutParams) -> int:
        return max(p.window, p.exit_window)

    def decide(self, data: IndicatorCache, p: _BreakoutParams, long_only: bool) -> Decisions:
        def channel(n: int) -> tuple[Any, Any]:
            c = data.close
            hi = np.full(c.shape[0], np.nan)
            lo = np.full(c.shape[0], np.nan)
            for i in range(n, c.shape[0]):
                hi[i], lo[i] = c[i - n : i].max(), c[i - n : i].min()
            return hi, lo

        hi, _ = data.memo(("test_channel", p.window), lambda: channel(p.window))
        _, exit_lo = data.memo(("test_channel", p.exit_window), lambda: channel(p.exit_window))
        target = np.full(data.close.shape[0], np.nan)
        target[data.close > hi] = 1.0
        target[data.close < exit_lo] = 0.0 if long_only else -1.0
        return from_target(target)


class _Levels(_Breakout):
    """The same, with a stop price per entry: position management's path, not the kernel's."""

    name = "test_levels"

    def decide(self, data: IndicatorCache, p: _BreakoutParams, long_only: bool) -> Decisions:
        d = super().decide(data, p, long_only)
        return Decisions(d.flat, d.long, d.short, stop_price=data.close * 0.9)


def _drive(run: BacktestRun, strategy: Registered) -> tuple[list[SweepRow], int]:
    """Rows as the runner makes them: fast batches, the interpreted path where a step says None."""
    spec = run.spec
    fast = fast_sweep.FastSweep(
        run.market.indicators, run.market.bars.dates, strategy, run.costs, spec.long_only, spec.cash, spec.objective
    )
    rows: list[SweepRow] = []
    slow = 0
    while len(rows) < len(run.combinations):
        batch = fast.step(run.combinations, len(rows))
        if batch is None:
            c = run.combinations[len(rows)]
            metrics = run_once(run.market, strategy, c, run.costs, spec.long_only, spec.cash)[1]
            rows.append(make_row(c, metrics, spec.objective))
            slow += 1
        else:
            rows.extend(batch)
    return rows, slow


@pytest.mark.parametrize(("impl", "fast"), [(_Breakout(), True), (_Levels(), False)], ids=["targets", "levels"])
def test_plugin_strategies_take_the_fast_path_unless_they_set_levels(
    catalog: Catalog, impl: Strategy[Any], fast: bool
) -> None:
    strategy = Registered(impl, origin="test")
    # The runner's setup for a sweep, then the plugin's combinations in its place.
    spec = BacktestSpec(strategy="sma_cross", symbol="GOOG", params={"fast": [5], "slow": [20, 30]}, commission=0.001)
    run = start_run(spec, catalog)
    run.combinations = [{"window": w, "exit_window": e} for w in (10, 20, 55) for e in (5, 10, 20)]
    rows, slow = _drive(run, strategy)
    assert encoded(rows) == encoded(interpreted_rows(run, strategy))
    assert slow == (0 if fast else len(rows))
    assert {r.metrics["num_trades"] for r in rows} != {0}


@pytest.mark.parametrize(
    "spec",
    [
        BacktestSpec(strategy="sma_cross", symbol="GOOG", params={"fast": [5, 10], "slow": [20]}, objective="calmar"),
        BacktestSpec(
            strategy="sma_cross", symbol="GOOG", params={"fast": [5, 10], "slow": [20]}, stop_loss_pct=[2.0, 5.0]
        ),
    ],
    ids=["objective", "management"],
)
def test_sweeps_the_kernel_does_not_cover_take_the_interpreted_path(catalog: Catalog, spec: BacktestSpec) -> None:
    run = start_run(spec, catalog)
    assert run._fast is None
    assert fast_sweep.eligible(spec.objective, spec.management) is False
    detail = finish(run)
    assert len(detail["table"]) == len(run.combinations)


def test_pairwise_sum_is_numpys() -> None:
    rng = np.random.default_rng(3)
    for n in [*range(0, 300), 1000, 2147, 2148, 4099, 20_000]:
        x = rng.normal(0, 1, n) * 10 ** rng.uniform(-6, 6, n)
        assert pairwise.pairwise_sum(x, 0, n) + 0.0 == x.sum(), n
    assert np.signbit(0.0 + pairwise.pairwise_sum(-np.zeros(3), 0, 3)) == np.signbit(np.sum(-np.zeros(3)))


def test_signs_are_the_comparisons() -> None:
    # _signs computes the sign codes arithmetically; the definition is the three comparisons.
    from consumers.engine.indicators import ABOVE, BELOW, EQUAL, UNDEFINED, _signs

    rng = np.random.default_rng(5)
    values = np.array([1.0, 2.0, np.nan, np.inf, -np.inf, 0.0, -0.0, 3.5])
    for n in (0, 1, 7, 500):
        lhs, rhs = rng.choice(values, n), rng.choice(values, n)
        want = np.full(n, UNDEFINED, dtype=np.int8)
        with np.errstate(invalid="ignore"):
            want[lhs < rhs], want[lhs > rhs], want[lhs == rhs] = BELOW, ABOVE, EQUAL
        got = _signs(lhs, rhs)
        assert got.dtype == np.int8 and got.tolist() == want.tolist()


def test_warm_up_loads_both_kernels() -> None:
    assert fast_sweep.warm_up() >= 0
    assert batch_kernel.simulate.signatures and batch_stats.period_stats.signatures
