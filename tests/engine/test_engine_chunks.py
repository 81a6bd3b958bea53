"""A job's chunks: their rows, ranked together, are exactly the single task's sweep table."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from consumers.engine.checkpoint import Checkpoint
from consumers.engine.datasets import Catalog
from consumers.engine.errors import SpecError
from consumers.engine.runner import Outcome, resume_run, start_run
from orchestrator.domain.ranking import rank_key
from orchestrator.domain.spec import BacktestSpec, Chunk, ParamValue

GRID: dict[str, ParamValue] = {"fast": [2, 3, 5, 8, 13, 21], "slow": [5, 10, 20, 40, 60]}
SPECS = {
    # Maximised, on the compiled batch path, with a constraint.
    "sharpe": BacktestSpec(
        strategy="sma_cross", symbol="GOOGBT", params=GRID, constraint="fast < slow", objective="sharpe"
    ),
    # Minimised by a leading "-", on the compiled path.
    "-drawdown": BacktestSpec(
        strategy="sma_cross", symbol="GOOGBT", params=GRID, constraint="fast * 2 <= slow", objective="-max_drawdown_pct"
    ),
    # Minimised by direction, an objective of the interpreted path only.
    "calmar-min": BacktestSpec(
        strategy="sma_cross",
        symbol="GOOGBT",
        params={"fast": [2, 5, 8], "slow": [10, 20, 40]},
        objective="calmar",
        direction="min",
    ),
    # Bankrupt combinations (the interpreted path between compiled batches) and rows without trades.
    "bankrupt": BacktestSpec(
        strategy="sma_cross",
        symbol="ROCKET",
        params={"fast": [2, 3, 5, 20], "slow": [8, 30, 60, 90]},
        objective="return_pct",
    ),
    # The same, by a metric none of them has (too few trades): every row ties without a value.
    "no-value": BacktestSpec(
        strategy="sma_cross", symbol="ROCKET", params={"fast": [2, 3, 5, 20], "slow": [8, 30, 60, 90]}, objective="sqn"
    ),
    # Position management: the interpreted path throughout.
    "managed": BacktestSpec(
        strategy="sma_cross",
        symbol="GOOGBT",
        params={"fast": [5, 10], "slow": [20, 40]},
        stop_loss_pct=[2.0, 5.0],
        objective="-return_pct",
    ),
}


def finish(catalog: Catalog, spec: BacktestSpec) -> Outcome:
    run = start_run(spec, catalog)
    while not run.done:
        run.advance(10.0)
    return run.outcome()


def chunked(catalog: Catalog, spec: BacktestSpec, size: int) -> list[Outcome]:
    total = len(start_run(spec, catalog).combinations)
    return [
        finish(catalog, msgspec.structs.replace(spec, chunk=Chunk("job", i, start, min(start + size, total))))
        for i, start in enumerate(range(0, total, size))
    ]


def ranked_rows(outcomes: list[Outcome], minimise: bool) -> list[dict[str, Any]]:
    rows = [(i, row) for i, o in enumerate(outcomes) for row in o.detail["table"]]
    rows.sort(key=lambda r: (*rank_key(r[1]["objective"], r[1]["equity_final"], minimise), r[0], r[1]["combination"]))
    return [dict(row) for _, row in rows]


@pytest.mark.parametrize("name", list(SPECS))
@pytest.mark.parametrize("size", [1, 4, 7, 1000])
def test_chunks_ranked_together_are_the_single_sweep(catalog: Catalog, name: str, size: int) -> None:
    spec = SPECS[name]
    single = finish(catalog, spec)
    outcomes = chunked(catalog, spec, size)
    rows = ranked_rows(outcomes, spec.minimise)
    assert {r.pop("symbol") for r in rows} == {spec.symbol}
    numbers = [r.pop("combination") for r in rows]
    assert msgspec.json.encode(rows) == msgspec.json.encode(single.detail["table"])
    # Every admissible combination once, numbered by its place in grid order.
    admissible = start_run(spec, catalog).combinations
    assert sorted(numbers) == list(range(len(admissible)))
    assert all(dict(admissible[n]) == row["params"] for n, row in zip(numbers, rows, strict=True))
    # The best chunk (the one holding the first row) has the single task's best run.
    best = next(o for o in outcomes if o.detail["table"][0]["combination"] == numbers[0])
    assert msgspec.json.encode(best.detail["best"]) == msgspec.json.encode(single.detail["best"])
    assert best.summary["best_params"] == single.summary["best_params"]
    assert best.summary["objective"] == spec.objective == best.detail["objective"]
    assert best.summary["rank"] == {
        "objective": single.detail["table"][0]["objective"],
        "bankrupt": single.detail["table"][0]["equity_final"] <= 0,
    }


def test_a_minimised_objective_ranks_the_lowest_first(catalog: Catalog) -> None:
    table = finish(catalog, SPECS["-drawdown"]).detail["table"]
    values = [r["objective"] for r in table if r["objective"] is not None and r["equity_final"] > 0]
    assert values == sorted(values) and len(set(values)) > 3
    assert all(r["objective"] == r["max_drawdown_pct"] for r in table)  # the metric, not negated


def test_a_chunk_row_and_detail_name_their_symbol(catalog: Catalog) -> None:
    spec = msgspec.structs.replace(SPECS["sharpe"], chunk=Chunk("job", 3, 2, 9))
    out = finish(catalog, spec)
    assert out.detail["kind"] == "sweep" and out.detail["symbol"] == "GOOGBT" == out.summary["symbol"]
    assert out.summary["combinations"] == out.detail["combinations"] == 7
    assert sorted(r["combination"] for r in out.detail["table"]) == list(range(2, 9))
    assert list(out.detail["table"][0])[:4] == ["symbol", "combination", "params", "objective"]


def test_a_single_backtest_as_a_chunk_is_a_one_row_sweep(catalog: Catalog) -> None:
    spec = BacktestSpec(strategy="sma_cross", symbol="GOOGBT", params={"fast": 10})
    single = finish(catalog, spec)
    out = finish(catalog, msgspec.structs.replace(spec, chunk=Chunk("job", 0, 0, 1)))
    [row] = out.detail["table"]
    assert row["params"] == {"fast": 10, "slow": 20} and row["combination"] == 0
    assert out.summary["best_params"] == {"fast": 10, "slow": 20}
    assert out.detail["best"]["metrics"] == single.detail["metrics"]
    assert row["objective"] == single.detail["metrics"]["sqn"]


def test_a_chunk_beyond_the_admissible_combinations_is_refused(catalog: Catalog) -> None:
    spec = msgspec.structs.replace(SPECS["sharpe"], chunk=Chunk("job", 0, 5, 500))
    with pytest.raises(SpecError) as e:
        start_run(spec, catalog)
    assert [err.field for err in e.value.errors] == ["chunk"]  # type: ignore[attr-defined]


def test_a_universe_is_not_run_as_one_task(catalog: Catalog) -> None:
    with pytest.raises(SpecError, match="symbols"):
        start_run(BacktestSpec(strategy="sma_cross", symbols=["GOOG", "IBM"]), catalog)


@pytest.mark.parametrize("name", ["sharpe", "bankrupt", "managed"])
def test_a_chunk_resumed_after_every_step_gives_the_uninterrupted_result(catalog: Catalog, name: str) -> None:
    spec = msgspec.structs.replace(SPECS[name], chunk=Chunk("job", 1, 1, 6))
    expected = finish(catalog, spec)
    run = start_run(spec, catalog)
    resumes = 0
    while not run.done:
        run.advance(0.0)
        checkpoint = run.checkpoint()
        if run.done or (checkpoint.kernel is not None and checkpoint.kernel.done):
            continue  # settlement and statistics are redone after a resume, not saved
        saved = msgspec.json.encode(checkpoint)
        run = resume_run(spec, catalog, msgspec.json.decode(saved, type=Checkpoint))
        resumes += 1
    assert resumes >= 1
    assert msgspec.json.encode(run.outcome()) == msgspec.json.encode(expected)


def test_a_checkpoint_of_another_chunk_is_refused(catalog: Catalog) -> None:
    first = msgspec.structs.replace(SPECS["sharpe"], chunk=Chunk("job", 0, 0, 5))
    run = start_run(first, catalog)
    run.advance(0.0)
    other = msgspec.structs.replace(first, chunk=Chunk("job", 1, 5, 10))
    with pytest.raises(Exception, match="another request"):
        resume_run(other, catalog, run.checkpoint())
