"""No field of an earlier attempt or outcome survives a transition that replaces it.

Property-ish: random legal histories (the transitions the scripts allow) are folded, then the
same final event is applied to each. Whatever the history was, the fields a transition replaces
must come out the same: they may depend only on the event itself and on the task's own fields
(spec, submit time, attempt count), or, for an outcome, on the attempt it ends (who ran it).
Then the issue's case end to end: a retryable failure, then a completion, through the real
scripts, projector and API (task and list)."""

from __future__ import annotations

import random
from typing import Any

import msgspec
import pytest

from orchestrator.domain.events import (
    Cancelled,
    Completed,
    Event,
    Failed,
    Progress,
    Released,
    Requeued,
    ResultDeleted,
    ResultRef,
    RetryScheduled,
    Started,
    StoredEvent,
    Submitted,
)
from orchestrator.domain.ids import iso_ms
from orchestrator.domain.spec import BacktestSpec
from orchestrator.domain.state import TaskState, evolve
from tests.conftest import Backend
from tests.harness import System

SPEC = BacktestSpec(strategy="sma_cross", symbol="GOOG", params={"fast": 10, "slow": 20})
TASK = "t-1"
# Fields that belong to the task, not to an attempt: a transition may carry them over.
TASK_FIELDS = {"task_id", "spec", "created_at", "submitted_id", "submitted_by", "seq", "last_event_id", "attempt"}
# Fields an event may keep from the attempt it ends (who ran it, when it started, how far it got).
KEPT_FROM_ITS_ATTEMPT: dict[type[Event], set[str]] = {
    Started: set(),
    RetryScheduled: set(),
    Released: set(),
    Requeued: set(),
    Completed: {"worker", "started_at"},
    Failed: {"worker", "started_at", "progress"},
    Cancelled: {"worker", "started_at", "progress"},
    # Retention deleting the full result keeps the outcome whole (its summary, where it was).
    ResultDeleted: set(TaskState.__struct_fields__) - {"result_deleted_at"},
}
# What each status allows next, as the scripts decide it (claim/take, heartbeat, finish, release,
# requeue, cancel, and a reclaim: `started` on a running task).
NEXT: dict[str, list[type[Event]]] = {
    "queued": [Started, Cancelled],
    "running": [Progress, Completed, Failed, RetryScheduled, Released, Cancelled, Started],
    "failed": [Requeued],
    "completed": [ResultDeleted],
    "cancelled": [],
}


def random_event(kind: type[Event], rng: random.Random, attempt: int) -> Event:
    """An event of `kind` with random contents (seq is set by the caller)."""
    n = rng.randrange(1000)
    match kind:
        case _ if kind is Started:
            return Started(task_id=TASK, attempt=attempt + 1, worker=f"w{n}", reclaimed=rng.random() < 0.5)
        case _ if kind is Progress:
            return Progress(task_id=TASK, attempt=attempt, progress=rng.random())
        case _ if kind is Completed:
            ref = ResultRef(key=f"{TASK}/{attempt}-{n}", schema_version=1, bytes=n, tables={"trades": n})
            return Completed(task_id=TASK, attempt=attempt, result={"metrics": {"n": n}}, result_ref=ref)
        case _ if kind is ResultDeleted:
            return ResultDeleted(task_id=TASK, attempt=attempt, key=f"{TASK}/{attempt}-{n}", reason="count")
        case _ if kind is Failed:
            return Failed(task_id=TASK, attempt=attempt, error=f"boom {n}", retryable=rng.random() < 0.5)
        case _ if kind is RetryScheduled:
            return RetryScheduled(task_id=TASK, attempt=attempt, error=f"flaky {n}", delay_ms=n)
        case _ if kind is Released:
            return Released(task_id=TASK, attempt=attempt, worker=f"w{n}")
        case _ if kind is Requeued:
            return Requeued(task_id=TASK, attempt=attempt, by=f"user{n}")
        case _:
            return Cancelled(task_id=TASK, attempt=attempt, by=f"user{n}")


def stored(event: Event, seq: int, ms: int) -> StoredEvent:
    return StoredEvent(id=f"{ms}-0", event=msgspec.structs.replace(event, seq=seq))  # type: ignore[arg-type]


def random_history(rng: random.Random, length: int) -> TaskState:
    """The state after a random legal history of up to `length` events."""
    state = evolve(None, stored(Submitted(task_id=TASK, spec=SPEC, by="alice"), 1, 1_000))
    for _ in range(length):
        options = NEXT[state.status]
        if not options:
            break
        event = random_event(rng.choice(options), rng, state.attempt)
        state = evolve(state, stored(event, state.seq + 1, 1_000 + 10 * state.seq + rng.randrange(10)))
    return state


def histories_allowing(kind: type[Event], count: int) -> list[TaskState]:
    rng = random.Random(f"{kind.__name__}-14")
    found: list[TaskState] = []
    while len(found) < count:
        state = random_history(rng, rng.randrange(0, 14))
        if kind in NEXT[state.status]:
            found.append(state)
    return found


def replaced(state: TaskState, kind: type[Event]) -> dict[str, Any]:
    """The fields `kind` replaces, after it was applied to `state`."""
    keep = TASK_FIELDS | KEPT_FROM_ITS_ATTEMPT[kind]
    return {name: getattr(state, name) for name in TaskState.__struct_fields__ if name not in keep}


@pytest.mark.parametrize("kind", list(KEPT_FROM_ITS_ATTEMPT), ids=lambda k: k.__struct_config__.tag)
def test_no_field_of_what_came_before_survives_a_transition(kind: type[Event]) -> None:
    histories = histories_allowing(kind, 60)
    event = random_event(kind, random.Random(kind.__name__), 0)
    outcomes: dict[str, list[tuple[Any, TaskState]]] = {}
    for before in histories:
        final = msgspec.structs.replace(event, attempt=before.attempt + (kind is Started))
        after = evolve(before, stored(final, before.seq + 1, 9_000_000))
        for name, value in replaced(after, kind).items():
            outcomes.setdefault(name, []).append((value, before))
    for name, seen in outcomes.items():
        values = {repr(v) for v, _ in seen}
        assert len(values) == 1, (
            f"`{name}` after {kind.__struct_config__.tag} depends on the history before it: {sorted(values)}; "
            f"e.g. after {seen[0][1]!r} it is {seen[0][0]!r}"
        )


def test_each_transition_sets_what_its_event_says() -> None:
    """The fields that must come out the same, and what they must be."""
    at = iso_ms(9_000_000)
    expect: dict[type[Event], dict[str, Any]] = {
        Started: {"status": "running", "progress": 0.0, "started_at": at, "finished_at": None, "error": None},
        RetryScheduled: {"status": "queued", "worker": None, "started_at": None, "progress": 0.0},
        Released: {"status": "queued", "worker": None, "started_at": None, "error": None, "progress": 0.0},
        Requeued: {"status": "queued", "worker": None, "error": None, "result": None, "finished_at": None},
        Completed: {"status": "completed", "progress": 1.0, "error": None, "finished_at": at},
        Failed: {"status": "failed", "result": None, "finished_at": at},
        Cancelled: {"status": "cancelled", "error": None, "result": None, "finished_at": at},
        ResultDeleted: {"status": "completed", "result_deleted_at": at},
    }
    for kind, fields in expect.items():
        event = random_event(kind, random.Random(1), 0)
        for before in histories_allowing(kind, 10):
            final = msgspec.structs.replace(event, attempt=before.attempt + (kind is Started))
            after = evolve(before, stored(final, before.seq + 1, 9_000_000))
            assert {k: getattr(after, k) for k in fields} == fields, (kind, before)


async def test_a_completion_after_a_retryable_failure_shows_no_error(backend: Backend) -> None:
    """The issue's case through the real scripts: attempt 1 fails with a retryable error, attempt
    2 completes. The task and the list show the completion alone; the audit trail keeps both."""
    system = System(backend)
    await system.queue.ensure_group()
    task_id = (await system.commands.submit("6f1e8a4e-0000-4000-8000-000000000001", SPEC)).task_id
    [first] = await system.queue.take(worker="w-a", count=1)
    retry = RetryScheduled(task_id=task_id, attempt=first.claim.attempt, error="OSError: data away", delay_ms=0)
    assert await system.queue.finish(retry, message_id=first.message_id) is None
    assert await system.queue.promote_due_retries() == 1
    [second] = await system.queue.take(worker="w-b", count=1)
    assert second.claim.attempt == 2
    done = Completed(task_id=task_id, attempt=2, result={"metrics": {"return_pct": 1.5}})
    assert await system.queue.finish(done, message_id=second.message_id) is None
    await system.project()
    async with system.client() as http:
        task = (await http.get(f"/api/backtests/tasks/{task_id}")).json()
        [listed] = (await http.get("/api/backtests/tasks")).json()["tasks"]
        trail = (await http.get(f"/api/backtests/tasks/{task_id}/events")).json()["events"]
    for shown in (task, listed):
        assert shown["status"] == "completed" and shown["worker"] == "w-b" and shown["attempt"] == 2
        assert shown["error"] is None and shown["error_retryable"] is None
        assert shown["result"] == {"metrics": {"return_pct": 1.5}}
    assert [e["type"] for e in trail] == ["submitted", "started", "retry_scheduled", "started", "completed"]
    assert trail[2]["data"]["error"] == "OSError: data away"
    # The projection's hash holds no leftover field either (an `error` HDEL'd, not kept).
    fields = await backend.redis.hgetall(backend.keys.projected_task(task_id))
    assert b"error" not in fields and b"error_retryable" not in fields
