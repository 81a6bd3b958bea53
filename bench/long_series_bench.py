"""Long series: indicator cost against the window, the longest single step of a run, and how late
an asyncio timer (the worker's lease renewal) fires while a run computes in a thread.

    .venv/bin/python bench/long_series_bench.py [--rows 400000] [--old]

`--old` also times the former O(n·window) standard deviation (a loop over the window) at small
windows, to show how it grew; at a 40,000-bar window it would take tens of seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import tempfile
import time
import timeit
from pathlib import Path

import numpy as np

from consumers.engine.datasets import Catalog
from consumers.engine.rolling import rolling_mean_exact, rolling_mean_fast, rolling_std
from consumers.engine.runner import start_run
from orchestrator.domain.spec import BacktestSpec

RUNS: list[tuple[str, dict[str, int | float | list[int | float]]]] = [
    ("bollinger", {"window": 40_000, "k": 2.0}),
    ("sma_cross", {"fast": 20, "slow": 40_000}),
    ("rsi", {"period": 14, "lower": 30.0, "upper": 70.0}),
]


def cent_walk(rows: int) -> np.ndarray:
    rng = np.random.default_rng(5)
    close = np.round(100 + np.cumsum(rng.choice([-0.05, 0.0, 0.05], rows)), 2)
    out: np.ndarray = np.abs(close - close.min()) + 20
    return out


def old_std(x: np.ndarray, window: int) -> np.ndarray:
    """The former two-pass loop over the window: O(n·window)."""
    n = x.shape[0]
    out = np.full(n, np.nan)
    m = rolling_mean_fast(x, window)[window - 1 :]
    acc = np.zeros(n - window + 1)
    for k in range(window):
        d = x[k : n - window + 1 + k] - m
        acc += d * d
    out[window - 1 :] = np.sqrt(acc / window)
    return out


def best_ms(fn: object, repeat: int = 5) -> float:
    # CPU time of this process, so that other work on a shared machine does not count.
    return min(timeit.repeat(fn, number=1, repeat=repeat, timer=time.process_time)) * 1e3  # type: ignore[arg-type]


def indicators(rows: int, old: bool) -> None:
    x = cent_walk(rows)
    print(f"indicators on {rows:,} bars (best of 5):")
    for window in (20, 1_000, 40_000):
        print(
            f"  window {window:>6,}: mean {best_ms(lambda w=window: rolling_mean_fast(x, w)):7.1f} ms   "
            f"std {best_ms(lambda w=window: rolling_std(x, w)):7.1f} ms"
        )
    print(f"  exact (pandas) mean replay, window 20: {best_ms(lambda: rolling_mean_exact(x, 20), 3):7.1f} ms")
    if old:
        for window in (20, 200, 2_000):
            took = best_ms(lambda w=window: old_std(x, w), 1)
            print(f"  former O(n·window) std, window {window:>5,}: {took:9.1f} ms")


def write_csv(path: Path, close: np.ndarray) -> None:
    first = dt.date(1000, 1, 1).toordinal()
    lines = ["Date,Open,High,Low,Close,Volume"]
    for i, c in enumerate(close.tolist()):
        lines.append(f"{dt.date.fromordinal(first + i).isoformat()},{c:.2f},{c + 0.1:.2f},{c - 0.1:.2f},{c:.2f},1000")
    path.write_text("\n".join(lines) + "\n")


async def run_with_timer(catalog: Catalog, spec: BacktestSpec) -> tuple[float, float, float, int, float]:
    """Run in 10 ms chunks in a thread, as a worker does, while a 50 ms timer runs on the loop.
    Returns (seconds, start_run() in s, longest advance() in s, advances, largest timer lateness in s)."""
    lateness = 0.0
    stop = asyncio.Event()

    async def timer() -> None:
        nonlocal lateness
        while not stop.is_set():
            due = time.monotonic() + 0.05
            await asyncio.sleep(0.05)
            lateness = max(lateness, time.monotonic() - due)

    ticking = asyncio.create_task(timer())
    began = time.perf_counter()
    run = await asyncio.to_thread(start_run, spec, catalog)
    setup = time.perf_counter() - began
    worst, steps = 0.0, 0
    while not run.done:
        t0 = time.perf_counter()
        await asyncio.to_thread(run.advance, 0.01)
        worst, steps = max(worst, time.perf_counter() - t0), steps + 1
    await asyncio.to_thread(run.outcome)
    total = time.perf_counter() - began
    stop.set()
    await ticking
    return total, setup, worst, steps, lateness


def runs(rows: int) -> None:
    with tempfile.TemporaryDirectory() as d:
        write_csv(Path(d) / "LONG.csv", cent_walk(rows))
        catalog = Catalog.from_env_dir(d)
        t0 = time.perf_counter()
        catalog.load("LONG")
        print(f"loading the {rows:,}-row CSV: {time.perf_counter() - t0:.2f} s (once per worker; one step)")
        for name, params in RUNS:
            spec = BacktestSpec(strategy=name, symbol="LONG", params=params)
            total, setup, worst, steps, late = asyncio.run(run_with_timer(catalog, spec))
            print(
                f"  {name} {params}: {total:.2f} s; start_run {setup * 1e3:.0f} ms, then {steps} advance(0.01) "
                f"calls, longest {worst * 1e3:.0f} ms; 50 ms timer at most {late * 1e3:.0f} ms late"
            )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--rows", type=int, default=400_000)
    ap.add_argument("--old", action="store_true")
    args = ap.parse_args()
    indicators(args.rows, args.old)
    runs(args.rows)


if __name__ == "__main__":
    main()
