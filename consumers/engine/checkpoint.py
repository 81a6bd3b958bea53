"""A run's saveable state between chunks, so that a retried or moved task resumes, not restarts.

No worker saves one yet: sweeps fanned out over the fleet (issue 17) will, between chunks of a
sweep's grid. tests/engine/test_engine_resume.py resumes after every chunk and gets the
uninterrupted result bit for bit.
"""

from __future__ import annotations

import hashlib

import msgspec

from consumers.engine.bars import Bars
from consumers.engine.kernel import KernelState
from consumers.engine.sweep import SweepRow
from orchestrator.domain.spec import BacktestSpec

CHECKPOINT_VERSION = 1


class Checkpoint(msgspec.Struct, frozen=True, kw_only=True):
    """The state between chunks, enough to resume instead of starting over (JSON via msgspec).

    Indicators are not saved: they are recomputed from the data, which `fingerprint` pins
    (with the request), so a checkpoint cannot be resumed against other data. A step in
    settlement or statistics is not saved either: it is redone on resume.
    """

    version: int = CHECKPOINT_VERSION
    fingerprint: str
    kernel: KernelState | None = None  # a single backtest's progress (or a sweep's current one)
    rows: list[SweepRow] = []  # a sweep's finished combinations, in grid order


def fingerprint(spec: BacktestSpec, bars: Bars) -> str:
    """32 hex digits of SHA-256 over the request (msgspec JSON) and the bars' dates, opens and
    closes: what a checkpoint must have been made from to be resumed."""
    h = hashlib.sha256(msgspec.json.encode(spec))
    h.update(bars.dates.tobytes())
    h.update(bars.open.tobytes())
    h.update(bars.close.tobytes())
    return h.hexdigest()[:32]


def saved(state: KernelState) -> KernelState:
    """A copy of `state` that later steps do not change (its trade and segment lists are copied)."""
    return msgspec.structs.replace(state, trades=list(state.trades), segments=list(state.segments))
