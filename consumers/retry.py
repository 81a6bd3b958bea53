"""Which failures are worth another attempt, and how long to wait before it."""

from __future__ import annotations

import random

from consumers.engine.errors import EngineError
from orchestrator.settings import Settings


class TaskTimeout(Exception):
    """The task ran past its time limit. Not retried: it would time out again."""

    retryable = False


def is_retryable(error: BaseException) -> bool:
    """Engine errors say for themselves (bad data or a bad spec will fail again); anything
    else (a crash in a dependency, memory, I/O) may be transient, so it is retried."""
    if isinstance(error, (EngineError, TaskTimeout)):
        return bool(error.retryable)
    return True


def backoff_ms(attempt: int, settings: Settings, rng: random.Random | None = None) -> int:
    """Exponential backoff with jitter: uniformly in [d/2, d] for d = base * 2^(attempt-1),
    capped, so retries of many tasks that failed together spread out."""
    ceiling = min(settings.retry_cap_ms, settings.retry_base_ms * 2 ** max(0, attempt - 1))
    return int((rng or random).uniform(ceiling / 2, ceiling))
