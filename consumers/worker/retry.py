"""Which failures are worth another attempt, and how long to wait before it."""

from __future__ import annotations

import random

import structlog

from orchestrator.domain.events import Failed, RetryScheduled
from orchestrator.settings import Settings
from orchestrator.storage.connections import REDIS_UNAVAILABLE

log = structlog.get_logger("backstream.worker")


class TaskTimeout(Exception):
    """The task ran past its time limit. Not retried: it would time out again."""

    retryable = False


# Failures that can pass on their own, whatever the input: a lost connection or a timeout (to
# Redis or anything else), other I/O (a file being replaced, a full disk), and memory (the other
# tasks this worker runs may have held it). Attempts are capped, so one that is not transient
# after all costs at most BACKSTREAM_MAX_ATTEMPTS runs.
TRANSIENT: tuple[type[BaseException], ...] = (OSError, MemoryError, *REDIS_UNAVAILABLE)


def is_retryable(error: BaseException) -> bool:
    """Whether another attempt of the same task could succeed.

    An error that says so for itself (a `retryable` attribute: every EngineError, TaskTimeout,
    UnreadableSpec) is believed. Otherwise only TRANSIENT errors are retried: anything else
    (OverflowError, ValueError, ArithmeticError, TypeError... raised by the engine or a
    dependency) comes from the input and the code, which a retry runs again unchanged, so it
    would fail the same way; the task fails at once, and `POST .../retry` can requeue it
    after a fix.
    """
    says = getattr(error, "retryable", None)
    if isinstance(says, bool):
        return says
    return isinstance(error, TRANSIENT)


def backoff_ms(attempt: int, settings: Settings, rng: random.Random | None = None) -> int:
    """Exponential backoff with jitter: uniformly in [d/2, d] for d = base * 2^(attempt-1),
    capped, so retries of many tasks that failed together spread out."""
    ceiling = min(settings.retry_cap_ms, settings.retry_base_ms * 2 ** max(0, attempt - 1))
    return int((rng or random).uniform(ceiling / 2, ceiling))


def failure_event(
    error: Exception, *, task_id: str, attempt: int, failures: int, settings: Settings
) -> Failed | RetryScheduled:
    """The outcome of an attempt that raised `error`: a retry after `backoff_ms` when the error
    is retryable and the task's budget (`failures` charged so far, of `settings.max_attempts`)
    allows another attempt; else a failure (dead-lettered). Logs which."""
    message = str(error) or type(error).__name__
    kind = type(error).__name__
    if is_retryable(error) and failures + 1 < settings.max_attempts:
        delay = backoff_ms(attempt, settings)
        log.warning("task.attempt_failed", error=message, error_type=kind, retry_in_ms=delay)
        return RetryScheduled(task_id=task_id, attempt=attempt, error=message, error_type=kind, delay_ms=delay)
    log.warning("task.failed", error=message, error_type=kind)
    return Failed(task_id=task_id, attempt=attempt, error=message, error_type=kind, retryable=is_retryable(error))
