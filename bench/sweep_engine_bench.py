"""Sweep engine against vectorbt and backtesting.py's optimize(), on one core, in one run.

The 10,000-combination SMA grid (fast 2..101 x slow 102..201) on the bundled GOOG (2,148 daily
bars, split-adjusted: the default). Each side computes, for every combination, at least the
total return and the Sharpe ratio:

- the engine: a sweep request run as a worker runs it (`start_run`, then `advance(0.02)` chunks
  until done), the objective (SQN) and the table's ten metrics for every row, every statistic of
  the best; a fresh indicator cache each repeat. `--old-tree DIR` also runs this script's engine
  part against another checkout (e.g. `git worktree add /tmp/sweep-old <base>`), in a subprocess
  with that tree on PYTHONPATH;
- vectorbt (`--vbt-python`: an interpreter of a separate venv, never a project dependency):
  `MA.run` for the 200 windows, crossings, `Portfolio.from_signals` (long and short), total return
  and Sharpe, in column chunks of several sizes; its best chunk size is reported;
- backtesting.py `optimize()` with a serial pool, on the first `--bt-combos` combinations of the
  grid only (~50 ms a combination: the whole grid would take ~8 minutes), reported per combination.

    nice -n 10 .venv/bin/python bench/sweep_engine_bench.py --old-tree /tmp/sweep-old \
        --vbt-python /tmp/vbt-venv/bin/python
    .venv/bin/python bench/sweep_engine_bench.py --smoke   # a 2 x 2 grid, one repeat: checks it runs (CI)

Numba's cache: the engine's compiled kernel is cached on disk (NUMBA_CACHE_DIR, default beside
the module); `--compile-cost` measures a first compile into a fresh cache directory.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

FAST = list(range(2, 102))
SLOW = list(range(102, 202))
SMOKE_FAST, SMOKE_SLOW = [5, 10], [60, 70]
VBT_CHUNKS = (250, 1000, 2500)


def engine_times(fast: list[int], slow: list[int], repeat: int) -> dict[str, Any]:
    """Run the sweep `repeat + 1` times in this process: the first includes loading (or compiling)
    the kernel; the rest are the measurement. Imports the engine from PYTHONPATH."""
    from consumers.engine.datasets import Catalog
    from consumers.engine.runner import start_run
    from orchestrator.domain.spec import BacktestSpec

    catalog = Catalog()
    spec = BacktestSpec(strategy="sma_cross", symbol="GOOG", params={"fast": fast, "slow": slow})
    times, combos, best = [], 0, None
    for _ in range(repeat + 1):
        t0 = time.perf_counter()
        run = start_run(spec, catalog)
        while not run.done:
            run.advance(0.02)
        times.append(time.perf_counter() - t0)
        out = run.outcome()
        combos, best = out.summary["combinations"], out.summary["best_params"]
    result: dict[str, Any] = {"cold_s": times[0], "times": times[1:], "combinations": combos, "best": best}
    try:
        from consumers.engine.fast_sweep import FastSweep
    except ImportError:  # an engine without the fast path
        return result
    result["parts"] = parts(spec, catalog, FastSweep, max(repeat, 1))
    return result


class _Replayed:
    """A strategy that returns decisions computed beforehand: the fast path without `decide`."""

    def __init__(self, decisions: dict[int, Any], warmups: dict[int, int]) -> None:
        self.decisions, self.warmups = decisions, warmups

    def decide_with_warmup(self, _data: Any, combo: Any, _long_only: bool) -> tuple[Any, int]:
        return self.decisions[id(combo)], self.warmups[id(combo)]


def parts(spec: Any, catalog: Any, fast_sweep: Any, repeat: int) -> dict[str, float]:
    """Seconds per sweep of each part: setup (validation, the admissible grid), `decide` for every
    combination (warm indicators), and the fast path with decisions given (the kernel, the
    statistics and the rows: the bound if `decide` cost nothing). Medians of `repeat`."""
    from consumers.engine.runner import start_run

    setup, decide, kernel = [], [], []
    for _ in range(repeat):
        t0 = time.perf_counter()
        run = start_run(spec, catalog)
        setup.append(time.perf_counter() - t0)
        combos, data, s = run.combinations, run.market.indicators, run.strategy
        for c in combos:  # indicators computed once, as in a sweep
            s.decide(data, c, False)
        t0 = time.perf_counter()
        decisions = {id(c): s.decide(data, c, False) for c in combos}
        decide.append(time.perf_counter() - t0)
        warmups = {id(c): s.warmup(c) for c in combos}
        fs = fast_sweep(data, run.market.bars.dates, _Replayed(decisions, warmups), run.costs, False, spec.cash, "sqn")
        t0 = time.perf_counter()
        done = 0
        while done < len(combos):
            done += len(fs.step(combos, done))
        kernel.append(time.perf_counter() - t0)
    return {name: statistics.median(v) for name, v in (("setup", setup), ("decide", decide), ("kernel", kernel))}


def _subprocess_json(cmd: list[str], env: dict[str, str]) -> dict[str, Any]:
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{cmd[:3]} exited {done.returncode}: {done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def engine_in_tree(tree: str, fast: list[int], slow: list[int], repeat: int, cache: str | None) -> dict[str, Any]:
    env = dict(os.environ, PYTHONPATH=tree)
    if cache is not None:
        env["NUMBA_CACHE_DIR"] = cache
    args = ["--engine-only", "--repeat", str(repeat), "--fast", json.dumps(fast), "--slow", json.dumps(slow)]
    return _subprocess_json([sys.executable, __file__, *args], env)


def vbt_times(data: str, fast: list[int], slow: list[int], repeat: int, chunks: list[int]) -> dict[str, Any]:
    """Runs inside vectorbt's venv (no project import): total return and Sharpe per combination."""
    import numpy as np
    import pandas as pd
    import vectorbt as vbt

    close = pd.Series(np.load(data))
    pairs = [(f, s) for f in fast for s in slow]

    def sweep(chunk: int) -> tuple[Any, Any]:
        fm = vbt.MA.run(close, window=fast).ma.to_numpy()
        sm = vbt.MA.run(close, window=slow).ma.to_numpy()
        col = {w: i for i, w in enumerate(fast)}, {w: i for i, w in enumerate(slow)}
        rets, sharpes = [], []
        for lo in range(0, len(pairs), chunk):
            part = pairs[lo : lo + chunk]
            a = fm[:, [col[0][f] for f, _ in part]]
            b = sm[:, [col[1][s] for _, s in part]]
            above = a > b
            prev = np.vstack([np.zeros((1, above.shape[1]), bool), above[:-1]])
            valid = ~np.isnan(b)
            up = above & ~prev & valid
            down = ~above & prev & valid
            pf = vbt.Portfolio.from_signals(close, up, down, short_entries=down, short_exits=up, freq="1D")
            rets.append(pf.total_return().to_numpy())
            sharpes.append(pf.sharpe_ratio().to_numpy())
        return np.concatenate(rets), np.concatenate(sharpes)

    t0 = time.perf_counter()
    sweep(min(chunks))  # numba compiles (or loads its cache) here
    warm = time.perf_counter() - t0
    by_chunk = {}
    for chunk in chunks:
        times = []
        for _ in range(repeat):
            t0 = time.perf_counter()
            sweep(chunk)
            times.append(time.perf_counter() - t0)
        by_chunk[chunk] = statistics.median(times)
    return {"warm_s": warm, "by_chunk": by_chunk, "combinations": len(pairs), "version": vbt.__version__}


def backtesting_rate(fast: list[int], slow: list[int], combos: int) -> tuple[int, float]:
    """backtesting.py optimize() (serial pool) over the first `combos` combinations of the grid."""
    import warnings

    import backtesting
    import numpy as np
    import pandas as pd
    from backtesting import Backtest, Strategy
    from backtesting.lib import crossover

    from consumers.engine.datasets import Catalog

    bars, _ = Catalog().load("GOOG").prices(True)
    df = pd.DataFrame(
        {"Open": bars.open, "High": bars.high, "Low": bars.low, "Close": bars.close, "Volume": bars.volume},
        index=pd.DatetimeIndex(bars.dates),
    )

    def sma(values: Any, n: int) -> Any:
        return pd.Series(values).rolling(n).mean()

    class SmaCross(Strategy):  # type: ignore[misc]
        fast = 10
        slow = 20

        def init(self) -> None:
            self.a = self.I(sma, self.data.Close, self.fast)
            self.b = self.I(sma, self.data.Close, self.slow)

        def next(self) -> None:
            if crossover(self.a, self.b):
                self.position.close()
                self.buy()
            elif crossover(self.b, self.a):
                self.position.close()
                self.sell()

    class SerialPool:
        def __init__(self, *_: Any) -> None: ...
        def __enter__(self) -> SerialPool:
            return self

        def __exit__(self, *_: Any) -> None: ...
        def imap(self, fn: Any, items: Any) -> Any:
            return map(fn, items)

    per_fast = max(1, combos // len(slow))
    grid = {"fast": fast[:per_fast], "slow": slow if combos >= len(slow) else slow[:combos]}
    n = len(grid["fast"]) * len(grid["slow"])
    bt = Backtest(df, SmaCross, finalize_trades=True)
    original = backtesting.Pool
    backtesting.Pool = SerialPool  # type: ignore[assignment]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            t0 = time.perf_counter()
            bt.optimize(maximize="SQN", **grid)
            elapsed = time.perf_counter() - t0
    finally:
        backtesting.Pool = original
    _ = np  # the pandas frame above is backtesting.py's input
    return n, elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--smoke", action="store_true", help="a 2 x 2 grid, one repeat: checks that it runs")
    ap.add_argument("--old-tree", help="another checkout whose engine runs beside this one's")
    ap.add_argument("--vbt-python", help="python of a venv with vectorbt installed")
    ap.add_argument("--bt-combos", type=int, default=200, help="combinations for backtesting.py's optimize()")
    ap.add_argument("--compile-cost", action="store_true", help="also measure a first compile into a fresh cache")
    ap.add_argument("--engine-only", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--vbt-only", help=argparse.SUPPRESS)
    ap.add_argument("--fast", type=json.loads, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--slow", type=json.loads, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--chunks", type=json.loads, default=list(VBT_CHUNKS), help=argparse.SUPPRESS)
    args = ap.parse_args()
    fast, slow = (SMOKE_FAST, SMOKE_SLOW) if args.smoke else (FAST, SLOW)
    fast, slow = args.fast or fast, args.slow or slow
    if args.smoke:
        args.repeat, args.bt_combos = 1, 2
    if args.engine_only:
        print(json.dumps(engine_times(fast, slow, args.repeat)))
        return
    if args.vbt_only:
        print(json.dumps(vbt_times(args.vbt_only, fast, slow, args.repeat, args.chunks)))
        return

    here = str(Path(__file__).resolve().parent.parent)
    print(
        f"grid: sma_cross fast {fast[0]}..{fast[-1]} x slow {slow[0]}..{slow[-1]} on GOOG (bundled, adjusted); "
        f"python {platform.python_version()}, {os.cpu_count()} CPUs, {platform.machine()}; medians of {args.repeat}"
    )
    rows: list[tuple[str, int, float, str]] = []
    new = engine_in_tree(here, fast, slow, args.repeat, None)
    n = new["combinations"]
    rows.append(("engine (this tree)", n, statistics.median(new["times"]), f"first run {new['cold_s']:.2f} s"))
    if args.old_tree:
        old = engine_in_tree(args.old_tree, fast, slow, args.repeat, None)
        assert old["best"] == new["best"], (old["best"], new["best"])
        rows.append(("engine (old tree)", old["combinations"], statistics.median(old["times"]), ""))
    if args.compile_cost:
        with tempfile.TemporaryDirectory() as cache:
            fresh = engine_in_tree(here, SMOKE_FAST, SMOKE_SLOW, 0, cache)
            reload = engine_in_tree(here, SMOKE_FAST, SMOKE_SLOW, 0, cache)
        print(f"kernel compile into an empty cache: {fresh['cold_s']:.1f} s; from the cache: {reload['cold_s']:.2f} s")
    if args.vbt_python:
        import numpy as np

        from consumers.engine.datasets import Catalog

        bars, _ = Catalog().load("GOOG").prices(True)
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "close.npy")
            np.save(path, bars.close)
            vbt_args = ["--vbt-only", path, "--repeat", str(args.repeat), "--fast", json.dumps(fast)]
            vbt_args += ["--slow", json.dumps(slow)]
            if args.smoke:
                vbt_args += ["--chunks", "[2, 4]"]
            got = _subprocess_json([args.vbt_python, __file__, *vbt_args], dict(os.environ))
        chunk, best = min(got["by_chunk"].items(), key=lambda kv: kv[1])
        others = ", ".join(f"{c}: {got['combinations'] / t:,.0f}/s" for c, t in got["by_chunk"].items())
        rows.append((f"vectorbt {got['version']} (chunk {chunk})", got["combinations"], best, f"chunks {others}"))
    bt_n, bt_s = backtesting_rate(fast, slow, args.bt_combos)
    rows.append(("backtesting.py optimize()", bt_n, bt_s, "serial pool, first combinations only"))
    for name, count, seconds, note in rows:
        print(f"{name:34s} {count:6d} combinations {seconds:9.3f} s {count / seconds:10,.0f} combinations/s  {note}")
    if "parts" in new:
        p = new["parts"]
        print(
            "engine parts per sweep: "
            + ", ".join(f"{k} {v * 1e3:.0f} ms ({v / n * 1e6:.1f} µs a combination)" for k, v in p.items())
            + f"; bound without decide: {n / p['kernel']:,.0f} combinations/s"
        )


if __name__ == "__main__":
    main()
