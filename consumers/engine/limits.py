"""What the engine can represent: bounds on money and position sizes, from int64 and float64."""

from __future__ import annotations

# Money (cash, fixed fees, equity) is float64. Below 2^46 (about 7.04e13) consecutive float64
# values are at most 2^-7 = 0.0078 apart, so every amount is resolved to better than a cent;
# at 2^46 the spacing doubles past a cent. Cash and the fixed fee must stay below it.
MAX_MONEY = 2.0**46

# Position sizes are whole units held as int64, but every price computation converts them to
# float64, which holds every integer only up to 2^53 (about 9.0e15): beyond it a unit count is
# not what the arithmetic uses. An order for more is refused at submit when the cash alone
# could buy it, and fails the run (not retryable) when profits make it possible later.
MAX_UNITS = 2**53


def lowest_fill_price(lowest_open: float, spread: float, slippage: float, long_only: bool) -> float:
    """The lowest price an entry can fill at, given the lowest Open it can fill on: a short
    entry sells at Open * (1 - slippage) * (1 - spread); a long one never below the Open."""
    if long_only:
        return lowest_open
    return lowest_open * (1.0 - slippage) * (1.0 - spread)
