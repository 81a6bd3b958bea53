"""Engine vs backtesting.py 0.6.6, side by side on the same data: one SMA-crossover run, and a
100-combination sweep against Backtest.optimize() (serial, and with its multiprocessing).

    .venv/bin/python bench/engine_bench.py [--repeat 15] [--sweep-repeat 3]
    .venv/bin/python bench/engine_bench.py --smoke   # a 2 x 2 grid, one repeat: checks it runs (CI)

backtesting.py (AGPL-3.0) is only the yardstick here; the engine never imports it.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
import warnings
from collections.abc import Callable
from typing import Any

import backtesting
import pandas as pd
from backtesting import Backtest, Strategy
from backtesting.lib import crossover
from backtesting.test import GOOG

from consumers.engine.datasets import Bars
from consumers.engine.job import run_once
from consumers.engine.market import Market, costs_of
from consumers.engine.strategies import STRATEGIES
from consumers.engine.sweep import admissible, make_row, ranked
from orchestrator.domain.spec import BacktestSpec

GRID = {"fast": [5, 10, 15, 20, 25, 30, 35, 40, 45, 50], "slow": [60, 70, 80, 90, 100, 110, 120, 130, 140, 150]}
# --smoke: the same code paths on a grid of four, so a test can run the script in a few seconds.
SMOKE_GRID = {"fast": [5, 10], "slow": [60, 70]}


def _sma(values: Any, n: int) -> Any:
    return pd.Series(values).rolling(n).mean()


class SmaCross(Strategy):
    fast = 10
    slow = 20

    def init(self) -> None:
        self.sma1 = self.I(_sma, self.data.Close, self.fast)
        self.sma2 = self.I(_sma, self.data.Close, self.slow)

    def next(self) -> None:
        if crossover(self.sma1, self.sma2):
            self.position.close()
            self.buy()
        elif crossover(self.sma2, self.sma1):
            self.position.close()
            self.sell()


class SerialPool:
    """Stands in for multiprocessing.Pool so optimize() runs in this process, one run at a time."""

    def __init__(self, *_: Any) -> None: ...
    def __enter__(self) -> SerialPool:
        return self

    def __exit__(self, *_: Any) -> None: ...
    def imap(self, fn: Callable[[Any], Any], items: Any) -> Any:
        return map(fn, items)


def bars_of(df: pd.DataFrame) -> Bars:
    return Bars(
        "GOOG",
        "bundled",
        df.index.values.astype("datetime64[D]"),
        *(df[c].to_numpy(float) for c in ("Open", "High", "Low", "Close", "Volume")),
    )


def median_time(fn: Callable[[], Any], repeat: int) -> float:
    fn()  # warm caches and imports outside the measurement
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def engine_single(bars: Bars, spec: BacktestSpec) -> dict[str, object]:
    # A fresh indicator cache each time: nothing carries over between measured runs.
    market = Market.of(bars)
    return run_once(market, STRATEGIES["sma_cross"], spec.params, costs_of(spec), False, spec.cash)[1]


def engine_sweep(bars: Bars, spec: BacktestSpec) -> list[Any]:
    market = Market.of(bars)
    strategy = STRATEGIES["sma_cross"]
    rows = [
        make_row(c, run_once(market, strategy, c, costs_of(spec), False, spec.cash)[1], "sqn")
        for c in admissible(strategy, spec.params, spec.constraint, len(bars))
    ]
    best = ranked(rows)[0].params
    run_once(market, strategy, best, costs_of(spec), False, spec.cash)  # full result of the best, as optimize()
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--repeat", type=int, default=15)
    ap.add_argument("--sweep-repeat", type=int, default=3)
    ap.add_argument("--smoke", action="store_true", help="a 2 x 2 grid and one repeat each: checks that it runs")
    args = ap.parse_args()
    grid = SMOKE_GRID if args.smoke else GRID
    if args.smoke:
        args.repeat = args.sweep_repeat = 1
    warnings.simplefilter("ignore")
    bars = bars_of(GOOG)
    bt = Backtest(GOOG, SmaCross, finalize_trades=True)
    single = BacktestSpec(strategy="sma_cross", symbol="GOOG", params={"fast": 10, "slow": 20})
    sweep = BacktestSpec(strategy="sma_cross", symbol="GOOG", params=grid, constraint="fast < slow")

    # Same answer first, then speed.
    assert engine_single(bars, single)["equity_final"] == bt.run(fast=10, slow=20)["Equity Final [$]"]

    print(
        f"data: backtesting.test.GOOG, {len(bars)} daily bars; python {platform.python_version()}, "
        f"{os.cpu_count()} CPUs, {platform.machine()}; medians"
    )
    t_engine = median_time(lambda: engine_single(bars, single), args.repeat)
    t_bt = median_time(lambda: bt.run(fast=10, slow=20), args.repeat)
    print(
        f"single SMA(10,20) run: engine {t_engine * 1e3:8.2f} ms   Backtest.run() {t_bt * 1e3:8.2f} ms   "
        f"ratio {t_bt / t_engine:6.1f}x"
    )

    # admissible() is lazy (a generator), so count it.
    n = sum(1 for _ in admissible(STRATEGIES["sma_cross"], grid, "fast < slow", len(bars)))
    s_engine = median_time(lambda: engine_sweep(bars, sweep), args.sweep_repeat)
    opt = dict(maximize="SQN", constraint=lambda p: p.fast < p.slow, **grid)
    original_pool = backtesting.Pool
    backtesting.Pool = SerialPool  # type: ignore[assignment]
    try:
        s_serial = median_time(lambda: bt.optimize(**opt), args.sweep_repeat)
    finally:
        backtesting.Pool = original_pool
    s_parallel = median_time(lambda: bt.optimize(**opt), args.sweep_repeat)
    print(
        f"{n}-combination sweep:   engine {s_engine * 1e3:8.1f} ms   optimize() serial {s_serial * 1e3:8.1f} ms "
        f"({s_serial / s_engine:5.1f}x)   optimize() multiprocessing {s_parallel * 1e3:8.1f} ms "
        f"({s_parallel / s_engine:5.1f}x)"
    )


if __name__ == "__main__":
    main()
