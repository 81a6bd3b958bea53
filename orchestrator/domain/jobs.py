"""A job: one request fanned out over the fleet as chunk tasks (streams.md, "Jobs")."""

from __future__ import annotations

import math
from typing import Any

import msgspec

from orchestrator.domain.spec import BacktestSpec


class FanOut(msgspec.Struct, frozen=True):
    """A job as the worker that claimed it planned it: the spec of each chunk task in chunk
    order (each with its `chunk` set), the universe resolved (`symbols`), the admissible
    `combinations` over every symbol, and the most one chunk computes (`per_chunk`)."""

    chunks: list[BacktestSpec]
    symbols: list[str]
    combinations: int
    per_chunk: int

    def allowed_failures(self, tolerance: float) -> int:
        """How many chunks may fail for good before the job fails: floor(tolerance x chunks),
        so a tolerance of 0 fails the job at its first failed chunk."""
        return math.floor(tolerance * len(self.chunks))


class ChunkEnd(msgspec.Struct, frozen=True):
    """What a completed chunk tells its job: its best row's `score` (its objective, negated when
    the job minimises it: higher ranks first; None without one) and whether it went `bankrupt`,
    ranked as the engine ranks rows; and `best`: the job's summary should this chunk hold the
    job's best row (the chunk's summary without what is the chunk's own: its count of
    combinations, its top rows)."""

    score: float | None
    bankrupt: bool
    best: dict[str, Any]


def may_fan_out(spec: BacktestSpec) -> bool:
    """Whether the worker that claims `spec` may fan it out: a universe, or a sweep (a chunk
    never does; a sweep one chunk computes runs as one task)."""
    return spec.chunk is None and (spec.symbols is not None or spec.is_sweep)


def span_of(spec: BacktestSpec) -> dict[str, Any]:
    """The range a chunk computes, as a job lists its missing ones: {chunk, symbol, start, stop}.
    Raises ValueError for a spec that is no chunk."""
    if spec.chunk is None:
        raise ValueError("not a chunk of a job")
    return {"chunk": spec.chunk.index, "symbol": spec.symbol, "start": spec.chunk.start, "stop": spec.chunk.stop}
