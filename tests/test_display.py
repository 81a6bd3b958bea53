"""The one formatter, in each surface's style: what the terminal, the sweep table and the
dashboard show for the same values (each byte as those surfaces wrote it before they shared it)."""

from __future__ import annotations

import pytest

from orchestrator.domain.display import TABLE, TEXT, WEB, event_fields, fmt, param_text, params_text


@pytest.mark.parametrize(
    ("value", "text", "web", "table"),
    [
        (None, "-", "—", "-"),
        (float("nan"), "-", "—", "-"),
        (True, "True", "yes", "True"),
        (0.0, "0", "0.00", "0.00"),
        (0.5, "0.5", "0.5", "0.50"),
        (0.0001234567, "0.0001235", "0.0001235", "0.0001235"),
        (168.2, "168.2", "168.20", "168.20"),
        (1234.5, "1,234.50", "1,234.50", "1,234.50"),
        (12, "12", "12", "12"),
        ([5, 10], "[5, 10]", "[5, 10]", "[5, 10]"),
    ],
)
def test_each_surface_writes_values_its_own_way(value: object, text: str, web: str, table: str) -> None:
    assert (fmt(value, TEXT), fmt(value, WEB), fmt(value, TABLE)) == (text, web, table)


def test_parameters_and_sweeps() -> None:
    params = {"fast": [5, 10, 20], "slow": list(range(30, 110, 10)), "k": 2.5}
    assert params_text(params) == "fast=5,10,20 slow=30,40,…,100 (8 values) k=2.5"
    assert params_text(params, WEB) == "fast=[5, 10, 20], slow=30, 40, …, 100 (8 values: a sweep), k=2.50"
    assert param_text(list(range(7)), WEB) == "0, 1, …, 6 (7 values: a sweep)"


def test_the_fields_of_an_event_summary() -> None:
    submitted = {"type": "submitted", "data": {"spec": {"strategy": "sma_cross", "symbol": "GOOG"}, "by": "alice"}}
    fields = event_fields(submitted)
    assert fields.request == {"strategy": "sma_cross", "symbol": "GOOG", "params": {}}
    assert fields.rest == {"by": "alice"} and fields.outcome == fields.headline == {}
    result = {"kind": "sweep", "metrics": {"sharpe": 1.5, "max_drawdown_pct": -3.0, "num_trades": 4}}
    fields = event_fields({"type": "completed", "data": {"result": result, "result_ref": None}})
    assert fields.outcome == {"kind": "sweep"} and fields.headline == {"sharpe": 1.5, "num_trades": 4}
    assert fields.rest == {"result_ref": None} and fields.request == {}
