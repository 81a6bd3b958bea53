"""Stream ids (`ms-seq`) and the one time format of the API, as the domain reads them."""

from __future__ import annotations

import datetime as dt
import functools
import re

# A stream id as people and Redis write it: `ms-seq`, or `ms` alone (group 2 is then None).
STREAM_ID = re.compile(r"([0-9]{1,20})(?:-([0-9]{1,20}))?")
ID_PART_MAX = 2**64 - 1
# Redis refuses a range that excludes the first id from below or the last one from above.
FIRST_ID, LAST_ID = (0, 0), (ID_PART_MAX, ID_PART_MAX)


def parse_stream_id(value: str) -> tuple[int, int] | None:
    """`1700000000000-5` -> (1700000000000, 5); None for anything Redis would not take as an id."""
    match = STREAM_ID.fullmatch(value)
    if match is None or match[2] is None:
        return None
    ms, seq = int(match[1]), int(match[2])
    return (ms, seq) if ms <= ID_PART_MAX and seq <= ID_PART_MAX else None


def canonical_stream_id(value: str) -> str | None:
    """A stream id a user typed, as `ms-seq`: `1700000000000-5` as it is, and `ms` alone (such as
    `0`) as `ms-0`, the way Redis reads it in XREAD; None for anything that is not an id."""
    parsed = parse_stream_id(value if "-" in value else f"{value}-0")
    return None if parsed is None else f"{parsed[0]}-{parsed[1]}"


def id_order(entry_id: str) -> tuple[int, int]:
    """The order of a well-formed stream id (`ms-seq`, or `ms` alone, which Redis reads as `ms-0`)."""
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


def iso_ms(ms: int) -> str:
    """A stream id's millisecond time as ISO 8601 UTC, the one time format of the API."""
    seconds, millis = divmod(ms, 1000)
    return f"{_iso_seconds(seconds)}.{millis:03d}Z"


@functools.lru_cache(maxsize=4096)
def _iso_seconds(seconds: int) -> str:
    # Events come in bursts within the same second: formatting is cached (replay hot path).
    return dt.datetime.fromtimestamp(seconds, tz=dt.UTC).strftime("%Y-%m-%dT%H:%M:%S")
