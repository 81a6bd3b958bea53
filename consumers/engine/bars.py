"""One symbol's daily bars as the engine computes on them, and the record of what a result used."""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
from dataclasses import dataclass
from typing import Literal

import msgspec
import numpy as np
import numpy.typing as npt

from consumers.engine.errors import DatasetError

# Why a result's prices are not adjusted (None when they are).
NotAdjustedReason = Literal["not_requested", "no_adj_close_column"]

FloatArray = npt.NDArray[np.float64]


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

    # numpy's stubs type a datetime64 scalar's astype(dt.date) as Any: hence the ignores below.
    @property
    def start(self) -> dt.date:
        """The date of the first bar; raises IndexError when there are no bars."""
        return self.dates[0].astype(dt.date)  # type: ignore[no-any-return]

    @property
    def end(self) -> dt.date:
        """The date of the last bar; raises IndexError when there are no bars."""
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
