"""The time base of a backtest's statistics: bar spacing, how returns are annualised, the
periods returns are taken over, and durations rounded as backtesting.py rounds them."""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]

_NAN = float("nan")


def period_days(days: FloatArray) -> float:
    """Median spacing of the last 100 bars, in (fractional) days (backtesting.py's `_data_period`)."""
    tail = days[-100:]
    if tail.shape[0] < 2:
        return _NAN
    spacing = np.sort(np.diff(tail))
    middle = spacing.shape[0] // 2
    # The median, as np.median takes it (the mean of the middle two of an even count).
    return float(spacing[middle] if spacing.shape[0] % 2 else (spacing[middle - 1] + spacing[middle]) / 2)


def ceil_days(value: float, period: float) -> float | None:
    """Round a duration (days) up to the resolution of the bar spacing `period` (days), as
    backtesting.py ceils its Timedeltas to the period's resolution: the coarsest of a day, an
    hour, a minute and a second in which the spacing is whole."""
    if value != value:
        return None
    unit = 86_400
    if period == period:
        seconds = round(period * 86_400)
        unit = next(u for u in (86_400, 3_600, 60, 1) if seconds % u == 0)
    # In whole units, with float noise (a mean of whole days read as 13 - 1e-12) rounded off first.
    return math.ceil(round(value * 86_400 / unit, 9)) * unit / 86_400


# Calendar frequencies by median bar spacing in days: [lowest, below) -> resampling, periods a year.
# The bands hold every calendar's variation around the nominal spacing (business-month ends are
# 28-33 days apart, business-year ends 364-366); a spacing in none of them (fortnightly, irregular)
# is annualised by calendar time, 365.25 / spacing, without resampling.
FREQUENCY_BANDS: tuple[tuple[float, float, str, float], ...] = (
    (5.0, 10.0, "W", 52.0),
    (25.0, 35.0, "ME", 12.0),
    (80.0, 100.0, "QE", 4.0),
    (350.0, 380.0, "YE", 1.0),
)
# Trading days a year: stock exchanges (252) or every calendar day (365: markets open on weekends).
TRADING_DAYS, CALENDAR_DAYS = 252.0, 365.0


def annualisation(period: float, weekends: bool) -> tuple[str, float]:
    """How returns are annualised for bars `period` days apart (median spacing; NaN for one bar).

    Returns (resampling, periods a year): "D" for intraday and daily bars (below 2 days apart),
    resampled to the last equity of each calendar day, 252 periods a year or 365 if the bars
    include weekends (`weekends`: over 60% of the 2/7 share of weekend dates a 7-day calendar
    has, backtesting.py's test); then the bands of FREQUENCY_BANDS; else "bar" (no resampling)
    and 365.25 / period. Source: backtesting.py 0.6.6 `compute_stats`, which recognises weekly,
    monthly and yearly bars only at exactly 7, 31 and 365 whole days (see STRATEGIES.md).
    """
    if period != period or period < 2:
        return "D", CALENDAR_DAYS if weekends else TRADING_DAYS
    for low, high, freq, per_year in FREQUENCY_BANDS:
        if low <= period < high:
            return freq, per_year
    return "bar", 365.25 / period


def resample_last(days: npt.NDArray[np.int64], equity: FloatArray, freq: str) -> FloatArray:
    """The last equity value in each calendar day, Sunday-ending week, month, quarter or year
    (`days`: each bar's calendar day since 1970-01-01); "bar" keeps every bar."""
    if freq == "bar":
        return equity
    if freq == "D":
        key = days
    elif freq == "W":
        key = days + (6 - (days + 3) % 7)  # 1970-01-01 was a Thursday (weekday 3)
    else:
        ymd = days.astype("datetime64[D]")
        months = ymd.astype("datetime64[M]").astype(np.int64)
        key = {"ME": months, "QE": months // 3}.get(freq, ymd.astype("datetime64[Y]").astype(np.int64))
    last = np.flatnonzero(np.append(key[1:] != key[:-1], True))
    return equity[last]
