"""Log cursors: a position in every partition's event stream, for the readers that follow the
whole log (the all-tasks SSE feed, the metrics follower, `backstream tail`).

Across partitions there is no global order, so one stream id cannot say how far a reader got.
A cursor holds one stream id per partition, partition 0 first, and is written as text (the SSE
`id:` line, `Last-Event-ID`, `?last_event_id=`, `--since`):

- one partition: the plain stream id, `1700000000000-5`, exactly as before partitions existed;
- several: the ids joined by commas, `1700000000000-5,0,1700000000002-0,…`, where an id whose
  sequence is 0 may drop it (`0` is `0-0`: nothing read yet in that partition).

Read back, a plain id (no comma) stands for that position in every partition (a time: `--since
1700000000000`); a list shorter than the deployment's partitions starts the partitions it does
not name at their beginning (partitions added by a migration after the cursor was written). A
list naming more partitions than the deployment has, or anything that is not an id, is refused.
"""

from __future__ import annotations

from orchestrator.domain.ids import canonical_stream_id, id_order

START = "0-0"


class BadCursor(ValueError):
    """Text that is not a log cursor of this deployment; the message says what was expected."""


def _short(stream_id: str) -> str:
    """`ms-0` as `ms` (Redis reads both the same), any other id as it is."""
    return stream_id.removesuffix("-0")


class LogCursor:
    """A position (stream id, `ms-seq`) in each of `width` partitions' event streams: the last
    entry a reader has taken from each. Mutable: `advance` moves one partition on."""

    __slots__ = ("positions",)

    def __init__(self, positions: list[str]) -> None:
        self.positions = positions

    @classmethod
    def start(cls, width: int) -> LogCursor:
        """Before every partition's first entry."""
        return cls([START] * width)

    @classmethod
    def parse(cls, raw: str, width: int) -> LogCursor:
        """The cursor `raw` (see the module's docstring) for a deployment of `width` partitions.
        Raises BadCursor when it is not one."""
        parts = [p.strip() for p in raw.strip().split(",")]
        if len(parts) > width:
            raise BadCursor(f"names {len(parts)} partitions; this deployment has {width}")
        ids = [canonical_stream_id(p) for p in parts]
        if any(i is None for i in ids):
            example = "1700000000000-0" if width == 1 else "1700000000000-0,1700000000001-2,… (one id per partition)"
            raise BadCursor(f"must be a stream id such as {example}, or 0: the start")
        positions = [i for i in ids if i is not None]
        if len(positions) == 1:
            return cls(positions * width)
        return cls(positions + [START] * (width - len(positions)))

    def copy(self) -> LogCursor:
        """An independent copy."""
        return LogCursor(list(self.positions))

    def advance(self, partition: int, stream_id: str) -> bool:
        """Move `partition` on to `stream_id` when that is past its position; whether it moved."""
        if id_order(stream_id) <= id_order(self.positions[partition]):
            return False
        self.positions[partition] = stream_id
        return True

    def passed(self, partition: int, stream_id: str) -> bool:
        """Whether `partition`'s position is at or past `stream_id` (that entry was taken)."""
        return id_order(stream_id) <= id_order(self.positions[partition])

    def ahead_of(self, other: LogCursor) -> bool:
        """Whether some partition's position is past `other`'s."""
        return any(id_order(a) > id_order(b) for a, b in zip(self.positions, other.positions, strict=True))

    def __str__(self) -> str:
        if len(self.positions) == 1:
            return self.positions[0]
        return ",".join(_short(p) for p in self.positions)

    def __repr__(self) -> str:
        return f"LogCursor({str(self)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, LogCursor) and self.positions == other.positions

    __hash__ = None  # type: ignore[assignment]  # mutable
