"""Sweeps: the same admissible grid, objective values and best parameters as Backtest.optimize()."""

from __future__ import annotations

import math
import warnings
from typing import Any

import bt_oracle
import pandas as pd
import pytest

from consumers.engine.constraints import Constraint, ConstraintError
from consumers.engine.datasets import Catalog
from consumers.engine.fast_sweep import BATCH
from consumers.engine.metrics import BACKTESTING_PY_NAMES
from consumers.engine.runner import start_run
from orchestrator.domain.spec import BacktestSpec


def run_sweep(catalog: Catalog, spec: BacktestSpec) -> tuple[dict[str, Any], dict[str, Any], list[float]]:
    run = start_run(spec, catalog)
    seen = []
    while not run.done:
        run.advance(0.0)
        seen.append(run.progress)
    out = run.outcome()
    return out.summary, out.detail, seen


def optimize(catalog: Catalog, spec: BacktestSpec, constraint: Any) -> tuple[pd.Series, pd.Series]:
    bars = bt_oracle.bars_of(catalog, spec)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return bt_oracle.backtest(bars, spec).optimize(  # type: ignore[no-any-return]
            maximize=BACKTESTING_PY_NAMES[spec.objective],
            constraint=constraint,
            return_heatmap=True,
            **{k: v if isinstance(v, list) else [v] for k, v in spec.params.items()},
            long_only=[spec.long_only],
        )


@pytest.mark.parametrize(
    ("spec", "constraint"),
    [
        (
            BacktestSpec(
                strategy="sma_cross",
                symbol="GOOGBT",
                params={"fast": [5, 10, 15, 20], "slow": [20, 40, 60, 80, 100]},
                constraint="fast < slow",
                commission=0.002,
            ),
            lambda p: p.fast < p.slow,
        ),
        (
            BacktestSpec(
                strategy="rsi",
                symbol="MSFT",
                params={"period": [5, 14], "lower": [20, 30], "upper": 70},
                objective="return_pct",
            ),
            None,
        ),
    ],
)
def test_sweep_matches_optimize(catalog: Catalog, spec: BacktestSpec, constraint: Any) -> None:
    stats, heatmap = optimize(catalog, spec, constraint)
    summary, detail, progress = run_sweep(catalog, spec)

    # Bounded steps: at least one per batch of the fast path (fast_sweep.BATCH combinations).
    assert progress == sorted(progress) and len(progress) >= math.ceil(detail["combinations"] / BATCH)
    assert detail["combinations"] == len(heatmap) == summary["combinations"]
    names = list(spec.params)
    for row in detail["table"]:
        theirs = heatmap[tuple([row["params"][n] for n in names] + [spec.long_only])]
        if math.isnan(theirs):
            assert row["objective"] is None
        else:
            assert math.isclose(row["objective"], theirs, rel_tol=1e-9)
    best = {n: getattr(stats._strategy, n) for n in names}
    assert summary["best_params"] == best
    assert detail["table"][0]["params"] == best
    values = [r["objective"] for r in detail["table"] if r["objective"] is not None]
    assert values == sorted(values, reverse=True)
    assert bt_oracle.metric_mismatches(detail["best"]["metrics"], stats) == {}
    assert summary["metrics"].items() <= detail["best"]["metrics"].items()
    assert detail["best"]["params"] == best
    # A sweep records the bars it ran on like a single backtest: GOOGBT has no Adj Close column.
    bars = bt_oracle.bars_of(catalog, spec)
    assert summary["data"] == detail["data"]
    assert (summary["data"]["symbol"], summary["data"]["bars"]) == (spec.symbol, len(bars))
    assert summary["data"]["adjusted"] is (spec.symbol != "GOOGBT")
    assert summary["data"]["not_adjusted_reason"] == (None if spec.symbol != "GOOGBT" else "no_adj_close_column")


def test_constraint_grammar() -> None:
    c = Constraint("fast < slow and not (slow - fast) % 20 == 0 or fast * 2 == slow", ["fast", "slow"])
    assert c({"fast": 5, "slow": 10}) and c({"fast": 5, "slow": 20}) and not c({"fast": 10, "slow": 30})
    assert not Constraint("fast / (slow - 20) > 0", ["fast", "slow"])({"fast": 1, "slow": 20})
    for bad in ("fast.real < 2", "open('x')", "[fast]", "fast if slow else 1", "lambda: 1", "'a' < 'b'"):
        with pytest.raises(ConstraintError):
            Constraint(bad, ["fast", "slow"])


@pytest.mark.parametrize(
    "text",
    ["2 < fast <= slow - 3 < 40", "-fast + slow >= 10 and not fast == 7", "+fast % 3 != 0 or slow > 2 * fast"],
)
def test_constraint_agrees_with_python(text: str) -> None:
    # Python itself is the oracle for these trusted test strings: chains, unary signs, precedence.
    check = Constraint(text, ["fast", "slow"])
    for fast in range(1, 30):
        for slow in range(1, 45):
            params = {"fast": fast, "slow": slow}
            assert check(params) == eval(text, {}, params), params  # noqa: S307
