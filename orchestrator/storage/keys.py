"""Every stream, group and key Backstream uses, with its retention. Mirrors streams.md."""

from __future__ import annotations

import msgspec

from orchestrator.settings import DEFAULT_PREFIX

# The consumer group of the workers on the work stream.
WORKER_GROUP = "workers"

# The projection the API serves unless the pointer key names another (after a rebuild).
DEFAULT_PROJECTION = "proj"

# A result staged for `finish.lua` lives microseconds; this only bounds one a crash left behind.
STAGED_RESULT_TTL_MS = 3600 * 1000

# A heartbeat silent this long is dropped from its set by the next beat of any process: a worker
# or projector that died (or was renamed) stays listed as silent for a day, then goes.
HEARTBEAT_KEEP_MS = 24 * 3600 * 1000

# A task's log index is named `control(task_id) + TASK_LOG_SUFFIX` (see `Keys.task_prefix`).
TASK_LOG_SUFFIX = ":log"

# An Idempotency-Key is remembered this long; a client retrying a submit after a day is a new submit.
IDEMPOTENCY_TTL_SECONDS = 24 * 3600


class Keys(msgspec.Struct, frozen=True):
    """Key names under one prefix. The projection lives under its own name, so a replay can
    fold the log into fresh keys beside the live projection."""

    prefix: str = DEFAULT_PREFIX
    projection_name: str = DEFAULT_PROJECTION

    # The event log: every event of every task, in order. The source of truth; never trimmed
    # by the system except by an explicit retention policy.
    @property
    def events(self) -> str:
        return f"{self.prefix}:events"

    # Work items (one per attempt to run a task), read by the worker group; each is acknowledged
    # and deleted (XACK + XDEL) in the script that ends its attempt.
    @property
    def work(self) -> str:
        return f"{self.prefix}:work"

    # Tasks waiting out a retry delay: a sorted set of task ids scored by the ms they are due.
    @property
    def delayed(self) -> str:
        return f"{self.prefix}:delayed"

    # Tasks that failed for good, with the reason: an operator's to-do list. Trimmed only by
    # the retention policy.
    @property
    def dead_letters(self) -> str:
        return f"{self.prefix}:dead"

    # The strategies each worker can run: a hash of worker name -> JSON list of names, written
    # when a worker starts and removed when it stops cleanly, read by the workers page. One
    # field per worker name, so it stays as small as the set of names in use.
    @property
    def worker_strategies(self) -> str:
        return f"{self.prefix}:workers:strategies"

    # The write model of a task: the few fields the command scripts check (status, attempt,
    # seq, owner). Kept for the task's lifetime.
    def control(self, task_id: str) -> str:
        return f"{self.task_prefix}{task_id}"

    # The ids of a task's events in the log, in order: its audit trail index.
    def task_log(self, task_id: str) -> str:
        return f"{self.control(task_id)}{TASK_LOG_SUFFIX}"

    # What a task's control key is named from: `control(id)` is this followed by the id.
    # `take.lua` reads work items and claims their tasks in one call, so it cannot be given
    # their keys (the ids come from its own read): it gets this and TASK_LOG_SUFFIX instead and
    # joins them around each id, naming the keys exactly as `control` and `task_log` do. They
    # share the work stream's hash tag (in the prefix), so they are in its slot on a cluster.
    @property
    def task_prefix(self) -> str:
        return f"{self.prefix}:task:"

    # The full result of a completed task (equity curve, trades, sweep table), JSON.
    def result(self, task_id: str) -> str:
        return f"{self.prefix}:task:{task_id}:result"

    # A completing attempt's full result, SET just before `finish.lua`, which renames it to the
    # result key if the attempt's outcome is accepted and deletes it if not.
    def staged_result(self, task_id: str, attempt: int) -> str:
        return f"{self.prefix}:task:{task_id}:staged-result:{attempt}"

    # Each worker's heartbeat: a sorted set of worker names scored by the Redis time (ms) of its
    # last beat, written on a timer by the worker itself (`beat.lua`). Liveness comes from here,
    # not from XINFO CONSUMERS' idle time, which reads that deliver nothing do not reset before
    # Redis 7.2. A worker that stops cleanly removes itself; others leave after HEARTBEAT_KEEP_MS.
    @property
    def worker_heartbeats(self) -> str:
        return f"{self.prefix}:heartbeats:workers"

    # The same for the live projectors (named `<host>-<pid>`).
    @property
    def projector_heartbeats(self) -> str:
        return f"{self.prefix}:heartbeats:projectors"

    # An Idempotency-Key's claim: `<task id>|<body sha256>`, for IDEMPOTENCY_TTL_SECONDS.
    def idempotency(self, key: str) -> str:
        return f"{self.prefix}:idem:{key}"

    # --- the projection (derived; can be dropped and rebuilt from the log) ---

    # The name of the projection the API serves and the live projector maintains. A rebuild
    # folds the log into a new name and switches this pointer atomically once caught up.
    @property
    def live_projection(self) -> str:
        return f"{self.prefix}:projection"

    # The names of projections being built or kept besides the default one; retention trims the
    # log only below every projection's position.
    @property
    def projections(self) -> str:
        return f"{self.prefix}:projections"

    # The id up to which the log has been exported to an archive without a gap.
    @property
    def archived_through(self) -> str:
        return f"{self.prefix}:archived-through"

    # What the last retention run left (a hash: `log_starts_at`, the id the log holds nothing
    # older than; `archived_through`, what `backstream export` had written by then; `at_ms`), so
    # a reader can say where a task's trimmed history went. Overwritten by each run.
    @property
    def retention(self) -> str:
        return f"{self.prefix}:retention"

    @property
    def projection_root(self) -> str:
        return f"{self.prefix}:{self.projection_name}"

    def projected_task(self, task_id: str) -> str:
        return f"{self.projection_root}:task:{task_id}"

    # The id of the last event folded into this projection, written with the state it produced.
    @property
    def projection_position(self) -> str:
        return f"{self.projection_root}:position"

    # Tasks newest first: a sorted set ordered by member (`<submit id>|<task id>`), all scores 0.
    def projected_index(self, status: str | None = None) -> str:
        return f"{self.projection_root}:index:{status or 'all'}"

    def with_projection(self, name: str) -> Keys:
        return Keys(prefix=self.prefix, projection_name=name)
