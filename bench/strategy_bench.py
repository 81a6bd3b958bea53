"""The engine's own time per run and per sweep combination, for comparing two versions of it.

Uses only what every version since the sweep's indicator sharing offers (`Market.of`,
`run_once`, `admissible`), so the same script times an older checkout put first on PYTHONPATH:

    git worktree add /tmp/old <commit>
    for tree in /tmp/old $PWD /tmp/old $PWD; do
        PYTHONPATH=$tree nice -n 10 .venv/bin/python bench/strategy_bench.py --label $tree
    done

With a plugin strategy installed (say the example: `pip install --target DIR examples/backstream-donchian`
and DIR on PYTHONPATH), `--plugin donchian` also times a sweep of it over as many combinations.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Any

from consumers.engine.datasets import Catalog
from consumers.engine.job import run_once
from consumers.engine.market import Market, costs_of
from consumers.engine.sweep import admissible, make_row, ranked
from orchestrator.domain.spec import BacktestSpec

GRIDS: dict[str, tuple[dict[str, list[int]], str | None]] = {
    "sma_cross": (
        {"fast": [5, 10, 15, 20, 25, 30, 35, 40, 45, 50], "slow": [60, 70, 80, 90, 100, 110, 120, 130, 140, 150]},
        "fast < slow",
    ),
    # The example plugin, over as many combinations (100) with as many distinct windows (20).
    "donchian": ({"entry": [60, 70, 80, 90, 100, 110, 120, 130, 140, 150], "exit": list(range(5, 55, 5))}, None),
}


def median_time(fn: Callable[[], Any], repeat: int) -> float:
    fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def registry(name: str) -> Any:
    try:
        from consumers.engine.registry import strategies  # the plugin-aware engine
    except ImportError:
        from consumers.engine.strategies import STRATEGIES  # before plugins: the built-ins only

        return STRATEGIES[name]
    return strategies()[name]


def sweep(bars: Any, name: str, **management: Any) -> int:
    grid, constraint = GRIDS[name]
    grid = {**grid, **management}  # position management joins the grid (engines that have it)
    spec = BacktestSpec(strategy=name, symbol="GOOG", params=grid, constraint=constraint)  # type: ignore[arg-type]
    market, strategy, costs = Market.of(bars), registry(name), costs_of(spec)
    combos = list(admissible(strategy, spec.params, constraint, len(bars)))
    rows = [make_row(c, run_once(market, strategy, c, costs, False, spec.cash)[1], "sqn") for c in combos]
    run_once(market, strategy, ranked(rows)[0].params, costs, False, spec.cash)
    return len(combos)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--label", default="")
    ap.add_argument("--repeat", type=int, default=31)
    ap.add_argument("--sweep-repeat", type=int, default=9)
    ap.add_argument("--plugin", help="also time a sweep of this installed plugin strategy (see GRIDS)")
    ap.add_argument(
        "--managed", action="store_true", help="also time the sma_cross sweep with a 5%% stop and a 10%% target"
    )
    args = ap.parse_args()
    bars = Catalog.from_env_dir(None).load("GOOG").prices(True)[0]
    sma = registry("sma_cross")
    spec = BacktestSpec(strategy="sma_cross", symbol="GOOG", params={"fast": 10, "slow": 20})
    single = median_time(
        lambda: run_once(Market.of(bars), sma, spec.params, costs_of(spec), False, spec.cash), args.repeat
    )
    n = sweep(bars, "sma_cross")
    s = median_time(lambda: sweep(bars, "sma_cross"), args.sweep_repeat)
    line = f"{args.label}: single {single * 1e3:.3f} ms; sma_cross sweep {n} combos {s * 1e3:.1f} ms"
    line += f" ({s / n * 1e6:.0f} us/combo)"
    if args.plugin:
        m = sweep(bars, args.plugin)
        p = median_time(lambda: sweep(bars, args.plugin), args.sweep_repeat)
        line += f"; {args.plugin} sweep {m} combos {p * 1e3:.1f} ms ({p / m * 1e6:.0f} us/combo)"
    if args.managed:
        stops = {"stop_loss_pct": 5.0, "take_profit_pct": 10.0}
        q = median_time(lambda: sweep(bars, "sma_cross", **stops), args.sweep_repeat)
        line += f"; sma_cross sweep with stop and target {q * 1e3:.1f} ms ({q / n * 1e6:.0f} us/combo)"
    print(line, flush=True)


if __name__ == "__main__":
    main()
