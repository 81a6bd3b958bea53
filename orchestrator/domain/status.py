"""A task's status: the one enumeration every layer names statuses by."""

from __future__ import annotations

import enum


class Status(enum.StrEnum):
    """Where a task is in its life. A StrEnum: each member equals its text, which is how events,
    hashes, index keys, Lua scripts (`lib.lua`) and the API spell it."""

    QUEUED = "queued"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


# Statuses that end a task's life: nothing more is written for it (but a failed task may be
# retried by hand, which starts it over).
TERMINAL_STATUSES = frozenset({Status.COMPLETED, Status.FAILED, Status.CANCELLED})
