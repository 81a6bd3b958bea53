"""Event-replay tests: event logs in, projections out."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from consumers.archive import read_entries
from consumers.projector import Projector, fold_log
from consumers.replay import snapshot
from orchestrator.codec import decode_entry
from orchestrator.errors import ProjectionGapError
from orchestrator.projection import Projection
from orchestrator.state import fold, to_hash
from tests.conftest import Backend

LOGS = Path(__file__).parent / "replay" / "logs"
GOLDEN = sorted(p.stem for p in LOGS.glob("*.jsonl"))


def entries(name: str) -> list[dict[str, Any]]:
    return [{"id": i, "fields": f} for i, f in read_entries(LOGS / f"{name}.jsonl")]


async def write_log(b: Backend, log: list[dict[str, Any]]) -> None:
    for entry in log:
        await b.redis.xadd(b.keys.events, entry["fields"], id=entry["id"])


def decoded(snap: dict[str, dict[str, bytes]]) -> dict[str, Any]:
    tasks = {
        k.split(":", 1)[1]: {f: json.loads(v) for f, v in fields.items()}
        for k, fields in snap.items()
        if k.startswith("task:")
    }
    index = {
        k.split(":", 1)[1]: [m.split("|", 1)[1] for m in sorted(fields, reverse=True)]
        for k, fields in snap.items()
        if k.startswith("index:")
    }
    return {"tasks": tasks, "index": index}


@pytest.mark.parametrize("name", GOLDEN)
async def test_golden_log_folds_to_expected_projection(backend: Backend, name: str) -> None:
    await write_log(backend, entries(name))
    projection = Projection(backend.redis, backend.keys)
    await fold_log(projection, batch_size=4)  # small batches: several store steps
    expected = json.loads((LOGS / f"{name}.expected.json").read_text())
    assert decoded(await snapshot(backend.redis, backend.keys)) == expected
    assert await projection.position() == entries(name)[-1]["id"]


@pytest.mark.parametrize("name", GOLDEN)
def test_applying_any_event_twice_changes_nothing(name: str) -> None:
    log = [decode_entry(e["id"], e["fields"]) for e in entries(name)]
    once = {k: to_hash(v) for k, v in fold(log).items()}
    for i in range(len(log)):
        twice = log[: i + 1] + log[i:]
        assert {k: to_hash(v) for k, v in fold(twice).items()} == once


@pytest.mark.parametrize("name", GOLDEN)
async def test_projector_rewound_reapplies_nothing(backend: Backend, name: str) -> None:
    log = entries(name)
    await write_log(backend, log)
    projection = Projection(backend.redis, backend.keys)
    await fold_log(projection)
    first = await snapshot(backend.redis, backend.keys)
    # As if a projector crashed after storing its states but before anyone saw the position:
    # the events after the rewound position arrive again and must change nothing.
    for rewind_to in (log[0]["id"], log[len(log) // 2]["id"]):
        await backend.redis.set(backend.keys.projection_position, rewind_to)
        await Projector(projection).run(burst=True)
        assert await snapshot(backend.redis, backend.keys) == first


async def test_gap_stops_the_projector(backend: Backend) -> None:
    log = entries("mixed")
    del log[4]  # a progress event of task A
    await write_log(backend, log)
    projection = Projection(backend.redis, backend.keys)
    with pytest.raises(ProjectionGapError, match="expected 3"):
        await fold_log(projection)
    # Nothing of the batch with the gap was stored; the position is before it.
    assert await projection.position() is None
