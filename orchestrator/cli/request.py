"""`backstream submit`'s arguments as the request body it sends: parameters, sweeps over lists and
ranges, position management and costs. Raises ClientError for what cannot be read."""

from __future__ import annotations

import argparse
from typing import Any

from orchestrator.client import ClientError

# A sweep range NAME=START:STOP[:STEP] lists at most this many values (the API bounds the grid too).
MAX_RANGE_VALUES = 100_000

# Position management (STRATEGIES.md, "Position management"): request fields, each a number or a
# comma-separated list to sweep.
MANAGEMENT = {
    "size": "order size: a fraction of equity in (0, 1), or whole units (default: all equity)",
    "margin": "margin in (0, 1]: leverage 1/margin",
    "stop_loss_pct": "stop-loss, percent from the entry price",
    "take_profit_pct": "take-profit, percent from the entry price",
    "trailing_stop_pct": "a stop trailing the close by this percent",
    "trailing_atr": "a stop trailing the close by this many ATRs",
    "max_bars": "close a trade after this many bars",
}
# The request fields `submit` passes through as given (its options of the same names).
PLAIN_FIELDS = (
    "start",
    "end",
    "cash",
    "commission",
    "commission_fixed",
    "spread",
    "slippage_bps",
    "objective",
    "constraint",
    "timeout_s",
    "fractional_unit",
    "direction",
    "failure_tolerance",
)


def number(text: str) -> int | float:
    """`10` -> 10, `0.5` -> 0.5; raises ValueError for anything else."""
    try:
        return int(text)
    except ValueError:
        return float(text)


def sweep_range(pair: str, text: str) -> list[int | float]:
    """`5:50:5` -> 5, 10, ..., 50: START, then every STEP up to STOP *inclusive* when the steps land
    on it (like numpy.arange with the stop included); STEP defaults to 1. All ints give ints.
    Raises ClientError naming `pair` (the whole NAME=VALUE) when the range is malformed or longer
    than MAX_RANGE_VALUES."""
    parts = text.split(":")
    if len(parts) not in (2, 3):
        raise ClientError(f"--param {pair!r}: a range is START:STOP or START:STOP:STEP")
    try:
        start, stop, step = (number(p) for p in (*parts, "1")[:3])
    except ValueError:
        raise ClientError(f"--param {pair!r}: a range's START, STOP and STEP must be numbers") from None
    if not step > 0 or stop < start:
        raise ClientError(f"--param {pair!r}: a range needs STEP > 0 and START <= STOP")
    count = int((stop - start) / step + 1e-9) + 1
    if count > MAX_RANGE_VALUES:
        raise ClientError(f"--param {pair!r}: {count} values; at most {MAX_RANGE_VALUES}")
    if all(isinstance(x, int) for x in (start, stop, step)):
        return list(range(int(start), int(stop) + 1, int(step)))
    return [round(start + k * step, 12) for k in range(count)]


def params(pairs: list[str]) -> dict[str, Any]:
    """`-p fast=10` (a value), `-p fast=5,10,20` (a sweep over a list) and `-p fast=5:50:5` (a sweep
    over a range, STOP included: see sweep_range) as the request's params. Raises ClientError."""
    found: dict[str, Any] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise ClientError(f"--param {pair!r}: expected NAME=VALUE, NAME=V1,V2,… or NAME=START:STOP:STEP (sweeps)")
        if ":" in value:
            found[name.strip()] = sweep_range(pair, value)
            continue
        try:
            values = [number(v) for v in value.split(",") if v.strip()]
        except ValueError:
            raise ClientError(f"--param {pair!r}: values must be numbers") from None
        found[name.strip()] = values if "," in value else values[0] if values else value
    return found


def universe(args: argparse.Namespace) -> dict[str, Any]:
    """Which symbols a request runs on: `{"symbol": …}` for SYMBOL, `{"symbols": [...]}` for
    `--symbols A,B`, `{"symbols": "*"}` for `--all-symbols` (a universe: a job over the fleet).
    Raises ClientError unless exactly one of the three is given."""
    given = [name for name, value in (("SYMBOL", args.symbol), ("--symbols", args.symbols)) if value]
    given += ["--all-symbols"] if args.all_symbols else []
    if len(given) != 1:
        named = " and ".join(given) if given else "none"
        raise ClientError(f"give exactly one of SYMBOL, --symbols A,B,… or --all-symbols (got {named})")
    if args.all_symbols:
        return {"symbols": "*"}
    if args.symbol:
        return {"symbol": args.symbol}
    symbols = [s.strip() for s in args.symbols.split(",") if s.strip()]
    if not symbols:
        raise ClientError(f"--symbols {args.symbols!r}: expected SYMBOL,SYMBOL,…")
    return {"symbols": symbols}


def spec(args: argparse.Namespace) -> dict[str, Any]:
    """The body of `POST /api/backtests` from `submit`'s parsed arguments. Raises ClientError."""
    body: dict[str, Any] = {"strategy": args.strategy, **universe(args), "params": params(args.param)}
    for name in PLAIN_FIELDS:
        if getattr(args, name) is not None:
            body[name] = getattr(args, name)
    for name in MANAGEMENT:
        value = getattr(args, name)
        if value is not None:
            try:
                numbers = [number(v) for v in value.split(",")]
            except ValueError:
                raise ClientError(
                    f"--{name.replace('_', '-')} {value!r}: expected a number or V1,V2,… (a sweep)"
                ) from None
            body[name] = numbers if "," in value else numbers[0]
    if args.long_only:
        body["long_only"] = True
    if args.unadjusted:
        body["adjusted"] = False
    return body
