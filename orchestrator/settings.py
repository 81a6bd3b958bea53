"""Settings, read once from the environment at the edge and passed in explicitly."""

from __future__ import annotations

import math
import os
import re
import sys
import urllib.parse
from collections.abc import Mapping
from typing import TypeVar

import msgspec

N = TypeVar("N", int, float)

# All keys of one deployment share the hash tag in the prefix (`{bs}` by default), so every
# script's keys live in one Redis Cluster slot and the scripts stay atomic there too.
DEFAULT_PREFIX = "{bs}"


class ApiToken(msgspec.Struct, frozen=True):
    """A bearer token of the API: its owner's name (recorded as `by` in events) and whether it may
    write (submit, cancel, retry) or only read."""

    owner: str
    secret: str
    can_write: bool = True

    def __repr__(self) -> str:
        return f"ApiToken(owner={self.owner!r}, can_write={self.can_write})"


def parse_tokens(text: str) -> tuple[ApiToken, ...]:
    """`owner:secret[:rw|ro]` entries separated by commas or newlines; `#` starts a comment.
    The mode defaults to rw; a secret may itself contain `:`."""
    tokens = []
    for raw in re.split(r"[,\n]", text):
        entry = raw.split("#", 1)[0].strip()
        if not entry:
            continue
        parts = entry.split(":")
        mode = "rw"
        if len(parts) >= 3 and parts[-1] in ("rw", "ro"):
            mode = parts.pop()
        owner, secret = parts[0].strip(), ":".join(parts[1:]).strip()
        if len(parts) < 2 or not owner or not secret:
            raise ValueError(f"token entry {parts[0]!r}…: expected owner:secret[:rw|ro]")
        tokens.append(ApiToken(owner=owner, secret=secret, can_write=mode == "rw"))
    if len({t.secret for t in tokens}) != len(tokens):
        raise ValueError("two token entries share one secret; give every owner their own")
    return tuple(tokens)


_DEFAULT_PORTS = {"http": 80, "https": 443}


def normalize_origin(text: str) -> str:
    """`scheme://host[:port]` in canonical form (lower case, default port dropped), as browsers
    send in `Origin`. Raises ValueError for anything else (a path, a query, user info, `null`)."""
    parts = urllib.parse.urlsplit(text.strip())
    if parts.scheme not in _DEFAULT_PORTS or not parts.hostname:
        raise ValueError(f"{text!r} is not an origin such as https://backstream.example.com")
    if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username or parts.password:
        raise ValueError(f"{text!r} is not an origin: only scheme://host[:port], no path")
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"{text!r} has a bad port") from None
    host = parts.hostname
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    return f"{parts.scheme}://{host}" + ("" if port in (None, _DEFAULT_PORTS[parts.scheme]) else f":{port}")


def parse_origins(text: str) -> tuple[str, ...]:
    """Comma-separated origins (BACKSTREAM_ALLOWED_ORIGINS), each normalized; ValueError names a bad one."""
    return tuple(normalize_origin(o) for o in text.split(",") if o.strip())


def _env_number(env: Mapping[str, str], name: str, default: N) -> N:
    """The number in variable `name` of `env` (`default` when unset or empty), of `default`'s type.
    Raises ValueError naming the variable for anything else, `nan` and infinities included."""
    text = env.get(name, "").strip()
    if not text:
        return default
    kind = type(default)
    try:
        value = kind(text)
    except ValueError:
        raise ValueError(f"{name}={text!r} is not {'an integer' if kind is int else 'a number'}") from None
    if not math.isfinite(value):
        raise ValueError(f"{name}={text!r} is not a finite number")
    return value


# Task ids carry their partition in two bytes (storage/partitions.py).
MAX_PARTITIONS = 1 << 16


def _partitions(env: Mapping[str, str]) -> int | None:
    """BACKSTREAM_PARTITIONS: None when unset (the store's default), else 1 to MAX_PARTITIONS.
    Raises ValueError naming the variable for anything else."""
    count = _env_number(env, "BACKSTREAM_PARTITIONS", 0)
    if not env.get("BACKSTREAM_PARTITIONS", "").strip():
        return None
    if not 1 <= count <= MAX_PARTITIONS:
        raise ValueError(f"BACKSTREAM_PARTITIONS={count} is not 1 to {MAX_PARTITIONS}")
    return count


def default_home(env: Mapping[str, str]) -> str:
    """Where the embedded store lives unless BACKSTREAM_HOME or --home says otherwise: the
    user's data directory ($XDG_DATA_HOME, else ~/Library/Application Support on macOS, else
    ~/.local/share), then `backstream`."""
    user = env.get("HOME") or os.path.expanduser("~")
    if env.get("XDG_DATA_HOME"):
        base = env["XDG_DATA_HOME"]
    elif sys.platform == "darwin":
        base = os.path.join(user, "Library", "Application Support")
    else:
        base = os.path.join(user, ".local", "share")
    return os.path.join(base, "backstream")


DEFAULT_API_URL = "http://127.0.0.1:8000"


class Settings(msgspec.Struct, frozen=True, kw_only=True):
    """Every setting of a process, read once from the environment (`from_env`) and passed in
    explicitly; durations in ms unless a name says otherwise."""

    # None means the embedded store: a valkey-server that `backstream up` runs on `home` (or an
    # in-process fake Redis where no valkey-server wheel exists).
    redis_url: str | None = None
    # The embedded store's directory (BACKSTREAM_HOME or --home; default under the user's data
    # directory); not the user's CSV files (data_dir).
    home: str | None = None
    prefix: str = DEFAULT_PREFIX
    # Partitions new tasks are spread over (BACKSTREAM_PARTITIONS), fixed when the deployment is
    # created; None: 16 on a Redis Cluster, 1 on a standalone server (storage/partitions.py).
    partitions: int | None = None
    # Replicas that must have an API command's write (submit, cancel, requeue) before it is
    # answered (BACKSTREAM_REPLICA_ACKS; WAIT on the partition's node). 0: answer once the master
    # applied it; replication stays asynchronous (see streams.md, "On a Redis Cluster").
    replica_acks: int = 0
    data_dir: str | None = None
    # A worker that has not renewed its lease for this long is presumed dead; its task is reclaimed.
    lease_ms: int = 15_000
    # How often a running task renews its lease and checks for a cancel.
    heartbeat_ms: int = 1_000
    # Threads a worker process computes on (chunks, outcomes), whatever its concurrency: the GIL
    # lets one compute at a time, so more only trade it back and forth. Scale with processes.
    compute_threads: int = 1
    # Progress events are coalesced to at most one per task per this interval.
    progress_interval_ms: int = 250
    # Attempts a task gets (first run included) before it fails for good and is dead-lettered.
    max_attempts: int = 3
    # Retry delays grow as base * 2^(attempt-1), capped, with full jitter in the upper half.
    retry_base_ms: int = 1_000
    retry_cap_ms: int = 60_000
    # A task running longer than this is stopped and failed (a spec may ask for less).
    task_timeout_s: float = 3_600.0
    # A job is cut into chunks that compute for about this long each (streams.md, "Jobs"):
    # long enough that a chunk's overhead is under 1% of it, short enough to spread a job over
    # every worker and to lose little when one dies.
    chunk_seconds: float = 0.3
    # A task computing longer than this saves its state this often, and an attempt that takes it
    # over (after a lost worker or a retry) resumes from there (streams.md, "Checkpoints").
    checkpoint_s: float = 5.0
    # On SIGTERM a worker lets running tasks finish this long, then releases the rest.
    shutdown_grace_s: float = 10.0
    # /readyz answers 503 once the oldest log entry the projector has not applied is older than
    # this (the projector is stuck or far behind), or no projector has beaten within the lease.
    ready_max_lag_s: float = 30.0
    # The longest a request body may be; larger bodies are refused with 413.
    max_body_bytes: int = 64 * 1024
    # Open SSE streams one client may hold at once (per token owner; per client address when
    # access control is off); more are refused with 429. A browser tab holds one or two.
    sse_streams_per_client: int = 16
    # API bearer tokens (BACKSTREAM_TOKENS, or one per line in BACKSTREAM_TOKENS_FILE). None
    # configured: the API is open (fine on the default loopback bind; a warning otherwise).
    tokens: tuple[ApiToken, ...] = ()
    # Origins besides the request's own (scheme://host[:port]) whose pages may change state: the
    # public origin when a proxy rewrites Host or terminates TLS (BACKSTREAM_ALLOWED_ORIGINS).
    allowed_origins: tuple[str, ...] = ()
    # The `backstream submit/status/ls/...` client: the API it talks to, and its token.
    api_url: str = DEFAULT_API_URL
    api_token: str | None = None
    # Where full results go (BACKSTREAM_RESULTS_URL: file:///dir or s3://bucket/prefix); unset,
    # `results/` in the home, with or without REDIS_URL (see `results_location`).
    results_url: str | None = None
    # The AWS_* variables (credentials, region, AWS_ENDPOINT_URL, ...) for an s3:// results URL.
    results_options: dict[str, str] = msgspec.field(default_factory=dict)
    # One upload or download of a result taking longer than this fails (and an upload is retried).
    results_timeout_s: float = 60.0

    def results_location(self) -> str | None:
        """The results store's URL: BACKSTREAM_RESULTS_URL, else `file://<home>/results`. None
        only for settings built in code with neither (tests): full results then stay in Redis,
        the way they were stored before the results store."""
        if self.results_url:
            return self.results_url
        if self.home:
            return "file://" + os.path.join(os.path.abspath(self.home), "results")
        return None

    def __repr__(self) -> str:
        # The URL may carry a password.
        return (
            f"Settings(redis_url={'<set>' if self.redis_url else None}, prefix={self.prefix!r}, "
            f"tokens=<{len(self.tokens)} set>, api_token={'<set>' if self.api_token else None}, "
            f"results_url={self.results_url!r}, results_options=<{len(self.results_options)} set>)"
        )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """The settings `environ` (default: os.environ) gives, defaults for the rest. Raises
        ValueError naming the variable when one cannot be read (a number that is not one, a
        token entry or origin that does not parse), OSError when BACKSTREAM_TOKENS_FILE cannot."""
        env = os.environ if environ is None else environ
        defaults = cls()
        tokens = parse_tokens(env.get("BACKSTREAM_TOKENS", ""))
        if env.get("BACKSTREAM_TOKENS_FILE"):
            with open(env["BACKSTREAM_TOKENS_FILE"], encoding="utf-8") as f:
                tokens += parse_tokens(f.read())
        if len({t.secret for t in tokens}) != len(tokens):
            raise ValueError("BACKSTREAM_TOKENS and BACKSTREAM_TOKENS_FILE share a secret; give every owner their own")
        return cls(
            redis_url=env.get("REDIS_URL") or None,
            home=env.get("BACKSTREAM_HOME") or default_home(env),
            results_url=env.get("BACKSTREAM_RESULTS_URL") or None,
            results_options={k: v for k, v in env.items() if k.startswith("AWS_")},
            results_timeout_s=_env_number(env, "BACKSTREAM_RESULTS_TIMEOUT_S", defaults.results_timeout_s),
            prefix=env.get("BACKSTREAM_PREFIX", defaults.prefix),
            partitions=_partitions(env),
            replica_acks=max(0, _env_number(env, "BACKSTREAM_REPLICA_ACKS", defaults.replica_acks)),
            data_dir=env.get("BACKSTREAM_DATA_DIR") or None,
            lease_ms=_env_number(env, "BACKSTREAM_LEASE_MS", defaults.lease_ms),
            heartbeat_ms=_env_number(env, "BACKSTREAM_HEARTBEAT_MS", defaults.heartbeat_ms),
            compute_threads=_env_number(env, "BACKSTREAM_COMPUTE_THREADS", defaults.compute_threads),
            progress_interval_ms=_env_number(env, "BACKSTREAM_PROGRESS_INTERVAL_MS", defaults.progress_interval_ms),
            max_attempts=_env_number(env, "BACKSTREAM_MAX_ATTEMPTS", defaults.max_attempts),
            retry_base_ms=_env_number(env, "BACKSTREAM_RETRY_BASE_MS", defaults.retry_base_ms),
            retry_cap_ms=_env_number(env, "BACKSTREAM_RETRY_CAP_MS", defaults.retry_cap_ms),
            task_timeout_s=_env_number(env, "BACKSTREAM_TASK_TIMEOUT_S", defaults.task_timeout_s),
            chunk_seconds=_env_number(env, "BACKSTREAM_CHUNK_SECONDS", defaults.chunk_seconds),
            checkpoint_s=_env_number(env, "BACKSTREAM_CHECKPOINT_S", defaults.checkpoint_s),
            shutdown_grace_s=_env_number(env, "BACKSTREAM_SHUTDOWN_GRACE_S", defaults.shutdown_grace_s),
            sse_streams_per_client=_env_number(
                env, "BACKSTREAM_SSE_STREAMS_PER_CLIENT", defaults.sse_streams_per_client
            ),
            ready_max_lag_s=_env_number(env, "BACKSTREAM_READY_MAX_LAG_S", defaults.ready_max_lag_s),
            tokens=tokens,
            allowed_origins=parse_origins(env.get("BACKSTREAM_ALLOWED_ORIGINS", "")),
            api_url=env.get("BACKSTREAM_URL") or defaults.api_url,
            api_token=env.get("BACKSTREAM_TOKEN") or None,
        )
