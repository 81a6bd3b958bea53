"""The engine's exceptions: one root, and whether a retry could help."""

from __future__ import annotations

from orchestrator.domain import errors as domain


class EngineError(Exception):
    """Root of every error the engine raises on purpose.

    `retryable` tells the worker whether running the same task again could succeed: bad data
    and bad requests fail the same way every time, so they are not retryable.
    """

    retryable: bool = True


class DatasetError(EngineError):
    """A data file is missing, unreadable or invalid; the message names the file and row."""

    retryable = False

    def __init__(self, message: str, *, path: str | None = None, row: int | None = None) -> None:
        super().__init__(message)
        self.path = path
        self.row = row


class DataUnavailable(DatasetError, domain.DataUnavailable):
    """The data could not be read at all (a missing directory, an I/O error): unlike invalid
    contents, this may pass (a remounted share, a file being replaced), so it is retried.

    Also the core's `orchestrator.domain.errors.DataUnavailable`, which the `SpecChecker` port
    promises: a caller of the port catches that one and never names the engine's."""

    retryable = True


class UnknownSymbolError(DatasetError):
    """The requested symbol is in neither the bundled data nor the user's data directory."""


class InvalidSymbolError(UnknownSymbolError):
    """The requested text cannot name any dataset (see `csvdata.SYMBOL_RULE`)."""


class SpecError(EngineError):
    """The request fails `check_spec`; `errors` holds the field errors."""

    retryable = False

    def __init__(self, message: str, errors: list[object] | None = None) -> None:
        super().__init__(message)
        self.errors = errors or []


class CheckpointError(EngineError):
    """A checkpoint does not belong to this request or this data; start the task over instead."""

    retryable = False


class RepresentationError(EngineError):
    """A value of the run is beyond what the engine represents (see `limits.py`): the same
    input reaches it again, so it is not retryable."""

    retryable = False
