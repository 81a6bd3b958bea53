"""The events of a task's life: frozen, tagged msgspec Structs joined in one union."""

from __future__ import annotations

from typing import Any, ClassVar

import msgspec

from orchestrator.domain.spec import BacktestSpec
from orchestrator.domain.status import Status


# gc=False (here, on StoredEvent, TaskState and BacktestSpec): instances are not tracked by the
# cycle collector. They are frozen and hold only scalars, strings, specs and JSON-decoded dicts,
# so they can never be part of a reference cycle; tracked, the millions a replay decodes and the
# states its projector caches made the collector's full passes a large share of its CPU
# (BENCHMARKS.md, Replay).
class Event(
    msgspec.Struct,
    frozen=True,
    tag_field="type",
    forbid_unknown_fields=True,
    kw_only=True,
    omit_defaults=True,
    gc=False,
):
    """Base of every event.

    `task_id`, `seq` (1, 2, 3… per task, assigned by the script that appends the event) and
    `attempt` (the claim the event belongs to; 0 before the first claim) are stored as their own
    stream fields so the scripts can set and check them; everything else is the JSON `data`.
    `SCHEMA_VERSION` is stored with each event; older versions are upcast when read (codec.py).
    """

    SCHEMA_VERSION: ClassVar[int] = 1
    task_id: str
    seq: int = 0
    attempt: int = 0


class Submitted(Event, frozen=True, tag="submitted"):
    """A request was accepted: the task's first event (seq 1), which queues it."""

    spec: BacktestSpec
    # Who submitted (the token owner when access control is on).
    by: str | None = None


class Started(Event, frozen=True, tag="started"):
    """A worker claimed the task: attempt `attempt` begins (a first run, a retry, or a reclaim)."""

    worker: str
    # True when this attempt took the task over from a worker whose lease expired.
    reclaimed: bool = False
    # True when this attempt runs in a process of its own: every attempt after the task once
    # lost its worker does, so a death of that process is the task's own (streams.md).
    isolated: bool = False


class Progress(Event, frozen=True, tag="progress"):
    """How far the running attempt is: `progress` is a fraction in [0, 1]."""

    progress: float


class ResultRef(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Where a completed attempt's full result lives in the results store (streams.md "Results").

    `key` is the object prefix `<task_id>/<attempt>-<nonce>` under the store's root, holding
    `manifest.json` and one Parquet file per table; `schema_version` is the manifest's layout;
    `bytes` the total size of its objects; `tables` the rows of each table (equity, trades,
    sweep, symbols)."""

    key: str
    schema_version: int
    bytes: int
    tables: dict[str, int]


class Completed(Event, frozen=True, tag="completed"):
    """The task completed. Version 2 added `result_ref`: the full result's address in the
    results store (None: the full result is the Redis key `{bs}:task:<id>:result`, as every
    version 1 event had it). Version 1 events need no upcast: the field's default is theirs."""

    SCHEMA_VERSION: ClassVar[int] = 2
    # The result summary (metrics; for a sweep also the best parameters and its top rows). The
    # full result is stored beside the task, not in the log.
    result: dict[str, Any]
    result_ref: ResultRef | None = None


class ResultDeleted(Event, frozen=True, tag="result_deleted"):
    """Retention deleted a completed task's full result from the results store (`key`); the
    summary stays. `reason` names the limit that chose it: age, count or size."""

    key: str
    reason: str


class Failed(Event, frozen=True, tag="failed"):
    """The task failed for good (and went to the dead-letter stream).

    Version 2 added `retryable`: whether running it again could succeed (a transient error that
    ran out of attempts), so users know whether a manual retry is worth it. Version 1 events are
    upcast in codec.py."""

    SCHEMA_VERSION: ClassVar[int] = 2
    error: str
    # The exception class, for the audit trail.
    error_type: str = "Error"
    retryable: bool = False


class RetryScheduled(Event, frozen=True, tag="retry_scheduled"):
    """The attempt failed with a retryable error; the task runs again after `delay_ms`."""

    error: str
    error_type: str = "Error"
    delay_ms: int = 0


class Released(Event, frozen=True, tag="released"):
    """The worker gave the task back unfinished (shutting down); another worker takes it at once."""

    worker: str
    reason: str = "shutdown"


class Requeued(Event, frozen=True, tag="requeued"):
    """A failed task was sent back to the queue by a user (POST …/retry)."""

    by: str | None = None


class Cancelled(Event, frozen=True, tag="cancelled"):
    """A user cancelled the task (`by`: the token owner when access control is on)."""

    by: str | None = None
    # The status the task was in when it was cancelled (queued or running); set by the script.
    previous_status: Status | None = None


class FannedOut(Event, frozen=True, tag="fanned_out"):
    """The worker that claimed a job planned it and, in the same atomic step, submitted its
    `chunks` chunk tasks (ids `chunk_id(task_id, i)`, i < chunks, in the job's partition; each
    one's spec names the job and its range of combinations). The job's own work item is done
    with: from here its chunks run it, and the last one to end appends its outcome (streams.md,
    "Jobs"). `combinations`: admissible combinations over every symbol; `per_chunk`: the most a
    chunk computes; `symbols`: the universe, resolved ("*" listed)."""

    chunks: int
    combinations: int
    per_chunk: int
    symbols: list[str]


class JobProgress(Event, frozen=True, tag="job_progress"):
    """A job passed another whole percent of its chunks ended (at most 99 per job, whatever the
    number of chunks): `progress` = ended / chunks, in [0, 1]; `done` and `failed` chunks so far;
    `best` the summary of the best combination so far (as the job's outcome will give it)."""

    progress: float
    done: int
    failed: int
    best: dict[str, Any] | None = None


AnyEvent = (
    Submitted
    | Started
    | Progress
    | Completed
    | Failed
    | RetryScheduled
    | Released
    | Requeued
    | Cancelled
    | ResultDeleted
    | FannedOut
    | JobProgress
)

EVENT_TYPES: dict[str, type[Event]] = {
    "submitted": Submitted,
    "started": Started,
    "progress": Progress,
    "completed": Completed,
    "failed": Failed,
    "retry_scheduled": RetryScheduled,
    "released": Released,
    "requeued": Requeued,
    "cancelled": Cancelled,
    "result_deleted": ResultDeleted,
    "fanned_out": FannedOut,
    "job_progress": JobProgress,
}


class StoredEvent(msgspec.Struct, frozen=True, gc=False):
    """An event as read back from the log, with its stream id."""

    id: str
    event: AnyEvent

    @property
    def at_ms(self) -> int:
        """When the log appended the event: the stream id's milliseconds since the Unix epoch."""
        return int(self.id.split("-", 1)[0])
