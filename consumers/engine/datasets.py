"""Market data: the bundled sample symbols and the user's CSV directory, validated and cached."""

from __future__ import annotations

import csv
import datetime as dt
import functools
import gzip
import io
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import msgspec
import numpy as np
import numpy.typing as npt
import structlog

from consumers.engine.errors import DatasetError, DataUnavailable, UnknownSymbolError

__all__ = ["Bars", "Catalog", "DatasetError", "DatasetInfo", "DatasetProblem", "BUNDLED_PATH"]

log = structlog.get_logger("backstream.datasets")

BUNDLED_PATH = Path(__file__).with_name("data") / "stocks.csv.gz"
COLUMNS = ("Date", "Open", "High", "Low", "Close", "Volume")
PRICE_COLUMNS = ("Open", "High", "Low", "Close")

FloatArray = npt.NDArray[np.float64]


class DatasetInfo(msgspec.Struct, frozen=True):
    """One symbol the API can offer, with the dates it covers."""

    symbol: str
    start: dt.date
    end: dt.date
    rows: int
    source: Literal["bundled", "user"]


class DatasetProblem(msgspec.Struct, frozen=True):
    """A user file that failed validation: left out of `datasets()`, reported here instead."""

    symbol: str
    path: str
    message: str


@dataclass(frozen=True, eq=False)
class Bars:
    """Validated daily OHLCV arrays of one symbol, oldest first, read-only (they are cached)."""

    symbol: str
    source: str
    dates: npt.NDArray[np.datetime64]
    open: FloatArray
    high: FloatArray
    low: FloatArray
    close: FloatArray
    volume: FloatArray

    def __len__(self) -> int:
        return int(self.dates.shape[0])

    @property
    def start(self) -> dt.date:
        return self.dates[0].astype(dt.date)  # type: ignore[no-any-return]

    @property
    def end(self) -> dt.date:
        return self.dates[-1].astype(dt.date)  # type: ignore[no-any-return]

    @functools.cached_property
    def day_strings(self) -> npt.NDArray[np.str_]:
        """The dates as ISO strings: every result lists them, so a dataset makes them once."""
        return np.datetime_as_string(self.dates, unit="D")

    def between(self, start: dt.date | None, end: dt.date | None) -> Bars:
        """The bars dated within [start, end], both inclusive; None leaves that side open."""
        lo = 0 if start is None else int(np.searchsorted(self.dates, np.datetime64(start, "D"), "left"))
        hi = len(self) if end is None else int(np.searchsorted(self.dates, np.datetime64(end, "D"), "right"))
        if lo == 0 and hi == len(self):
            return self
        part = Bars(
            self.symbol,
            self.source,
            self.dates[lo:hi],
            self.open[lo:hi],
            self.high[lo:hi],
            self.low[lo:hi],
            self.close[lo:hi],
            self.volume[lo:hi],
        )
        vars(part)["day_strings"] = self.day_strings[lo:hi]  # seeds the cached property: made once
        return part


def _parse_rows(rows: list[tuple[int, list[str]]], index: dict[str, int], name: str) -> dict[str, object]:
    """Parse and check rows of one symbol; `rows` carries each row's line number for messages."""
    n = len(rows)
    if n == 0:
        raise DatasetError(f"{name}: no data rows", path=name)
    dates = np.empty(n, dtype="datetime64[D]")
    cols = {c: np.empty(n, dtype=np.float64) for c in COLUMNS[1:]}
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
        for col in COLUMNS[1:]:
            cell = row[index[col]].strip() if index[col] < len(row) else ""
            try:
                value = float(cell)
            except ValueError:
                raise DatasetError(f"{name} row {line}: {col} {cell!r} is not a number", path=name, row=line) from None
            if value != value or value in (float("inf"), float("-inf")):
                raise DatasetError(f"{name} row {line}: {col} is {cell!r} (NaN or infinite)", path=name, row=line)
            if col in PRICE_COLUMNS and value <= 0:
                raise DatasetError(f"{name} row {line}: {col} must be positive, is {value}", path=name, row=line)
            if col == "Volume" and value < 0:
                raise DatasetError(f"{name} row {line}: Volume must not be negative, is {value}", path=name, row=line)
            cols[col][k] = value
    for arr in (dates, *cols.values()):
        arr.flags.writeable = False
    return {"dates": dates, **{c.lower(): a for c, a in cols.items()}}


def _header_index(header: list[str], name: str, required: tuple[str, ...]) -> dict[str, int]:
    """Map required column names to positions, matching headers case-insensitively."""
    folded = {h.strip().lower(): i for i, h in enumerate(header)}
    missing = [c for c in required if c.lower() not in folded]
    if missing:
        raise DatasetError(
            f"{name}: missing column(s) {', '.join(missing)}; need {','.join(required)} (found {','.join(header)})",
            path=name,
            row=1,
        )
    return {c: folded[c.lower()] for c in required}


def read_user_csv(path: Path) -> Bars:
    """Load and validate one user file `SYMBOL.csv`; raises DatasetError naming file and row."""
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
    index = _header_index(header, path.name, COLUMNS)
    rows = [(line, row) for line, row in enumerate(reader, start=2) if any(c.strip() for c in row)]
    parsed = _parse_rows(rows, index, path.name)
    return Bars(symbol=symbol, source="user", **parsed)  # type: ignore[arg-type]


def read_bundled(path: Path = BUNDLED_PATH) -> dict[str, Bars]:
    """Load the bundled multi-symbol file (a `Ticker` column plus OHLCV) into one Bars per symbol."""
    with gzip.open(path, "rt", encoding="utf-8") as f:
        reader = csv.reader(f)
        header = next(reader)
        index = _header_index(header, path.name, ("Ticker", *COLUMNS))
        by_symbol: dict[str, list[tuple[int, list[str]]]] = {}
        for line, row in enumerate(reader, start=2):
            by_symbol.setdefault(row[index["Ticker"]].strip().upper(), []).append((line, row))
    return {
        sym: Bars(symbol=sym, source="bundled", **_parse_rows(rows, index, f"{path.name} ({sym})"))  # type: ignore[arg-type]
        for sym, rows in sorted(by_symbol.items())
    }


class Catalog:
    """The symbols a task may use: bundled ones, overridden by same-named files in the user dir.

    Parsed data is cached per catalog; user files are re-read only when their size or mtime
    changes. A broken user file is left out of `datasets()` and reported by `problems()`.
    """

    def __init__(self, data_dir: Path | None = None, bundled_path: Path = BUNDLED_PATH) -> None:
        self._data_dir = data_dir
        self._bundled_path = bundled_path
        self._bundled: dict[str, Bars] | None = None
        # Worker threads may ask for data at the same moment: the bundled file is parsed once.
        self._bundled_lock = threading.Lock()
        self._user: dict[Path, tuple[tuple[int, int], Bars | DatasetError]] = {}

    @classmethod
    def from_env_dir(cls, data_dir: str | None) -> Catalog:
        """Build from the value of BACKSTREAM_DATA_DIR (read by the caller, at its edge)."""
        return cls(Path(data_dir) if data_dir else None)

    def _bundled_bars(self) -> dict[str, Bars]:
        if self._bundled is None:
            with self._bundled_lock:
                if self._bundled is None:
                    self._bundled = read_bundled(self._bundled_path)
        return self._bundled

    def _user_files(self) -> dict[str, Path]:
        if self._data_dir is None:
            return {}
        if not self._data_dir.is_dir():
            raise DataUnavailable(f"data directory {self._data_dir} does not exist", path=str(self._data_dir))
        return {
            p.stem.upper(): p for p in sorted(self._data_dir.iterdir()) if p.suffix.lower() == ".csv" and p.is_file()
        }

    def _user_entry(self, path: Path) -> Bars | DatasetError:
        try:
            st = path.stat()
        except OSError as e:
            raise DataUnavailable(f"{path.name}: cannot read file ({e})", path=str(path)) from e
        key = (st.st_size, st.st_mtime_ns)
        cached = self._user.get(path)
        if cached is not None and cached[0] == key:
            return cached[1]
        entry: Bars | DatasetError
        try:
            entry = read_user_csv(path)
        except DatasetError as e:
            if e.retryable:
                raise  # unreadable now, perhaps not in a moment: not remembered
            log.warning("dataset.invalid", path=str(path), error=str(e))
            entry = e
        self._user[path] = (key, entry)
        return entry

    def datasets(self) -> list[DatasetInfo]:
        """Every loadable symbol with its date range, sorted by symbol."""
        out: dict[str, DatasetInfo] = {
            s: DatasetInfo(s, b.start, b.end, len(b), "bundled") for s, b in self._bundled_bars().items()
        }
        for symbol, entry in self._user_entries().items():
            if isinstance(entry, Bars):
                out[symbol] = DatasetInfo(symbol, entry.start, entry.end, len(entry), "user")
        return [out[s] for s in sorted(out)]

    def _user_entries(self) -> dict[str, Bars | DatasetError]:
        """Every user file's data or error; an unreadable directory or file is an error here."""
        try:
            files = self._user_files()
        except DataUnavailable as e:
            return {"": e}
        entries: dict[str, Bars | DatasetError] = {}
        for symbol, path in files.items():
            try:
                entries[symbol] = self._user_entry(path)
            except DataUnavailable as e:
                entries[symbol] = e
        return entries

    def problems(self) -> list[DatasetProblem]:
        """User files that fail validation, with the error that keeps them out of `datasets()`."""
        return [
            DatasetProblem(symbol, entry.path or "", str(entry))
            for symbol, entry in self._user_entries().items()
            if isinstance(entry, DatasetError)
        ]

    def load(self, symbol: str) -> Bars:
        """The validated bars of `symbol` (case-insensitive); the user's file wins over bundled."""
        key = symbol.strip().upper()
        path = self._user_files().get(key)
        if path is not None:
            entry = self._user_entry(path)
            if isinstance(entry, DatasetError):
                raise entry
            return entry
        bars = self._bundled_bars().get(key)
        if bars is None:
            raise UnknownSymbolError(f"unknown symbol {symbol!r}; available: {', '.join(self.symbols())}")
        return bars

    def symbols(self) -> list[str]:
        return [d.symbol for d in self.datasets()]

    def has(self, symbol: str) -> bool:
        try:
            self.load(symbol)
        except DatasetError:
            return False
        return True
