"""A job's result assembled from its chunks' stored results equals the single task's sweep."""

from __future__ import annotations

import io
from typing import Any

import msgspec
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from consumers.engine import jobs
from consumers.engine.datasets import Catalog
from consumers.engine.runner import start_run
from orchestrator.domain.results import HEADLINE_METRICS
from orchestrator.domain.spec import BacktestSpec, ParamValue
from orchestrator.storage.results.encoding import parquet_bytes
from orchestrator.storage.results.errors import ResultGone
from orchestrator.storage.results.job import ChunkResult, assemble_job
from orchestrator.storage.results.shape import split_detail

GRID: dict[str, ParamValue] = {"fast": [2, 5, 10, 20, 40], "slow": [10, 30, 60, 100, 150]}
UNIVERSE = BacktestSpec(
    strategy="sma_cross", symbols=["IBM", "FB", "GOOG"], params=GRID, constraint="fast < slow", objective="sharpe"
)


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return Catalog()


def stored(detail: dict[str, Any]) -> ChunkResult:
    """The result as the store gives it back: split, each table through Parquet."""
    meta, tables = split_detail(detail)
    return meta, {name: pq.read_table(io.BytesIO(parquet_bytes(t))) for name, t in tables.items()}


def detail(catalog: Catalog, spec: BacktestSpec) -> dict[str, Any]:
    run = start_run(spec, catalog)
    while not run.done:
        run.advance(10.0)
    return run.outcome().detail


def cut(catalog: Catalog, spec: BacktestSpec, size: int) -> jobs.JobPlan:
    """The job's plan with chunks of `size` combinations (the planned size would be one chunk)."""
    plan = jobs.plan_job(spec, catalog)
    symbols = [spec.symbol] if plan is None else plan.symbols
    counts = {
        s: len(start_run(msgspec.structs.replace(spec, symbol=s, symbols=None), catalog).combinations) for s in symbols
    }
    spans = [jobs.Span(s, a, min(a + size, n)) for s, n in counts.items() for a in range(0, n, size)]
    assert plan is None or [s.symbol for s in plan.spans] == symbols
    return jobs.JobPlan(symbols, spans, sum(counts.values()), size)


def chunk_results(catalog: Catalog, spec: BacktestSpec, plan: jobs.JobPlan) -> list[ChunkResult | None]:
    return [stored(detail(catalog, jobs.chunk_spec(spec, plan, i, "job"))) for i in range(len(plan.spans))]


def spans(plan: jobs.JobPlan) -> list[tuple[str, int, int]]:
    return [(s.symbol, s.start, s.stop) for s in plan.spans]


def single(catalog: Catalog, spec: BacktestSpec, symbol: str) -> ChunkResult:
    return stored(detail(catalog, msgspec.structs.replace(spec, symbol=symbol, symbols=None)))


def without_job_columns(table: pa.Table) -> pa.Table:
    return table.drop_columns(["symbol", "combination"])


@pytest.mark.parametrize("objective", ["sharpe", "-max_drawdown_pct", "calmar"])
@pytest.mark.parametrize("size", [1, 4, 9])
def test_a_sweep_job_assembles_to_the_single_task_result(catalog: Catalog, objective: str, size: int) -> None:
    spec = BacktestSpec(strategy="sma_cross", symbol="GOOG", params=GRID, constraint="fast < slow", objective=objective)
    plan = cut(catalog, spec, size)
    meta, tables = assemble_job(chunk_results(catalog, spec, plan), spans(plan), minimise=spec.minimise, universe=False)
    one_meta, one_tables = single(catalog, spec, "GOOG")
    assert without_job_columns(tables["sweep"]).equals(one_tables["sweep"])
    assert tables["sweep"].column("symbol").to_pylist() == ["GOOG"] * one_tables["sweep"].num_rows
    assert meta == {**one_meta, "chunks": len(plan.spans), "missing": []}
    assert tables["equity"].equals(one_tables["equity"]) and tables["trades"].equals(one_tables["trades"])
    assert set(tables) == {"sweep", "equity", "trades"}


def test_a_universe_assembles_per_symbol_results(catalog: Catalog) -> None:
    plan = cut(catalog, UNIVERSE, 4)
    meta, tables = assemble_job(chunk_results(catalog, UNIVERSE, plan), spans(plan), minimise=False, universe=True)
    singles = {s: single(catalog, UNIVERSE, s) for s in ("IBM", "FB", "GOOG")}
    table = tables["sweep"]
    assert table.num_rows == meta["combinations"] == sum(t["sweep"].num_rows for _, t in singles.values())
    for symbol, (_, one) in singles.items():
        mine = table.filter(pa.compute.equal(table.column("symbol"), symbol))
        assert without_job_columns(mine).to_pylist() == one["sweep"].to_pylist()
    # The best run is the best symbol's.
    first = table.column("symbol")[0].as_py()
    best_meta, best_tables = singles[first]
    assert meta["best"] == best_meta["best"] and meta["symbols"] == {"$table": "symbols"}
    assert tables["equity"].equals(best_tables["equity"])
    # One row per symbol, best symbol first: each symbol's best row.
    rows = tables["symbols"].to_pylist()
    assert [r["symbol"] for r in rows][0] == first and sorted(r["symbol"] for r in rows) == ["FB", "GOOG", "IBM"]
    for row in rows:
        one = singles[row["symbol"]][1]["sweep"]
        top = one.to_pylist()[0]
        assert {k: row[k] for k in ("params", "objective", *HEADLINE_METRICS)} == {
            k: top[k] for k in ("params", "objective", *HEADLINE_METRICS)
        }
        assert row["combinations"] == one.num_rows


def test_missing_chunks_are_listed_and_the_rest_ranked(catalog: Catalog) -> None:
    spec = BacktestSpec(strategy="sma_cross", symbol="GOOG", params=GRID, constraint="fast < slow", objective="-sharpe")
    plan = cut(catalog, spec, 3)
    results = chunk_results(catalog, spec, plan)
    gone = plan.spans[1]
    results[1] = None
    as_dicts = [msgspec.to_builtins(s) for s in plan.spans]
    meta, tables = assemble_job(results, as_dicts, minimise=True, universe=False)
    assert meta["missing"] == [{"symbol": "GOOG", "start": gone.start, "stop": gone.stop}]
    full = single(catalog, spec, "GOOG")[1]["sweep"]
    admissible = start_run(spec, catalog).combinations
    lost = [dict(admissible[i]) for i in range(gone.start, gone.stop)]
    expected = [row for row in full.to_pylist() if row["params"] not in lost]
    assert without_job_columns(tables["sweep"]).to_pylist() == expected
    assert meta["combinations"] == len(expected) == full.num_rows - 3


def test_a_job_without_any_result_cannot_be_assembled(catalog: Catalog) -> None:
    with pytest.raises(ResultGone):
        assemble_job([None, None], [("GOOG", 0, 3), ("GOOG", 3, 5)], minimise=False, universe=False)
    with pytest.raises(ValueError, match="2 spans"):
        assemble_job([None], [("GOOG", 0, 3), ("GOOG", 3, 5)], minimise=False, universe=False)


def test_a_universe_of_a_strategy_without_parameters_stores_and_assembles(catalog: Catalog) -> None:
    # Buy-and-hold has no parameters: its chunks' tables have no `params` column (Parquet cannot
    # store a struct without fields), and the job's result still assembles.
    spec = BacktestSpec(strategy="buy_and_hold", symbols=["IBM", "GOOG"])
    plan = jobs.plan_job(spec, catalog)
    assert plan is not None and len(plan.spans) == 2
    parts = chunk_results(catalog, spec, plan)
    meta, tables = assemble_job(parts, [(s.symbol, s.start, s.stop) for s in plan.spans], minimise=False, universe=True)
    assert tables["sweep"].num_rows == 2 and "params" not in tables["sweep"].column_names
    assert sorted(tables["symbols"].column("symbol").to_pylist()) == ["GOOG", "IBM"]
    pq.read_table(io.BytesIO(parquet_bytes(tables["symbols"])))  # the assembled tables store too
