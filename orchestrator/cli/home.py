"""The embedded store's home: the lock, the valkey-server it runs, and how other commands find them.

A home directory holds (see README "Where your work lives"):

- `lock`: held with flock(2) by the one process that runs the store (`backstream up`, or an offline
  command such as `audit` when no `up` is running). The kernel releases it when that process ends,
  however it ends, so a lock is never stale.
- `owner.json`: who holds the lock, where its store listens and where its API serves; written once the
  store answers, removed on a clean stop. Readers trust it only while the lock is held.
- `store/`: valkey-server's directory (`appendonlydir/`, append-only persistence, fsync every second).
- `valkey.sock`: the store's unix socket (in a private temporary directory when the home's path is too
  long for a socket address); `valkey.log`: the server's log.
"""

from __future__ import annotations

import fcntl
import os
import threading
import time
from pathlib import Path

import msgspec

# How long a reader waits for a lock holder that is still starting to publish `owner.json`.
OWNER_WAIT_S = 30.0

HOME_HELP = (
    "the embedded store's directory (default: BACKSTREAM_HOME, else backstream under the user's data "
    "directory, e.g. ~/.local/share/backstream); unused when REDIS_URL is set"
)


class HomeError(Exception):
    """The home cannot serve this command; the message says why and what to do."""


class HomeBusy(HomeError):
    """Another process holds the home's lock."""


class Owner(msgspec.Struct, frozen=True):
    """What `owner.json` records: the lock holder's pid and command, its store's URL (None: an
    in-process store nobody else can reach) and its API's URL (None: it serves no API)."""

    pid: int
    command: str
    store_url: str | None
    api_url: str | None = None


def _lock_free(path: Path) -> bool:
    """Whether nobody holds the lock at `path` (a missing file is free)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    finally:
        os.close(fd)


def read_owner(home: Path) -> Owner | None:
    """What `owner.json` says, or None when it is missing or unreadable; trust it only while the
    lock is held (see running_owner)."""
    try:
        return msgspec.json.decode((home / "owner.json").read_bytes(), type=Owner)
    except (FileNotFoundError, msgspec.DecodeError):
        return None


def running_owner(home: Path, *, wait_s: float = OWNER_WAIT_S) -> Owner | None:
    """The process that runs the home's store now, or None when none does. While the lock is
    held but the holder has not yet published where its store listens, waits up to `wait_s`."""
    deadline = time.monotonic() + wait_s
    pause = threading.Event()
    while True:
        if _lock_free(home / "lock"):
            return None
        owner = read_owner(home)
        if owner is not None and _alive(owner.pid):
            return owner
        if time.monotonic() > deadline:
            return None
        pause.wait(0.05)


def running_api_url(home: Path) -> str | None:
    """The API URL of the `backstream up` running on `home`, if one is (for the HTTP client
    commands when neither --url nor BACKSTREAM_URL is given)."""
    owner = running_owner(home)
    return owner.api_url if owner else None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def api_host(host: str) -> str:
    """The address a local client uses for an API bound to `host` (a wildcard bind is reached on
    loopback)."""
    if host in ("0.0.0.0", ""):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host
