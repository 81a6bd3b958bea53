"""Bundled and user datasets: listing, caching, and validation errors that name file and row."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from consumers.engine.datasets import Catalog, DatasetError, DatasetInfo

HEADER = "Date,Open,High,Low,Close,Volume\n"
GOOD = HEADER + "2020-01-02,10,11,9,10.5,100\n2020-01-03,10.5,11,10,10.8,120\n2020-01-06,10.8,11.2,10.1,11,90\n"


def test_bundled_symbols_with_date_ranges() -> None:
    infos = {d.symbol: d for d in Catalog.from_env_dir(None).datasets()}
    assert set(infos) == {"AAPL", "FB", "GOOG", "IBM", "MSFT"}
    assert infos["GOOG"] == DatasetInfo("GOOG", dt.date(2004, 8, 19), dt.date(2013, 3, 1), 2148, "bundled")
    assert infos["AAPL"].rows == 3270


def test_user_files_are_listed_and_override_bundled(tmp_path: Path) -> None:
    (tmp_path / "mine.csv").write_text(GOOD.replace("Date,Open", "date,OPEN"))
    (tmp_path / "IBM.csv").write_text(GOOD)
    catalog = Catalog.from_env_dir(str(tmp_path))
    infos = {d.symbol: d for d in catalog.datasets()}
    assert infos["MINE"] == DatasetInfo("MINE", dt.date(2020, 1, 2), dt.date(2020, 1, 6), 3, "user")
    assert infos["IBM"].source == "user"
    assert catalog.load("mine").close.tolist() == [10.5, 10.8, 11.0]


def test_loading_is_cached(tmp_path: Path) -> None:
    (tmp_path / "X.csv").write_text(GOOD)
    catalog = Catalog.from_env_dir(str(tmp_path))
    assert catalog.load("X") is catalog.load("x")
    assert catalog.load("GOOG") is catalog.load("GOOG")
    assert not catalog.load("GOOG").close.flags.writeable


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("Date,Open,High,Close,Volume\n2020-01-02,1,1,1,1\n", "missing column(s) Low"),
        (GOOD + "2020-01-03,10,11,9,10.5,100\n", "row 5: date out of order"),
        (GOOD + "2020-01-06,10,11,9,10.5,100\n", "row 5: duplicate date"),
        (HEADER + "2020-01-02,10,11,9,-1,100\n", "row 2: Close must be positive"),
        (HEADER + "2020-01-02,0,11,9,1,100\n", "row 2: Open must be positive"),
        (HEADER + "2020-01-02,10,11,NaN,10,100\n", "row 2: Low is 'NaN'"),
        (HEADER + "2020-01-02,10,11,9,,100\n", "row 2: Close '' is not a number"),
        (HEADER + "02/01/2020,10,11,9,10,100\n", "row 2: Date '02/01/2020' is not a date"),
        (HEADER, "no data rows"),
        ("", "empty file"),
    ],
)
def test_invalid_files_name_file_and_row(tmp_path: Path, content: str, expected: str) -> None:
    (tmp_path / "BAD.csv").write_text(content)
    catalog = Catalog.from_env_dir(str(tmp_path))
    with pytest.raises(DatasetError, match="BAD.csv") as info:
        catalog.load("BAD")
    assert expected in str(info.value)
    assert info.value.retryable is False


def test_broken_file_does_not_break_listing(tmp_path: Path) -> None:
    (tmp_path / "OK.csv").write_text(GOOD)
    (tmp_path / "BAD.csv").write_text(HEADER + "2020-01-02,10,11,9,-1,100\n")
    catalog = Catalog.from_env_dir(str(tmp_path))
    symbols = [d.symbol for d in catalog.datasets()]
    assert "OK" in symbols and "BAD" not in symbols
    [problem] = catalog.problems()
    assert problem.symbol == "BAD" and "row 2" in problem.message


def test_fixed_file_is_reloaded(tmp_path: Path) -> None:
    path = tmp_path / "FIX.csv"
    path.write_text(HEADER + "2020-01-02,10,11,9,-1,100\n")
    catalog = Catalog.from_env_dir(str(tmp_path))
    assert catalog.problems()
    path.write_text(GOOD)
    assert catalog.load("FIX").close.shape == (3,)
    assert catalog.problems() == []
