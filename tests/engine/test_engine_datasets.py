"""Bundled and user datasets: listing, caching, and validation errors that name file and row."""

from __future__ import annotations

import csv
import datetime as dt
import gzip
import hashlib
import struct
from pathlib import Path
from typing import Any

import pytest

import consumers.engine
from consumers.engine.datasets import BUNDLED_PATH, Catalog, DatasetError, DatasetInfo, bars_sha256
from consumers.engine.errors import InvalidSymbolError

HEADER = "Date,Open,High,Low,Close,Volume\n"
GOOD = HEADER + "2020-01-02,10,11,9,10.5,100\n2020-01-03,10.5,11,10,10.8,120\n2020-01-06,10.8,11.2,10.1,11,90\n"


def test_bundled_symbols_with_date_ranges() -> None:
    infos = {d.symbol: d for d in Catalog.from_env_dir(None).datasets()}
    assert set(infos) == {"AAPL", "FB", "GOOG", "IBM", "MSFT"}
    assert infos["GOOG"] == DatasetInfo(
        "GOOG", dt.date(2004, 8, 19), dt.date(2013, 3, 1), 2148, "bundled", adjustable=True
    )
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


ADJ = (
    "Date,Open,High,Low,Close,Volume,Adj Close\n"
    "2020-01-02,100,110,90,100,1000,50\n"
    "2020-01-03,52,56,48,50,3000,50\n"
    "2020-01-06,51,53,49,52,2000,51.48\n"
)


def test_user_csv_with_adj_close_is_adjusted_by_default(tmp_path: Path) -> None:
    (tmp_path / "ADJ.csv").write_text(ADJ.replace("Adj Close", "adj close"))
    catalog = Catalog.from_env_dir(str(tmp_path))
    assert [d.adjustable for d in catalog.datasets() if d.symbol == "ADJ"] == [True]
    raw = catalog.load("ADJ")
    bars, reason = raw.prices(adjusted=True)
    assert reason is None and bars.adjusted
    # f = Adj Close / Close per bar: 0.5, 1, 0.99. Prices times f, Close = Adj Close, Volume over f.
    assert bars.open.tolist() == [50.0, 52.0, 51 * (51.48 / 52)]
    assert bars.high.tolist() == [55.0, 56.0, 53 * (51.48 / 52)]
    assert bars.low.tolist() == [45.0, 48.0, 49 * (51.48 / 52)]
    assert bars.close.tolist() == [50.0, 50.0, 51.48]
    assert bars.volume.tolist() == [2000.0, 3000.0, 2000 / (51.48 / 52)]
    assert raw.close.tolist() == [100.0, 50.0, 52.0] and not raw.adjusted
    assert raw.prices(adjusted=False) == (raw, "not_requested")
    assert raw.prices(adjusted=True)[0] is bars  # made once
    part = bars.between(dt.date(2020, 1, 3), None)
    assert part.adjusted and part.close.tolist() == [50.0, 51.48]


def test_data_without_adj_close_is_used_as_it_is(tmp_path: Path) -> None:
    (tmp_path / "RAW.csv").write_text(GOOD)
    raw = Catalog.from_env_dir(str(tmp_path)).load("RAW")
    bars, reason = raw.prices(adjusted=True)
    assert bars is raw and reason == "no_adj_close_column" and not bars.adjusted
    assert bars.provenance(reason).not_adjusted_reason == "no_adj_close_column"


@pytest.mark.parametrize(
    ("row", "expected"),
    [("2020-01-07,1,1,1,1,1,0", "Adj Close must be positive"), ("2020-01-07,1,1,1,1,1,", "Adj Close '' is not")],
)
def test_bad_adj_close_names_the_row(tmp_path: Path, row: str, expected: str) -> None:
    (tmp_path / "ADJ.csv").write_text(ADJ + row + "\n")
    with pytest.raises(DatasetError, match="ADJ.csv row 5: " + expected):
        Catalog.from_env_dir(str(tmp_path)).load("ADJ")


def test_bundled_data_is_adjusted_across_the_aapl_split() -> None:
    raw = Catalog.from_env_dir(None).load("AAPL").between(dt.date(2005, 2, 25), dt.date(2005, 2, 28))
    assert raw.close.tolist() == [88.99, 44.86]  # the 2:1 split of 2005-02-28, unadjusted
    bars, _ = raw.prices(adjusted=True)
    assert bars.close.tolist() == [5.7182276557615, 5.7651352430039]  # the Adj Close column


def test_sha256_follows_the_documented_bytes(tmp_path: Path) -> None:
    """Recomputed as STRATEGIES.md tells a user to: struct-packed rows, not the engine's numpy code."""
    (tmp_path / "ADJ.csv").write_text(ADJ)
    raw = Catalog.from_env_dir(str(tmp_path)).load("ADJ")
    for adjusted in (True, False):
        bars, reason = raw.prices(adjusted)
        packed = b"".join(
            struct.pack("<q5d", (dt.date.fromisoformat(d) - dt.date(1970, 1, 1)).days, o, h, lo, c, v)
            for d, o, h, lo, c, v in zip(
                bars.day_strings.tolist(),
                bars.open.tolist(),
                bars.high.tolist(),
                bars.low.tolist(),
                bars.close.tolist(),
                bars.volume.tolist(),
                strict=True,
            )
        )
        record = bars.provenance(reason)
        assert record.sha256 == hashlib.sha256(packed).hexdigest() == bars_sha256(bars)
        assert (record.first_bar, record.last_bar, record.bars) == (dt.date(2020, 1, 2), dt.date(2020, 1, 6), 3)
        assert record.adjusted is adjusted and record.symbol == "ADJ" and record.source == "user"
    assert raw.prices(True)[0].provenance(None).sha256 != raw.provenance("not_requested").sha256


def test_symbols_match_ascii_case_insensitively_under_the_datasets_name() -> None:
    catalog = Catalog.from_env_dir(None)
    assert catalog.load("aapl").symbol == "AAPL" and catalog.load("aApL") is catalog.load("AAPL")


@pytest.mark.parametrize(
    "symbol", ["  IBM  ", "IBM ", "I BM", "ıbm", "\u0130BM", "ＩＢＭ", "", "IBM\n", "../IBM", "A" * 33]
)
def test_symbols_outside_the_rule_are_refused(symbol: str) -> None:
    with pytest.raises(InvalidSymbolError, match="is not a symbol: use 1 to 32 ASCII"):
        Catalog.from_env_dir(None).load(symbol)


def test_user_file_names_follow_the_symbol_rule(tmp_path: Path) -> None:
    for name in ("ıbm.csv", "my data.csv", "dup.csv", "DUP.csv", "ok.csv"):
        (tmp_path / name).write_text(GOOD)
    catalog = Catalog.from_env_dir(str(tmp_path))
    listed = {d.symbol for d in catalog.datasets()}
    assert "OK" in listed and "IBM" in listed and not listed & {"DUP", "ıBM", "MY DATA"}
    assert catalog.load("IBM").source == "bundled"  # ıbm.csv does not override IBM
    problems = {p.symbol: p.message for p in catalog.problems()}
    assert set(problems) == {"ıbm.csv", "my data.csv", "DUP"}
    assert "not a symbol" in problems["my data.csv"] and "DUP.csv and dup.csv both name DUP" in problems["DUP"]
    with pytest.raises(DatasetError, match="both name DUP"):
        catalog.load("dup")


def test_the_documented_recipe_recomputes_the_digest_of_bundled_bars() -> None:
    """STRATEGIES.md's code, run as written on the bundled CSV's rows, gives the engine's digest."""
    doc = (Path(consumers.engine.__file__).parent / "STRATEGIES.md").read_text()
    recipe = doc.split("**Provenance**", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    namespace: dict[str, Any] = {}
    exec(recipe, namespace)  # noqa: S102 - our own documentation, checked to stay true
    with gzip.open(BUNDLED_PATH, "rt") as f:
        rows = [r for r in csv.DictReader(f) if r["Ticker"] == "MSFT" and "2003-01-01" <= r["Date"] <= "2003-03-31"]
    raw = Catalog.from_env_dir(None).load("MSFT")
    for adjusted in (True, False):
        bars, reason = raw.prices(adjusted)
        record = bars.between(dt.date(2003, 1, 1), dt.date(2003, 3, 31)).provenance(reason)
        assert record.bars == len(rows) == 61
        assert record.sha256 == namespace["bars_sha256"](rows, adjusted)
