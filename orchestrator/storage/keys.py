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

# A checkpoint outlives its task's last save by this much at most (a crash between a save and the
# task's end leaves it behind; the scripts that end a task delete it).
CHECKPOINT_TTL_MS = 24 * 3600 * 1000

# A heartbeat silent this long is dropped from its set by the next beat of any process: a worker
# or projector that died (or was renamed) stays listed as silent for a day, then goes.
HEARTBEAT_KEEP_MS = 24 * 3600 * 1000


def event_field(seq: int) -> str:
    """The field of a task's control hash that holds the stream id of its event number `seq`
    (1-based, the event's `seq`): the task's log index, which the scripts write in the HSET they
    make anyway (`lib.lua`, `event_field`). Tasks written before the index moved here have it in
    the list `Keys.task_log`."""
    return f"e:{seq}"


# An Idempotency-Key is remembered this long; a client retrying a submit after a day is a new submit.
IDEMPOTENCY_TTL_SECONDS = 24 * 3600


class Keys(msgspec.Struct, frozen=True):
    """Key names under one prefix. The projection lives under its own name, so a replay can
    fold the log into fresh keys beside the live projection."""

    prefix: str = DEFAULT_PREFIX
    projection_name: str = DEFAULT_PROJECTION

    @property
    def events(self) -> str:
        """The event log: every event of every task, in order. The source of truth; never trimmed by the
        system except by an explicit retention policy."""
        return f"{self.prefix}:events"

    @property
    def work(self) -> str:
        """Work items (one per attempt to run a task), read by the worker group; each is acknowledged and
        deleted (XACK + XDEL) in the script that ends its attempt."""
        return f"{self.prefix}:work"

    @property
    def delayed(self) -> str:
        """Tasks waiting out a retry delay: a sorted set of task ids scored by the ms they are due."""
        return f"{self.prefix}:delayed"

    @property
    def dead_letters(self) -> str:
        """Tasks that failed for good, with the reason: an operator's to-do list. Trimmed only by the
        retention policy."""
        return f"{self.prefix}:dead"

    @property
    def worker_strategies(self) -> str:
        """The strategies each worker can run: a hash of worker name -> JSON list of names, written when a
        worker starts and removed when it stops cleanly, read by the workers page. One field per worker
        name, so it stays as small as the set of names in use."""
        return f"{self.prefix}:workers:strategies"

    def control(self, task_id: str) -> str:
        """The write model of a task: the few fields the command scripts check (status, attempt, seq,
        owner). Kept for the task's lifetime."""
        return f"{self.task_prefix}{task_id}"

    def task_log(self, task_id: str) -> str:
        """The list of a task's event ids that versions before the index moved into the control
        hash (`event_field`) wrote: still read for their tasks, and dropped with them; nothing
        writes it any more."""
        return f"{self.control(task_id)}:log"

    def task_scope(self, task_id: str) -> list[str]:
        """The first KEYS of every script that appends a task's event, in this order: its control
        hash and the events stream (`lib.lua` reads them so)."""
        return [self.control(task_id), self.events]

    @property
    def task_prefix(self) -> str:
        """What a task's control key is named from: `control(id)` is this followed by the id. `take.lua`
        reads work items and claims their tasks in one call, so it cannot be given their keys (the ids
        come from its own read): it gets this instead and joins it to each id, naming the key exactly
        as `control` does. It shares the work stream's hash tag (in the prefix), so it is in its slot
        on a cluster."""
        return f"{self.prefix}:task:"

    def checkpoint(self, task_id: str) -> str:
        """A running task's last saved state (JSON), written by its attempt every
        `BACKSTREAM_CHECKPOINT_S` (`checkpoint.lua`, fenced) and read by the attempt that takes it
        over, which resumes from it. Deleted when the task ends; CHECKPOINT_TTL_MS bounds one left
        behind. Named `control(task_id) + ":checkpoint"`: the scripts that end a task name it so."""
        return f"{self.control(task_id)}:checkpoint"

    def job(self, task_id: str) -> str:
        """A job's aggregate while its chunks run (streams.md, "Jobs"): a hash of `total`, `done`,
        `failed` and `allowed` chunks, `combinations`, the last `percent` reported, the best
        chunk's rank (`best_bankrupt`, `best_score`, `best_index`) and summary (`best`), and the
        `missing` ranges of failed chunks. A fixed set of fields, whatever the number of chunks.
        Named `control(task_id) + ":job"`: the chunks' scripts name it so from their own key."""
        return f"{self.control(task_id)}:job"

    def job_chunks(self, task_id: str) -> str:
        """A job's chunk task ids in chunk order (a list), for a cancel or a failure of the job to
        reach every chunk in one script. Named `control(task_id) + ":chunks"`."""
        return f"{self.control(task_id)}:chunks"

    def result(self, task_id: str) -> str:
        """The full result of a completed task (equity curve, trades, sweep table), JSON."""
        return f"{self.prefix}:task:{task_id}:result"

    def staged_result(self, task_id: str, attempt: int) -> str:
        """A completing attempt's full result, SET just before `finish.lua`, which renames it to the result
        key if the attempt's outcome is accepted and deletes it if not."""
        return f"{self.prefix}:task:{task_id}:staged-result:{attempt}"

    @property
    def worker_heartbeats(self) -> str:
        """Each worker's heartbeat: a sorted set of worker names scored by the Redis time (ms) of its last
        beat, written on a timer by the worker itself (`beat.lua`). Liveness comes from here, not from
        XINFO CONSUMERS' idle time, which reads that deliver nothing do not reset before Redis 7.2. A
        worker that stops cleanly removes itself; others leave after HEARTBEAT_KEEP_MS."""
        return f"{self.prefix}:heartbeats:workers"

    @property
    def projector_heartbeats(self) -> str:
        """The same for the live projectors (named `<host>-<pid>`)."""
        return f"{self.prefix}:heartbeats:projectors"

    @property
    def projector_lease(self) -> str:
        """Which live projector folds this partition: its name, with a TTL it renews (`lease.lua`);
        a projector that dies stops renewing, so the lease expires and another one takes it."""
        return f"{self.prefix}:projector-lease"

    def idempotency(self, key: str) -> str:
        """An Idempotency-Key's claim: `<task id>|<body sha256>`, for IDEMPOTENCY_TTL_SECONDS."""
        return f"{self.prefix}:idem:{key}"

    # --- the projection (derived; can be dropped and rebuilt from the log) ---

    @property
    def live_projection(self) -> str:
        """The name of the projection the API serves and the live projector maintains. A rebuild folds the
        log into a new name and switches this pointer atomically once caught up."""
        return f"{self.prefix}:projection"

    @property
    def projections(self) -> str:
        """The names of projections being built or kept besides the default one; retention trims the log
        only below every projection's position."""
        return f"{self.prefix}:projections"

    @property
    def archived_through(self) -> str:
        """The id up to which the log has been exported to an archive without a gap."""
        return f"{self.prefix}:archived-through"

    @property
    def retention(self) -> str:
        """What the last retention run left (a hash: `log_starts_at`, the id the log holds nothing older
        than; `archived_through`, what `backstream export` had written by then; `at_ms`), so a reader
        can say where a task's trimmed history went. Overwritten by each run."""
        return f"{self.prefix}:retention"

    @property
    def projection_root(self) -> str:
        """The prefix of every key of the projection `projection_name`."""
        return f"{self.prefix}:{self.projection_name}"

    def projected_task(self, task_id: str) -> str:
        """A task's current state in this projection: a hash in the form of storage/hashform.py."""
        return f"{self.projection_root}:task:{task_id}"

    @property
    def projection_position(self) -> str:
        """The id of the last event folded into this projection, written with the state it produced."""
        return f"{self.projection_root}:position"

    def projected_index(self, status: str | None = None) -> str:
        """Tasks newest first: a sorted set ordered by member (`<submit id>|<task id>`), all scores 0."""
        return f"{self.projection_root}:index:{status or 'all'}"

    def projected_chunks(self, task_id: str, status: str) -> str:
        """A job's chunks in `status` in this projection, as `projected_index` orders tasks, for
        the job's counts by status; chunk tasks are in no index of the task list (it shows their
        job)."""
        return f"{self.projection_root}:chunks:{task_id}:{status}"

    def with_projection(self, name: str) -> Keys:
        """The same keys, for the projection named `name`."""
        return Keys(prefix=self.prefix, projection_name=name)
