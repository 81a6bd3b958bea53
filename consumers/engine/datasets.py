"""Market data: the bundled sample symbols and the user's CSV directory, validated and cached."""

from __future__ import annotations

import csv
import datetime as dt
import functools
import gzip
import hashlib
import io
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import msgspec
import numpy as np
import numpy.typing as npt
import structlog

from consumers.engine.errors import DatasetError, DataUnavailable, InvalidSymbolError, UnknownSymbolError

__all__ = [
    "BUNDLED_PATH",
    "Bars",
    "Catalog",
    "DataProvenance",
    "DatasetError",
    "DatasetInfo",
    "DatasetProblem",
    "bars_sha256",
    "check_symbol",
]

log = structlog.get_logger("backstream.datasets")

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

# Why a result's prices are not adjusted (None when they are).
NotAdjustedReason = Literal["not_requested", "no_adj_close_column"]

FloatArray = npt.NDArray[np.float64]


class DatasetInfo(msgspec.Struct, frozen=True):
    """One symbol the API can offer, with the dates it covers."""

    symbol: str
    start: dt.date
    end: dt.date
    rows: int
    source: Literal["bundled", "user"]
    # Whether the data has an Adj Close column: without one, results use the raw prices.
    adjustable: bool = False


def check_symbol(symbol: str) -> str:
    """The lookup key of `symbol`: the text upper-cased, after checking it follows SYMBOL_RULE.

    Matching is case-insensitive over ASCII only. Raises InvalidSymbolError (surrounding or inner
    whitespace, non-ASCII letters such as a dotless "ı", an empty or overlong name).
    """
    if not SYMBOL_PATTERN.fullmatch(symbol):
        raise InvalidSymbolError(f"{symbol!r} is not a symbol: use {SYMBOL_RULE}")
    return symbol.upper()


class DataProvenance(msgspec.Struct, frozen=True, kw_only=True):
    """What a result was computed on, so a rerun can be shown to use the same bars.

    `first_bar`/`last_bar` are the dates of the first and last bar used, `bars` their number,
    `sha256` the hex digest of `bars_sha256` (the exact bytes are defined in STRATEGIES.md).
    """

    symbol: str
    source: str
    first_bar: dt.date
    last_bar: dt.date
    bars: int
    adjusted: bool
    not_adjusted_reason: NotAdjustedReason | None = None
    sha256: str


class DatasetProblem(msgspec.Struct, frozen=True):
    """A user file that failed validation: left out of `datasets()`, reported here instead."""

    symbol: str
    path: str
    message: str


@dataclass(frozen=True, eq=False)
class Bars:
    """Validated daily OHLCV arrays of one symbol, oldest first, read-only (they are cached).

    As the source gives them (`adjusted` false), or split- and dividend-adjusted: `prices(True)`.
    """

    symbol: str
    source: str
    dates: npt.NDArray[np.datetime64]
    open: FloatArray
    high: FloatArray
    low: FloatArray
    close: FloatArray
    volume: FloatArray
    # The source's Adj Close column, if it has one; None otherwise.
    adj_close: FloatArray | None = None
    # True when open, high, low, close and volume above are already adjusted (see `adjusted_bars`).
    adjusted: bool = False

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
        """The dates as ISO strings: every result lists them, so a dataset makes them once.

        In slices: numpy holds the GIL for a whole call (~1 µs a date), which would delay the
        worker's lease renewals by as long on a long series."""
        step = 20_000
        parts = [np.datetime_as_string(self.dates[i : i + step], unit="D") for i in range(0, len(self), step)]
        return np.concatenate(parts) if parts else np.datetime_as_string(self.dates, unit="D")

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
            None if self.adj_close is None else self.adj_close[lo:hi],
            self.adjusted,
        )
        vars(part)["day_strings"] = self.day_strings[lo:hi]  # seeds the cached property: made once
        return part

    @functools.cached_property
    def _adjusted(self) -> Bars:
        assert self.adj_close is not None
        factor = self.adj_close / self.close
        part = Bars(
            self.symbol,
            self.source,
            self.dates,
            open=self.open * factor,
            high=self.high * factor,
            low=self.low * factor,
            close=self.adj_close,
            volume=self.volume / factor,
            adj_close=self.adj_close,
            adjusted=True,
        )
        for arr in (part.open, part.high, part.low, part.volume):
            arr.flags.writeable = False
        vars(part)["day_strings"] = self.day_strings
        return part

    def prices(self, adjusted: bool) -> tuple[Bars, NotAdjustedReason | None]:
        """The bars to compute on, and why they are not adjusted (None when they are).

        Adjusted (the default of a request): with f = Adj Close / Close of each bar, Open, High and
        Low are multiplied by f, Close becomes Adj Close and Volume is divided by f, so a split or
        a dividend no longer shows as a price jump. Data without an Adj Close column is used as
        it is. The adjusted series is made once per dataset (it is cached).
        """
        if self.adjusted:
            return self, None
        if not adjusted:
            return self, "not_requested"
        if self.adj_close is None:
            return self, "no_adj_close_column"
        return self._adjusted, None

    def provenance(self, not_adjusted_reason: NotAdjustedReason | None) -> DataProvenance:
        """The record of these bars for a result; raises DatasetError if there are none."""
        if len(self) == 0:
            raise DatasetError(f"{self.symbol}: no bars in the requested range")
        return DataProvenance(
            symbol=self.symbol,
            source=self.source,
            first_bar=self.start,
            last_bar=self.end,
            bars=len(self),
            adjusted=self.adjusted,
            not_adjusted_reason=None if self.adjusted else not_adjusted_reason,
            sha256=bars_sha256(self),
        )


def bars_sha256(bars: Bars) -> str:
    """SHA-256 (hex) of the bars' bytes: per bar, oldest first, 48 bytes: the date as a little-endian
    int64 count of days since 1970-01-01, then Open, High, Low, Close and Volume as little-endian
    IEEE-754 binary64. The same rule is written out, with code to recompute it, in STRATEGIES.md."""
    table = np.empty((len(bars), 6), dtype="<f8")
    for k, column in enumerate((bars.open, bars.high, bars.low, bars.close, bars.volume), start=1):
        table[:, k] = column
    rows = table.view("<i8")
    rows[:, 0] = bars.dates.astype("datetime64[D]").astype("<i8")
    return hashlib.sha256(rows.tobytes()).hexdigest()


def _parse_rows(rows: list[tuple[int, list[str]]], index: dict[str, int], name: str) -> dict[str, object]:
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
    return {"dates": dates, **{c.lower().replace(" ", "_"): a for c, a in cols.items()}}


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
    return Bars(symbol=symbol, source="user", **parsed)  # type: ignore[arg-type]


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

    def _user_files(self) -> tuple[dict[str, Path], dict[str, DatasetError]]:
        """The user's files by symbol, and the files that cannot be a symbol's, by name: a name that
        breaks SYMBOL_RULE, or two files whose names differ only in case (aapl.csv, AAPL.csv)."""
        if self._data_dir is None:
            return {}, {}
        if not self._data_dir.is_dir():
            raise DataUnavailable(f"data directory {self._data_dir} does not exist", path=str(self._data_dir))
        named: dict[str, list[Path]] = {}
        bad: dict[str, DatasetError] = {}
        for p in sorted(self._data_dir.iterdir()):
            if p.suffix.lower() != ".csv" or not p.is_file():
                continue
            if SYMBOL_PATTERN.fullmatch(p.stem):
                named.setdefault(p.stem.upper(), []).append(p)
            else:
                bad[p.name] = DatasetError(f"{p.name}: the file name is not a symbol; use {SYMBOL_RULE}", path=str(p))
        files = {}
        for symbol, paths in named.items():
            if len(paths) == 1:
                files[symbol] = paths[0]
            else:
                names = " and ".join(p.name for p in paths)
                bad[symbol] = DatasetError(
                    f"{names} both name {symbol} (symbols ignore case): keep one", path=str(paths[0])
                )
        return files, bad

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
            s: DatasetInfo(s, b.start, b.end, len(b), "bundled", b.adj_close is not None)
            for s, b in self._bundled_bars().items()
        }
        for symbol, entry in self._user_entries().items():
            if isinstance(entry, Bars):
                out[symbol] = DatasetInfo(
                    symbol, entry.start, entry.end, len(entry), "user", entry.adj_close is not None
                )
        return [out[s] for s in sorted(out)]

    def _user_entries(self) -> dict[str, Bars | DatasetError]:
        """Every user file's data or error; an unreadable directory or file is an error here."""
        try:
            files, bad = self._user_files()
        except DataUnavailable as e:
            return {"": e}
        entries: dict[str, Bars | DatasetError] = dict(bad)
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
        """The validated, unadjusted bars of `symbol`; the user's file wins over bundled.

        `symbol` is matched case-insensitively (ASCII only, see `check_symbol`); the bars carry
        the dataset's own name. Raises InvalidSymbolError, UnknownSymbolError or DatasetError.
        """
        key = check_symbol(symbol)
        files, bad = self._user_files()
        if key in bad:
            raise bad[key]
        path = files.get(key)
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
