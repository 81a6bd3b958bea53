"""Folding helpers the tests (and bench) use: the whole log into a projection, and a replay
verify that gives only the differences."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from consumers.maintenance.replay import Difference, verify_replay
from consumers.projector import Projector
from orchestrator.storage.keys import Keys
from orchestrator.storage.partitions import Layout
from orchestrator.storage.readmodel import Projection


async def fold_log(projection: Projection, **kwargs: Any) -> int:
    """Fold the whole log into `projection`: returns the number of events read."""
    projector = Projector(projection, **kwargs)
    await projector.run(burst=True)
    return projector.applied


async def verify(redis: Any, keys: Layout | Keys, *, archives: list[Path] | None = None) -> list[Difference]:
    """The differences between a fresh fold of every partition's log and the live projection
    ([]: none); a `Keys` stands for the one-partition layout of its prefix."""
    return (await verify_replay(redis, keys, archives=archives)).differences
