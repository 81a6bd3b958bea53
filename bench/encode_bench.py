"""What encoding a result as Parquet costs (the worker does it for every task and every chunk of
a job): the writer's options side by side in one run, on a job's chunk (a 2,400-row sweep table
with its best run's equity curve and trades) and on a single backtest (equity and trades).

    .venv/bin/python bench/encode_bench.py [--repeats 30] [--smoke]

Prints the median milliseconds to write each result's tables and their bytes, per option set."""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from consumers.engine.datasets import Catalog  # noqa: E402
from consumers.engine.jobs import chunk_spec, plan_job  # noqa: E402
from consumers.engine.runner import start_run  # noqa: E402
from orchestrator.domain.spec import BacktestSpec  # noqa: E402
from orchestrator.storage.results.encoding import ROW_GROUP_ROWS, parquet_bytes  # noqa: E402
from orchestrator.storage.results.shape import split_detail  # noqa: E402

OPTIONS: dict[str, dict[str, Any]] = {
    "zstd, dictionaries (before)": {"compression": "zstd"},
    "zstd, no dictionaries (parquet_bytes)": {"compression": "zstd", "use_dictionary": False},
    "snappy": {"compression": "snappy"},
    "uncompressed": {"compression": "none"},
}


def detail(spec: BacktestSpec, catalog: Catalog) -> dict[str, Any]:
    run = start_run(spec, catalog)
    while not run.done:
        run.advance(10.0)
    result: dict[str, Any] = run.outcome().detail
    return result


def written(tables: dict[str, pa.Table], options: dict[str, Any]) -> int:
    size = 0
    for table in tables.values():
        sink = io.BytesIO()
        pq.write_table(table, sink, row_group_size=ROW_GROUP_ROWS, **options)
        size += len(sink.getvalue())
    return size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--smoke", action="store_true", help="a tiny run that only checks the script works")
    args = parser.parse_args()
    repeats = 2 if args.smoke else args.repeats
    catalog = Catalog.from_env_dir(None)
    # The jobs benchmark's grid (BENCHMARKS.md, "Jobs"): chunks of 2,400 rows.
    grid = {"fast": list(range(2, 98)), "slow": list(range(100, 200))}
    if args.smoke:
        grid = {"fast": list(range(2, 12)), "slow": [100, 150, 199]}
    job = BacktestSpec(strategy="sma_cross", symbols=["AAPL", "GOOG"], params=grid)
    plan = plan_job(job, catalog)
    assert plan is not None
    results = {
        f"a job's chunk ({plan.spans[0].stop - plan.spans[0].start} rows)": detail(
            chunk_spec(job, plan, 0, "x"), catalog
        ),
        "a single backtest": detail(
            BacktestSpec(strategy="sma_cross", symbol="GOOG", params={"fast": 10, "slow": 30}), catalog
        ),
    }
    print(f"median of {repeats}; ms to write every table of the result, and their bytes")
    print("| result | options | ms | bytes |\n| --- | --- | ---: | ---: |")
    for name, full in results.items():
        _, tables = split_detail(full)
        for label, options in OPTIONS.items():
            times = []
            for _ in range(repeats):
                started = time.perf_counter()
                size = written(tables, options)
                times.append(time.perf_counter() - started)
            print(f"| {name} | {label} | {1000 * statistics.median(times):.2f} | {size:,} |")
        assert sum(len(parquet_bytes(t)) for t in tables.values()) == written(
            tables, OPTIONS["zstd, no dictionaries (parquet_bytes)"]
        )


if __name__ == "__main__":
    main()
