"""Market data: the bundled sample symbols and the user's CSV directory, validated and cached.

The bars themselves are `bars.py`; reading and checking the files is `csvdata.py`; this module is
the catalog over both (and names them all, for its callers)."""

from __future__ import annotations

import datetime as dt
import threading
from pathlib import Path
from typing import Literal

import msgspec
import structlog

from consumers.engine.bars import Bars, DataProvenance, NotAdjustedReason, bars_sha256
from consumers.engine.csvdata import (
    BUNDLED_PATH,
    SYMBOL_PATTERN,
    SYMBOL_RULE,
    check_symbol,
    read_bundled,
    read_user_csv,
)
from consumers.engine.errors import DatasetError, DataUnavailable, UnknownSymbolError

__all__ = [
    "BUNDLED_PATH",
    "SYMBOL_RULE",
    "Bars",
    "Catalog",
    "DataProvenance",
    "DatasetError",
    "DatasetInfo",
    "DatasetProblem",
    "NotAdjustedReason",
    "bars_sha256",
    "check_symbol",
    "read_user_csv",
]

log = structlog.get_logger("backstream.datasets")


class DatasetInfo(msgspec.Struct, frozen=True):
    """One symbol the API can offer, with the dates it covers."""

    symbol: str
    start: dt.date
    end: dt.date
    rows: int
    source: Literal["bundled", "user"]
    # Whether the data has an Adj Close column: without one, results use the raw prices.
    adjustable: bool = False


class DatasetProblem(msgspec.Struct, frozen=True):
    """A user file that failed validation: left out of `datasets()`, reported here instead."""

    symbol: str
    path: str
    message: str


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
        """Every loadable symbol, sorted (as `datasets()`); raises what `datasets()` raises."""
        return [d.symbol for d in self.datasets()]
