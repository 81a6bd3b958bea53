"""The API's wire shapes as msgspec Structs: what it answers, and the query strings it reads.

One set of types serves three readers: the handlers (which build or validate through them), the
OpenAPI document (generated from them with `msgspec.json.schema_components`) and the Python client
(which decodes answers into them). The request body is `orchestrator.domain.spec.BacktestSpec`.
Shapes only grow (new fields get defaults), so an older client keeps decoding a newer server.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec

from orchestrator.domain.spec import BacktestSpec
from orchestrator.domain.state import JobState, TaskState, result_location
from orchestrator.domain.status import Status

MAX_PAGE = 500
# Longest `symbol` / `strategy` filter accepted (longer names exist in no catalog).
MAX_NAME = 100

Limit = Annotated[int, msgspec.Meta(ge=1, le=MAX_PAGE, description="tasks per page")]
StreamId = Annotated[str, msgspec.Meta(max_length=41, description="a stream id such as 1700000000000-0")]
Name = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_NAME)]


class FieldProblem(msgspec.Struct, frozen=True):
    """One problem with a request: the field it concerns (`params.fast`, `task_id`; null for the
    body as a whole) and what is wrong with it."""

    field: str | None
    message: str


class ErrorBody(msgspec.Struct, frozen=True):
    """Every 4xx and 503 body: a machine-readable `error` code, a sentence, and the fields at fault."""

    error: str
    message: str
    fields: list[FieldProblem] = []


class SubmitReply(msgspec.Struct, frozen=True):
    """`202` to `POST /api/backtests`: the new task's id (or, for a replayed Idempotency-Key, the
    first submit's task and its status now)."""

    task_id: str
    status: Status


class TaskView(msgspec.Struct, frozen=True):
    """A task as the API shows it. Times are ISO 8601 UTC with milliseconds; `progress` is 0..1;
    `result` is the headline `metrics` and the `data` used (the full result is `…/result`);
    `spec` omits fields left at their defaults; `cancelled_by` appears only on a cancelled task."""

    task_id: str
    status: Status
    progress: float
    created_at: str
    started_at: str | None
    finished_at: str | None
    attempt: int
    worker: str | None
    error: str | None
    error_retryable: bool | None
    result: dict[str, Any] | None
    spec: BacktestSpec
    submitted_by: str | None
    cancelled_by: str | None | msgspec.UnsetType = msgspec.UNSET
    # Where the full result is: "store" (the results store), "redis" (stored before results left
    # Redis), "deleted" (retention removed it; the summary stays), "chunks" (a job's: its chunks'
    # results, put together when read), or None (no result yet).
    result_location: Literal["store", "redis", "deleted", "chunks"] | None = None
    # When retention deleted the full result (ISO 8601 UTC); only on such a task.
    result_deleted_at: str | msgspec.UnsetType = msgspec.UNSET
    # A job's chunks: how many, how many ended done or failed, the best so far; only on a job
    # (a request that fanned out over the fleet: streams.md, "Jobs").
    job: JobState | msgspec.UnsetType = msgspec.UNSET
    # A job's chunks by status right now (queued, running, completed, failed, cancelled), as the
    # projection holds them; only on a job, and only where the reader asked the projection.
    chunk_statuses: dict[str, int] | msgspec.UnsetType = msgspec.UNSET


class TaskPage(msgspec.Struct, frozen=True):
    """One page of `GET /api/backtests/tasks`, newest first; pass `next_cursor` as `cursor` for
    the next page (null: there is no next page)."""

    tasks: list[TaskView]
    next_cursor: str | None


class EventView(msgspec.Struct, frozen=True):
    """One event of a task's log: its stream `id`, `type` (submitted, started, progress, ...),
    `time` (ISO 8601 UTC), the task's `seq`uence number and `attempt`, and the event's own fields."""

    id: str
    type: str
    time: str
    task_id: str
    seq: int
    attempt: int
    data: dict[str, Any]


class ArchivedEvents(msgspec.Struct, frozen=True):
    """The first `events` events of a task that retention trimmed from the log: below which stream
    id, when, and through which id `backstream export` had archived the log (null: no archive)."""

    events: int
    log_starts_at: str | None
    archived_through: str | None
    trimmed_at: str | None
    message: str


class TaskEvents(msgspec.Struct, frozen=True):
    """`GET …/events`: the task's events in order; `archived` when retention trimmed the first ones."""

    task_id: str
    events: list[EventView]
    archived: ArchivedEvents | msgspec.UnsetType = msgspec.UNSET


class Attempt(msgspec.Struct, frozen=True):
    """One attempt of a dead-lettered task: who ran it, when, how it ended."""

    attempt: int
    worker: str | None
    started_at: str
    outcome: str | None
    error: str | None


class DeadLetter(msgspec.Struct, frozen=True):
    """A task that failed for good: the reason and every attempt."""

    id: str
    task_id: str
    attempt: int
    reason: str
    failed_event: str
    history: list[Attempt]


class DeadLetters(msgspec.Struct, frozen=True):
    """`GET /api/dead-letters`: one page of dead letters, newest first."""

    dead_letters: list[DeadLetter]


class Dataset(msgspec.Struct, frozen=True):
    """A symbol the server offers: first and last bar (ISO dates), number of rows, `bundled` or
    `user` (BACKSTREAM_DATA_DIR), and whether it has an Adj Close column."""

    symbol: str
    start: str
    end: str
    rows: int
    source: Literal["bundled", "user"]
    adjustable: bool = False


class Datasets(msgspec.Struct, frozen=True):
    """`GET /api/datasets`: every symbol a request may name, sorted by symbol."""

    datasets: list[Dataset]


class StrategyParam(msgspec.Struct, frozen=True):
    """One parameter of a strategy: `integer` or `number`, its bounds (null: unbounded; exclusive
    when the flag says so), its default (null: required) and what it means."""

    name: str
    type: Literal["integer", "number"]
    minimum: float | None
    maximum: float | None
    exclusive_minimum: bool
    exclusive_maximum: bool
    default: float | None
    description: str


class Strategy(msgspec.Struct, frozen=True):
    """A strategy a request may name: what it does, where it comes from (built in or a plugin's
    entry point), and its parameters."""

    name: str
    summary: str
    origin: str
    params: list[StrategyParam]


class LoadFailure(msgspec.Struct, frozen=True):
    """A strategy plugin that failed to load, and why."""

    entry_point: str
    error: str


class Strategies(msgspec.Struct, frozen=True):
    """`GET /api/strategies`: every strategy, the objectives a sweep may maximise, and plugins that
    failed to load."""

    strategies: list[Strategy]
    objectives: list[str]
    load_failures: list[LoadFailure] = []


class Health(msgspec.Struct, frozen=True):
    """`GET /healthz`: `ok`, or `unavailable` with the store's error."""

    status: Literal["ok", "unavailable"]
    error: str | None = None


# --- query strings (decoded with `msgspec.convert(dict(query), T, strict=False)`) ---


class TaskListQuery(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """`GET /api/backtests/tasks`. `symbol` (case-insensitive) and `strategy` filter while paging
    (no index): a page scans at most `orchestrator.storage.readmodel.FILTER_SCAN` tasks, so with a filter
    a page can hold fewer than `limit` tasks and still have a `next_cursor`."""

    status: Status | None = None
    limit: Limit = 50
    cursor: Annotated[str, msgspec.Meta(max_length=80, description="a next_cursor this API returned")] | None = None
    symbol: Name | None = None
    strategy: Name | None = None


ChunkIndex = Annotated[
    int, msgspec.Meta(ge=0, description="a next_cursor this API returned: the index of the page's first chunk")
]


class ChunkListQuery(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """`GET …/tasks/{id}/chunks`: `limit` chunks from index `cursor` (default 0) on."""

    limit: Limit = 50
    cursor: ChunkIndex | None = None


class ChunkPage(msgspec.Struct, frozen=True):
    """One page of a job's chunks in chunk order (index ascending, each chunk's `spec.chunk.index`),
    out of `total`; pass `next_cursor` as `cursor` for the next page (null: there is none). A
    task that may still fan out (a sweep or universe not yet planned) has `total` 0 and no chunks."""

    job_id: str
    total: int
    chunks: list[TaskView]
    next_cursor: int | None


class DeadLetterQuery(msgspec.Struct, frozen=True):
    """`GET /api/dead-letters`: newest first, those before the stream id `before` when given."""

    limit: Limit = 50
    before: StreamId | None = None


class TaskQuery(msgspec.Struct, frozen=True):
    """`GET /api/backtests/tasks/{id}`: `as_of` (a stream id or ISO 8601 time) shows the task as
    it was then."""

    as_of: Annotated[str, msgspec.Meta(max_length=64)] | None = None


def to_api(state: TaskState, chunk_statuses: dict[str, int] | None = None) -> dict[str, Any]:
    """The public JSON shape of a task: `orchestrator.domain.views.TaskView`, as builtins;
    `chunk_statuses`: a job's chunks by status (`ReadModel.chunk_counts`)."""
    view = TaskView(
        task_id=state.task_id,
        status=state.status,
        progress=state.progress,
        created_at=state.created_at,
        started_at=state.started_at,
        finished_at=state.finished_at,
        attempt=state.attempt,
        worker=state.worker,
        error=state.error,
        error_retryable=state.error_retryable,
        result=state.result,
        result_location=result_location(state),
        spec=state.spec,
        submitted_by=state.submitted_by,
        cancelled_by=state.cancelled_by if state.status == Status.CANCELLED else msgspec.UNSET,
        result_deleted_at=state.result_deleted_at if state.result_deleted_at is not None else msgspec.UNSET,
        job=state.job if state.job is not None else msgspec.UNSET,
        chunk_statuses=chunk_statuses if chunk_statuses is not None else msgspec.UNSET,
    )
    body: dict[str, Any] = msgspec.to_builtins(view)
    return body
