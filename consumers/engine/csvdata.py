"""Reading market data files: the user's `SYMBOL.csv` and the bundled multi-symbol file, each
row checked (dates ascending, prices positive and finite), with errors that name file and row."""

from __future__ import annotations

import csv
import datetime as dt
import gzip
import io
import re
from pathlib import Path
from typing import NotRequired, TypedDict

import numpy as np
import numpy.typing as npt

from consumers.engine.bars import Bars, FloatArray
from consumers.engine.errors import DatasetError, DataUnavailable, InvalidSymbolError

BUNDLED_PATH = Path(__file__).with_name("data") / "stocks.csv.gz"
COLUMNS = ("Date", "Open", "High", "Low", "Close", "Volume")
PRICE_COLUMNS = ("Open", "High", "Low", "Close")
# Optional: the source's split- and dividend-adjusted close (see STRATEGIES.md "Data").
ADJ_CLOSE = "Adj Close"

# A symbol is plain ASCII, so that matching it case-insensitively is one unambiguous rule
# (Unicode case folding maps "ı" and "I" together, and fullwidth letters look like ASCII ones).
# It is also a file name (`SYMBOL.csv`), hence no leading dot and no separators.
SYMBOL_PATTERN = re.compile(r"[A-Za-z0-9^_=-][A-Za-z0-9.^_=-]{0,31}")
SYMBOL_RULE = "1 to 32 ASCII letters, digits or . ^ _ = - (not starting with .), without spaces"


def check_symbol(symbol: str) -> str:
    """The lookup key of `symbol`: the text upper-cased, after checking it follows SYMBOL_RULE.

    Matching is case-insensitive over ASCII only. Raises InvalidSymbolError (surrounding or inner
    whitespace, non-ASCII letters such as a dotless "ı", an empty or overlong name).
    """
    if not SYMBOL_PATTERN.fullmatch(symbol):
        raise InvalidSymbolError(f"{symbol!r} is not a symbol: use {SYMBOL_RULE}")
    return symbol.upper()


class _Columns(TypedDict):
    """The parsed columns of one symbol, named as Bars' fields (adj_close only when the file has it)."""

    dates: npt.NDArray[np.datetime64]
    open: FloatArray
    high: FloatArray
    low: FloatArray
    close: FloatArray
    volume: FloatArray
    adj_close: NotRequired[FloatArray]


def _parse_rows(rows: list[tuple[int, list[str]]], index: dict[str, int], name: str) -> _Columns:
    """Parse and check rows of one symbol; `rows` carries each row's line number for messages.

    `index` maps each column to parse to its position; Adj Close is parsed when it is there.
    """
    n = len(rows)
    if n == 0:
        raise DatasetError(f"{name}: no data rows", path=name)
    numeric = [c for c in (*COLUMNS[1:], ADJ_CLOSE) if c in index]
    dates = np.empty(n, dtype="datetime64[D]")
    cols = {c: np.empty(n, dtype=np.float64) for c in numeric}
    previous: dt.date | None = None
    for k, (line, row) in enumerate(rows):
        try:
            raw = row[index["Date"]].strip()
            day = dt.date.fromisoformat(raw)
        except (ValueError, IndexError):
            cell = row[index["Date"]] if index["Date"] < len(row) else ""
            raise DatasetError(
                f"{name} row {line}: Date {cell!r} is not a date like 2013-03-01", path=name, row=line
            ) from None
        if previous is not None and day <= previous:
            what = "duplicate date" if day == previous else "date out of order (dates must ascend)"
            raise DatasetError(f"{name} row {line}: {what}: {day} after {previous}", path=name, row=line)
        previous = day
        dates[k] = np.datetime64(day, "D")
        for col in numeric:
            cell = row[index[col]].strip() if index[col] < len(row) else ""
            try:
                value = float(cell)
            except ValueError:
                raise DatasetError(f"{name} row {line}: {col} {cell!r} is not a number", path=name, row=line) from None
            if value != value or value in (float("inf"), float("-inf")):
                raise DatasetError(f"{name} row {line}: {col} is {cell!r} (NaN or infinite)", path=name, row=line)
            if (col in PRICE_COLUMNS or col == ADJ_CLOSE) and value <= 0:
                raise DatasetError(f"{name} row {line}: {col} must be positive, is {value}", path=name, row=line)
            if col == "Volume" and value < 0:
                raise DatasetError(f"{name} row {line}: Volume must not be negative, is {value}", path=name, row=line)
            cols[col][k] = value
    for arr in (dates, *cols.values()):
        arr.flags.writeable = False
    parsed = _Columns(
        dates=dates, open=cols["Open"], high=cols["High"], low=cols["Low"], close=cols["Close"], volume=cols["Volume"]
    )
    if ADJ_CLOSE in cols:
        parsed["adj_close"] = cols[ADJ_CLOSE]
    return parsed


def _header_index(
    header: list[str], name: str, required: tuple[str, ...], optional: tuple[str, ...] = ()
) -> dict[str, int]:
    """Map required (and those optional present) column names to positions, case-insensitively."""
    folded = {h.strip().lower(): i for i, h in enumerate(header)}
    missing = [c for c in required if c.lower() not in folded]
    if missing:
        raise DatasetError(
            f"{name}: missing column(s) {', '.join(missing)}; need {','.join(required)} (found {','.join(header)})",
            path=name,
            row=1,
        )
    return {c: folded[c.lower()] for c in (*required, *optional) if c.lower() in folded}


def read_user_csv(path: Path) -> Bars:
    """Load and validate one user file `SYMBOL.csv`; raises DatasetError naming file and row.

    The symbol is the file name's stem upper-cased; the caller checks it follows SYMBOL_RULE.
    """
    symbol = path.stem.upper()
    try:
        text = path.read_text(encoding="utf-8-sig")
    except OSError as e:
        raise DataUnavailable(f"{path.name}: cannot read file ({e})", path=str(path)) from e
    except UnicodeDecodeError as e:
        raise DatasetError(f"{path.name}: not UTF-8 text ({e})", path=str(path)) from e
    reader = csv.reader(io.StringIO(text))
    header = next(reader, None)
    if header is None:
        raise DatasetError(f"{path.name}: empty file; need a header {','.join(COLUMNS)}", path=str(path), row=1)
    index = _header_index(header, path.name, COLUMNS, (ADJ_CLOSE,))
    rows = [(line, row) for line, row in enumerate(reader, start=2) if any(c.strip() for c in row)]
    parsed = _parse_rows(rows, index, path.name)
    return Bars(symbol=symbol, source="user", **parsed)


def read_bundled(path: Path = BUNDLED_PATH) -> dict[str, Bars]:
    """Load the bundled multi-symbol file (a `Ticker` column plus OHLCV) into one Bars per symbol."""
    with gzip.open(path, "rt", encoding="utf-8") as f:
        reader = csv.reader(f)
        header = next(reader)
        index = _header_index(header, path.name, ("Ticker", *COLUMNS), (ADJ_CLOSE,))
        by_symbol: dict[str, list[tuple[int, list[str]]]] = {}
        for line, row in enumerate(reader, start=2):
            by_symbol.setdefault(row[index["Ticker"]].strip().upper(), []).append((line, row))
    return {
        sym: Bars(symbol=sym, source="bundled", **_parse_rows(rows, index, f"{path.name} ({sym})"))
        for sym, rows in sorted(by_symbol.items())
    }
