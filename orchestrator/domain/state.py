"""A task's current state, derived from its events by a pure fold: no I/O, no clock."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Literal

import msgspec

from orchestrator.domain.errors import ProjectionGapError
from orchestrator.domain.events import (
    AnyEvent,
    Cancelled,
    Completed,
    Failed,
    FannedOut,
    JobProgress,
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
from orchestrator.domain.status import Status


class JobState(msgspec.Struct, frozen=True, gc=False):
    """A job's chunks, as its events tell them: how many (`chunks`), over how many admissible
    `combinations` and which `symbols`; how many have ended `done` or `failed` (as of the last
    `job_progress`, or the outcome); `best`: the best combination's summary so far. Bounded
    whatever the number of chunks."""

    chunks: int
    combinations: int
    per_chunk: int
    symbols: list[str]
    done: int = 0
    failed: int = 0
    best: dict[str, Any] | None = None


# gc=False: never part of a reference cycle; see Event in events.py.
class TaskState(msgspec.Struct, frozen=True, omit_defaults=True, gc=False):
    """One task as the fold of its events leaves it (the projection stores it, field by field).

    Times are ISO 8601 UTC with milliseconds (`iso_ms`); `seq` is the last folded event's sequence
    number and `last_event_id` its stream id; `progress` is a fraction in [0, 1]; `attempt` counts
    claims (0 before the first). The attempt and outcome fields are reset by the transitions that
    replace them (see `_OUTCOME`, `_NEW_ATTEMPT`, `_QUEUED`)."""

    task_id: str
    status: Status
    spec: BacktestSpec
    created_at: str
    # The id of the `submitted` event: orders tasks newest first.
    submitted_id: str
    seq: int
    last_event_id: str
    progress: float = 0.0
    attempt: int = 0
    started_at: str | None = None
    finished_at: str | None = None
    worker: str | None = None
    error: str | None = None
    # For a failed task: could running it again succeed?
    error_retryable: bool | None = None
    result: dict[str, Any] | None = None
    # Where the full result lives in the results store (None: in Redis, or no result).
    result_ref: ResultRef | None = None
    # When retention deleted the full result (the summary in `result` stays).
    result_deleted_at: str | None = None
    submitted_by: str | None = None
    cancelled_by: str | None = None
    # A job's chunks (set by `fanned_out`; None for a task that did not fan out).
    job: JobState | None = None


# What a job's `completed` result holds of its best combination (the rest are its counts),
# as `job_progress` carries the best so far.
_BEST_FIELDS = ("symbol", "metrics", "best_params", "objective", "data")

# What each kind of transition resets, so that no field of an earlier attempt (or outcome)
# survives into a later one. tests/test_state_fields.py checks every field for every transition.
# An outcome (completed, failed, cancelled) replaces every outcome field of what came before:
_OUTCOME: dict[str, Any] = {
    "error": None,
    "error_retryable": None,
    "result": None,
    "result_ref": None,
    "result_deleted_at": None,
    "cancelled_by": None,
}
# A new attempt starts from nothing but the task's own fields (spec, submit time, attempt count):
_NEW_ATTEMPT: dict[str, Any] = {**_OUTCOME, "progress": 0.0, "finished_at": None}
# Back in the queue (retry scheduled, released, requeued): no attempt runs, so none has a worker,
# a start, progress or an end.
_QUEUED: dict[str, Any] = {**_NEW_ATTEMPT, "status": Status.QUEUED, "worker": None, "started_at": None}


def _reset(state: TaskState, cleared: dict[str, Any], **fields: Any) -> TaskState:
    """`state` with the `cleared` fields reset, then `fields` set."""
    return msgspec.structs.replace(state, **{**cleared, **fields})


def evolve(state: TaskState | None, stored: StoredEvent) -> TaskState:
    """The state after one more event; `state` None: the task has no event yet.

    A repeat (a seq already folded) is a no-op, so folding is idempotent. Raises
    ProjectionGapError when the event's seq is not the next one, or a task's first event is
    not `submitted`."""
    event = stored.event
    expected = (state.seq if state else 0) + 1
    if state is not None and event.seq < expected:
        return state  # already applied: folding is idempotent
    if event.seq != expected:
        raise ProjectionGapError(
            f"task {event.task_id}: event {stored.id} has seq {event.seq}, expected {expected}; "
            "an earlier event of this task is missing from the log"
        )
    step: dict[str, Any] = {"seq": event.seq, "last_event_id": stored.id}
    if state is None:
        return _first(stored, step)
    if isinstance(event, Progress):  # the most frequent event, and the one that needs no time
        return msgspec.structs.replace(state, progress=event.progress, **step)
    return _transition(state, event, iso_ms(stored.at_ms), step)


def _first(stored: StoredEvent, step: dict[str, Any]) -> TaskState:
    """The state a task's first event makes; raises ProjectionGapError unless it is `submitted`."""
    event = stored.event
    if not isinstance(event, Submitted):
        raise ProjectionGapError(
            f"task {event.task_id}: its first event {stored.id} is a "
            f"{type(event).__struct_config__.tag}, not `submitted`"
        )
    return TaskState(
        task_id=event.task_id,
        status=Status.QUEUED,
        spec=event.spec,
        created_at=iso_ms(stored.at_ms),
        submitted_id=stored.id,
        submitted_by=event.by,
        **step,
    )


def _transition(state: TaskState, event: AnyEvent, at: str, step: dict[str, Any]) -> TaskState:
    """`state` after `event` (not its first, not a progress), appended at time `at`."""
    match event:
        case Started(attempt=attempt, worker=worker):
            # A new attempt (first run, retry, after a release or requeue, or a reclaim): nothing
            # of the attempt before it survives; that one stays in the audit trail.
            running = {"status": Status.RUNNING, "attempt": attempt, "worker": worker, "started_at": at}
            return _reset(state, _NEW_ATTEMPT, **running, **step)
        case Completed(result=result, result_ref=ref):
            done = {"status": Status.COMPLETED, "progress": 1.0, "result": result, "result_ref": ref}
            if state.job is not None:  # a job's outcome carries its final counts and its best
                counts = {"done": result.get("completed", 0), "failed": result.get("failed", 0)}
                best = {k: v for k, v in result.items() if k in _BEST_FIELDS}
                done["job"] = msgspec.structs.replace(state.job, **counts, best=best)
            return _reset(state, _OUTCOME, **done, finished_at=at, **step)
        case ResultDeleted():
            # Only the full result goes; the outcome and its summary stay.
            return msgspec.structs.replace(state, result_deleted_at=at, **step)
        case Failed(error=error, retryable=retryable):
            failed = {"status": Status.FAILED, "error": error, "error_retryable": retryable}
            return _reset(state, _OUTCOME, **failed, finished_at=at, **step)
        case RetryScheduled(error=error):
            # Queued again; `error` says why until the next attempt starts.
            return _reset(state, _QUEUED, error=error, **step)
        case Requeued() if state.job is not None:
            # A failed job runs its chunks that did not complete again at once: it is running,
            # its failures forgotten (requeue.lua resets them too).
            again = msgspec.structs.replace(state.job, failed=0)
            progress = state.job.done / state.job.chunks if state.job.chunks else 0.0
            running = {"status": Status.RUNNING, "job": again, "progress": progress, "finished_at": None}
            return _reset(state, _OUTCOME, **running, **step)
        case Released() | Requeued():
            return _reset(state, _QUEUED, **step)
        case FannedOut(chunks=chunks, combinations=combinations, per_chunk=per_chunk, symbols=symbols):
            # Still running: its chunks run it now. Its planner's attempt stays its own.
            job = JobState(chunks=chunks, combinations=combinations, per_chunk=per_chunk, symbols=symbols)
            return msgspec.structs.replace(state, job=job, **step)
        case JobProgress(progress=progress, done=done, failed=failed, best=best):
            progressed = msgspec.structs.replace(state.job, done=done, failed=failed, best=best) if state.job else None
            return msgspec.structs.replace(state, progress=progress, job=progressed, **step)
        case Cancelled(by=by):
            # The worker and progress of a cancelled running attempt stay: who ran it, how far.
            return _reset(state, _OUTCOME, status=Status.CANCELLED, cancelled_by=by, finished_at=at, **step)
    raise AssertionError(f"unhandled event {event!r}")


def fold(events: Iterable[StoredEvent], states: dict[str, TaskState] | None = None) -> dict[str, TaskState]:
    """Fold events into states by task id (into `states` when given, which is updated and
    returned). Raises ProjectionGapError as `evolve` does."""
    states = {} if states is None else states
    for stored in events:
        task_id = stored.event.task_id
        states[task_id] = evolve(states.get(task_id), stored)
    return states


def result_location(state: TaskState) -> Literal["store", "redis", "deleted", "chunks"] | None:
    """ "store", "redis", "deleted", "chunks" (a job's: its chunks' results, put together when
    read) or None (the task has not completed)."""
    if state.status != Status.COMPLETED:
        return None
    if state.result_deleted_at is not None:
        return "deleted"
    if state.job is not None:
        return "chunks"
    return "store" if state.result_ref is not None else "redis"
