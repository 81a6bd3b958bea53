"""What a completed chunk tells its job (streams.md, "Jobs")."""

from __future__ import annotations

from orchestrator.domain.events import Completed, Failed, RetryScheduled
from orchestrator.domain.jobs import ChunkEnd
from orchestrator.domain.ranking import score
from orchestrator.domain.spec import BacktestSpec

# What a chunk's summary holds of its own, not the job's: its rank, its count, its top rows.
_CHUNKS_OWN = ("rank", "combinations", "top")


def chunk_end(spec: BacktestSpec | None, event: Completed | Failed | RetryScheduled) -> ChunkEnd | None:
    """What a chunk's completion tells its job (None for any other outcome or task): its best
    row's rank (the engine's `rank` in the summary: `objective`, `bankrupt`), and the job's
    summary should it hold the job's best: the chunk's, less what is its own."""
    if spec is None or spec.chunk is None or not isinstance(event, Completed):
        return None
    summary = event.result
    rank = summary["rank"]
    best = {"symbol": spec.symbol, **{k: v for k, v in summary.items() if k not in _CHUNKS_OWN}}
    return ChunkEnd(score=score(rank["objective"], spec.minimise), bankrupt=bool(rank["bankrupt"]), best=best)
