"""Which failures are retried: only those that can pass on their own; an error the same input
raises again fails the task at once."""

from __future__ import annotations

import pytest
import redis.exceptions

from consumers.engine.errors import (
    CheckpointError,
    DatasetError,
    DataUnavailable,
    RepresentationError,
    SpecError,
    UnknownSymbolError,
)
from consumers.worker.assignment import UnreadableSpec
from consumers.worker.retry import TaskTimeout, is_retryable


@pytest.mark.parametrize(
    "error",
    [
        # Raised by the engine or a dependency on this input: the next attempt runs the same
        # input through the same code.
        OverflowError("Python int too large to convert to C long"),
        ValueError("cannot convert float NaN to integer"),
        ZeroDivisionError("float division by zero"),
        FloatingPointError("overflow encountered"),
        ArithmeticError("arithmetic"),
        TypeError("unsupported operand"),
        KeyError("fast"),
        IndexError("index 5 is out of bounds"),
        AssertionError(),
        RuntimeError("a bug"),
        # The engine's own, saying so for themselves.
        RepresentationError("2^53 units"),
        SpecError("cash: must be less than ..."),
        DatasetError("row 3: Close is not a number"),
        UnknownSymbolError("NOPE"),
        CheckpointError("another request"),
        TaskTimeout("ran past 60 s"),
    ],
    ids=lambda e: type(e).__name__,
)
def test_an_error_the_same_input_raises_again_is_not_retried(error: BaseException) -> None:
    assert is_retryable(error) is False


@pytest.mark.parametrize(
    "error",
    [
        ConnectionResetError("connection reset by peer"),
        ConnectionError("lost"),
        TimeoutError("timed out"),
        OSError(5, "Input/output error"),
        MemoryError(),
        redis.exceptions.ConnectionError("Connection refused"),
        redis.exceptions.TimeoutError("Timeout reading from socket"),
        DataUnavailable("the data directory is not mounted"),
        UnreadableSpec("unknown field `leverage`"),
    ],
    ids=lambda e: type(e).__name__,
)
def test_an_error_that_can_pass_on_its_own_is_retried(error: BaseException) -> None:
    assert is_retryable(error) is True
