"""The exceptions of the orchestrator, under one root."""


class BackstreamError(Exception):
    """Root of everything Backstream raises on purpose."""


class EventDecodeError(BackstreamError):
    """A stream entry is not an event this version understands. The projector stops on it."""


class ProjectionGapError(BackstreamError):
    """An event arrived out of sequence for its task: something before it is missing."""


class TaskNotFound(BackstreamError):
    """No task has the id `task_id` (never submitted, or its state was deleted)."""

    def __init__(self, task_id: str) -> None:
        super().__init__(f"task {task_id} does not exist")
        self.task_id = task_id


class TaskConflict(BackstreamError):
    """A command that the task's current state does not allow (e.g. cancelling a completed task)."""

    def __init__(self, task_id: str, status: str, message: str) -> None:
        super().__init__(message)
        self.task_id = task_id
        self.status = status


class IdempotencyConflict(BackstreamError):
    """An Idempotency-Key was reused with a request body other than the first one's."""

    def __init__(self, key: str) -> None:
        super().__init__(f"Idempotency-Key {key!r} was already used with a different request body")
        self.key = key


class DataUnavailable(BackstreamError):
    """The market data a request names cannot be read now (a missing directory, an I/O error).
    Unlike invalid data this may pass, so the API answers 503 and a worker retries."""
