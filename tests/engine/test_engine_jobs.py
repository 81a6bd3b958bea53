"""Jobs: validating universes, directions, tolerances and chunks; planning a job's chunks; ranking."""

from __future__ import annotations

import datetime as dt
import math
from typing import Any

import msgspec
import pytest

from consumers.engine import jobs
from consumers.engine.datasets import Catalog
from consumers.engine.errors import SpecError
from consumers.engine.sweep import SweepRow, ranked
from consumers.engine.validation import check_spec, with_dataset_name
from orchestrator.domain.ranking import rank_key, score
from orchestrator.domain.spec import BacktestSpec, Chunk, ParamValue

BASE: dict[str, Any] = {"strategy": "sma_cross", "symbol": "GOOG", "params": {"fast": 10, "slow": 20}}


def errors(catalog: Catalog, system: bool = False, **kw: Any) -> list[tuple[str, str]]:
    spec = BacktestSpec(**{**BASE, **kw})
    return [(e.field, e.message) for e in check_spec(spec, catalog, system=system)]


def fields(catalog: Catalog, system: bool = False, **kw: Any) -> list[str]:
    return [f for f, _ in errors(catalog, system, **kw)]


def test_valid_jobs_have_no_errors(catalog: Catalog) -> None:
    assert fields(catalog, symbol="", symbols=["GOOG", "ibm", "GOOGBT"]) == []
    assert fields(catalog, symbol="", symbols="*") == []
    assert fields(catalog, objective="-max_drawdown_pct") == []
    assert fields(catalog, objective="-max_drawdown_pct", direction="min") == []
    assert fields(catalog, objective="calmar", direction="min") == []
    assert fields(catalog, failure_tolerance=0.25) == []
    assert fields(catalog, system=True, chunk=Chunk("t", 0, 0, 1)) == []


@pytest.mark.parametrize(
    ("kw", "expected"),
    [
        ({"symbol": ""}, ["symbol"]),
        ({"symbols": ["IBM"]}, ["symbols"]),  # both symbol and symbols
        ({"symbol": "", "symbols": []}, ["symbols"]),
        ({"symbol": "", "symbols": "all"}, ["symbols"]),
        ({"symbol": "", "symbols": ["GOOG", "NOPE"]}, ["symbols[1]"]),
        ({"symbol": "", "symbols": ["GOOG", " x "]}, ["symbols[1]"]),
        ({"symbol": "", "symbols": ["GOOG", "IBM", "goog"]}, ["symbols[2]"]),
        # GOOG's data starts in 2004: the other symbols' data covers the date.
        ({"symbol": "", "symbols": ["IBM", "GOOG"], "start": dt.date(2001, 1, 2)}, ["symbols[1]"]),
        # FB has 196 bars: too few for a 150-bar slow average from its start.
        ({"symbol": "", "symbols": ["FB", "IBM"], "params": {"fast": 10, "slow": 200}}, ["symbols[0]"]),
        ({"symbol": "", "symbols": ["FB", "IBM"], "params": {"fast": 30}}, ["params.fast"]),
        ({"objective": "-happiness"}, ["objective"]),
        ({"objective": "-sqn", "direction": "max"}, ["direction"]),
        ({"failure_tolerance": 1.0}, ["failure_tolerance"]),
        ({"failure_tolerance": -0.1}, ["failure_tolerance"]),
        ({"failure_tolerance": math.nan}, ["failure_tolerance"]),
        ({"chunk": Chunk("t", 0, 0, 1)}, ["chunk"]),
    ],
)
def test_job_errors_point_at_the_field(catalog: Catalog, kw: dict[str, Any], expected: list[str]) -> None:
    assert fields(catalog, **kw) == expected


def test_job_messages_say_what_to_do(catalog: Catalog) -> None:
    [(_, message)] = errors(catalog, symbol="", symbols=["IBM", "GOOG"], start=dt.date(2001, 1, 2))
    assert message.startswith("start (GOOG): 2001-01-02 is before the first bar")
    [(_, message)] = errors(catalog, symbol="", symbols=["GOOG", "IBM", "goog"])
    assert message == "repeats symbols[0] (GOOG)"
    [(_, message)] = errors(catalog, symbol="", symbols=["GOOG", "NOPE"])
    assert message.startswith("unknown symbol 'NOPE'; available: AAPL")
    [(_, message)] = errors(catalog, chunk=Chunk("t", 0, 0, 1))
    assert "set by the system" in message
    [(_, message)] = errors(catalog, objective="-happiness")
    assert message.startswith("unknown metric 'happiness'")


def test_every_dataset_is_checked_for_a_universe_of_all(catalog: Catalog) -> None:
    # Too few bars in every dataset covering the range; the range is outside ROCKET's data.
    found = errors(catalog, symbol="", symbols="*", start=dt.date(2012, 6, 1), end=dt.date(2012, 6, 20))
    assert {f for f, _ in found} == {"symbols"}
    assert {m.split(":")[0] for _, m in found} == {
        *(f"start ({s})" for s in ("AAPL", "FB", "GOOG", "GOOGBT", "IBM", "MSFT")),
        "start (ROCKET)",
        "end (ROCKET)",
    }


def test_a_chunk_the_system_sets_is_checked(catalog: Catalog) -> None:
    assert fields(catalog, system=True, chunk=Chunk("t", 0, 3, 3)) == ["chunk"]
    assert fields(catalog, system=True, chunk=Chunk("t", -1, 0, 3)) == ["chunk"]


def test_with_dataset_name_spells_every_symbol_of_a_universe(catalog: Catalog) -> None:
    spec = BacktestSpec(strategy="sma_cross", symbols=["goog", "Ibm", "nope", "googbt"])
    assert with_dataset_name(spec, catalog).symbols == ["GOOG", "IBM", "nope", "GOOGBT"]
    every = BacktestSpec(strategy="sma_cross", symbols="*")
    assert with_dataset_name(every, catalog) is every


def test_rank_key_orders_as_the_sweep_always_did() -> None:
    assert score(None, True) is None and score(2.0, True) == -2.0 and score(2.0, False) == 2.0
    rows = [(1.0, 0.0), (None, 50.0), (3.0, 100.0), (-5.0, 100.0), (3.0, 90.0), (None, -1.0)]
    top = sorted(range(len(rows)), key=lambda i: rank_key(*rows[i], minimise=False))
    assert top == [2, 4, 3, 1, 0, 5]  # bankrupt last whatever the objective; ties in the given order
    low = sorted(range(len(rows)), key=lambda i: rank_key(*rows[i], minimise=True))
    assert low == [3, 2, 4, 1, 0, 5]
    sweep_rows = [SweepRow({"x": i}, o, {"equity_final": e}) for i, (o, e) in enumerate(rows)]
    assert [r.params["x"] for r in ranked(sweep_rows)] == top
    assert [r.params["x"] for r in ranked(sweep_rows, minimise=True)] == low


GRID: dict[str, ParamValue] = {"fast": list(range(2, 12)), "slow": list(range(20, 40))}


def test_a_single_backtest_and_a_small_sweep_are_not_jobs(catalog: Catalog) -> None:
    assert jobs.plan_job(BacktestSpec(**BASE), catalog) is None
    assert jobs.plan_job(BacktestSpec(**{**BASE, "params": GRID}), catalog) is None


def test_a_sweep_longer_than_a_chunk_is_cut_in_grid_order(catalog: Catalog) -> None:
    # The interpreted path (an objective the compiled path does not compute): ~0.6 ms a combination.
    grid = {"fast": list(range(2, 52)), "slow": list(range(60, 80))}
    spec = BacktestSpec(**{**BASE, "params": grid, "objective": "calmar"})
    plan = jobs.plan_job(spec, catalog)
    assert plan is not None and plan.symbols == ["GOOG"] and plan.combinations == 1000
    assert plan.per_chunk == int(jobs.CHUNK_TARGET_SECONDS / (jobs.INTERPRETED_SECONDS_PER_BAR * 2148))
    sizes = [s.stop - s.start for s in plan.spans]
    assert len(sizes) == -(-1000 // plan.per_chunk) > 1 and max(sizes) - min(sizes) <= 1 <= min(sizes)
    assert max(sizes) <= plan.per_chunk
    assert [(s.start, s.stop) for s in plan.spans] == list(
        zip([0, *[s.stop for s in plan.spans[:-1]]], [s.stop for s in plan.spans], strict=True)
    )
    assert plan.spans[-1].stop == 1000
    # The compiled path's chunks are larger: the same grid is one chunk, so one task.
    assert jobs.plan_job(msgspec.structs.replace(spec, objective="sharpe"), catalog) is None


def test_a_universe_is_always_a_job(catalog: Catalog) -> None:
    spec = BacktestSpec(strategy="sma_cross", symbols=["ibm", "GOOG"], params={"fast": 10, "slow": 20})
    plan = jobs.plan_job(spec, catalog)
    assert plan == jobs.JobPlan(
        symbols=["IBM", "GOOG"],
        spans=[jobs.Span("IBM", 0, 1), jobs.Span("GOOG", 0, 1)],
        combinations=2,
        per_chunk=plan.per_chunk if plan else 0,
    )
    every = jobs.plan_job(msgspec.structs.replace(spec, symbols="*", params=GRID), catalog)
    assert every is not None and every.symbols == catalog.symbols() == sorted(every.symbols)
    assert [s.symbol for s in every.spans] == every.symbols  # each grid fits one chunk
    assert every.combinations == sum(s.stop - s.start for s in every.spans)


def test_chunk_spec_is_the_job_on_one_span(catalog: Catalog) -> None:
    spec = BacktestSpec(
        strategy="sma_cross", symbols=["IBM", "GOOG"], params=GRID, objective="-calmar", failure_tolerance=0.5
    )
    plan = jobs.plan_job(spec, catalog)
    assert plan is not None
    last = len(plan.spans) - 1
    chunk = jobs.chunk_spec(spec, plan, last, "0123-job")
    span = plan.spans[last]
    assert chunk.symbol == "GOOG" == span.symbol and chunk.symbols is None
    assert chunk.chunk == Chunk("0123-job", last, span.start, span.stop)
    assert msgspec.structs.replace(chunk, symbol="", symbols=spec.symbols, chunk=None) == spec
    assert check_spec(chunk, catalog, system=True) == []
    with pytest.raises(IndexError):
        jobs.chunk_spec(spec, plan, last + 1, "0123-job")


def test_a_bad_job_is_refused_when_planned(catalog: Catalog) -> None:
    with pytest.raises(SpecError, match=r"symbols\[1\]"):
        jobs.plan_job(BacktestSpec(strategy="sma_cross", symbols=["GOOG", "NOPE"]), catalog)


def test_a_job_is_cut_into_at_most_max_chunks(catalog: Catalog) -> None:
    # At a target of a nanosecond every combination would be a chunk: 4 x 9,600 of them. The
    # chunks grow instead, so that the fan-out (one script) stays small.
    grid: dict[str, ParamValue] = {"fast": list(range(2, 98)), "slow": list(range(100, 200))}
    spec = BacktestSpec(strategy="sma_cross", symbols=["AAPL", "GOOG", "IBM", "MSFT"], params=grid)
    plan = jobs.plan_job(spec, catalog, target_seconds=1e-9)
    assert plan is not None and plan.combinations == 4 * 9_600
    assert len(plan.spans) <= jobs.MAX_CHUNKS and sum(s.stop - s.start for s in plan.spans) == plan.combinations
