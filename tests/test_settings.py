"""Settings from the environment: a value that cannot be read names its variable."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from orchestrator.settings import Settings


@pytest.mark.parametrize(
    ("name", "value", "says"),
    [
        ("BACKSTREAM_LEASE_MS", "abc", "is not an integer"),
        ("BACKSTREAM_LEASE_MS", "1.5", "is not an integer"),
        ("BACKSTREAM_TASK_TIMEOUT_S", "soon", "is not a number"),
        ("BACKSTREAM_TASK_TIMEOUT_S", "nan", "is not a finite number"),
        ("BACKSTREAM_SHUTDOWN_GRACE_S", "inf", "is not a finite number"),
    ],
)
def test_a_number_that_is_not_one_names_its_variable(name: str, value: str, says: str) -> None:
    with pytest.raises(ValueError, match=f"^{name}='{value}' {says}$"):
        Settings.from_env({name: value})


def test_numbers_read_as_their_defaults_type() -> None:
    settings = Settings.from_env({"BACKSTREAM_LEASE_MS": " 2500 ", "BACKSTREAM_TASK_TIMEOUT_S": "90", "X": ""})
    assert (settings.lease_ms, settings.task_timeout_s) == (2500, 90.0)
    assert Settings.from_env({"BACKSTREAM_LEASE_MS": ""}).lease_ms == Settings().lease_ms


def test_the_command_says_which_setting_is_wrong_and_exits_2() -> None:
    env = {**os.environ, "BACKSTREAM_HEARTBEAT_MS": "often"}
    done = subprocess.run(
        [sys.executable, "-m", "orchestrator.cli", "status", "x"], env=env, capture_output=True, text=True, timeout=60
    )
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr == "backstream: BACKSTREAM_HEARTBEAT_MS='often' is not an integer\n"
