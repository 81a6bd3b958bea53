"""The results store's errors: one root, so a caller can catch any of them at once."""

from __future__ import annotations


class ResultsError(Exception):
    """Root of the results store's errors (also raised as is for a manifest newer than this
    Backstream reads)."""


class ResultGone(ResultsError):
    """The result's objects are no longer in the store (deleted by retention, or never found)."""


class QueryError(ResultsError):
    """A bad `sort`/`where`/`limit` for a table: `field` names the query parameter."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
