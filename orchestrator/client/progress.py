"""Following a task: its status as its live stream tells it, and the progress bars that show it
(a line on a terminal, one output line of a notebook cell)."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple, Protocol, TextIO

import msgspec

from orchestrator.domain.display import fmt, params_text
from orchestrator.domain.errors import ProjectionGapError
from orchestrator.domain.events import AnyEvent, StoredEvent
from orchestrator.domain.state import JobState, TaskState, evolve
from orchestrator.domain.status import Status
from orchestrator.domain.views import TaskView

BAR_WIDTH = 30


class Shown(NamedTuple):
    """What a bar shows of a task: its status, progress (0..1), attempt and worker (None when
    no attempt runs). A job's chunks are `Watch.job`."""

    status: Status
    progress: float
    attempt: int
    worker: str | None


# Before its stream says anything, a task is shown as just submitted.
SUBMITTED = Shown(Status.QUEUED, 0.0, 0, None)


class Bar(Protocol):
    """Anything that draws a task's progress: ProgressBar, NotebookBar, or your own."""

    def show(self, status: str, progress: float, attempt: int, worker: str | None) -> None:
        """Draw the task as it is now (`progress` 0..1). A bar that shows a job's chunks also
        takes `job` (a JobState, by keyword): `draw` passes it only to such a bar."""
        ...

    def done(self) -> None:
        """The task ended: finish the drawing (a newline on a terminal)."""
        ...


def stored_event(view: Mapping[str, Any]) -> StoredEvent:
    """An event as the API sends it (`id`, `type`, `task_id`, `seq`, `attempt`, `data`: see
    orchestrator.domain.history.event_view) as the domain's StoredEvent. Raises
    msgspec.ValidationError for an event type or field this client's domain does not know."""
    fields = {**view["data"], **{k: view[k] for k in ("type", "task_id", "seq", "attempt")}}
    return StoredEvent(view["id"], msgspec.convert(fields, AnyEvent))


class Watch:
    """A task's status folded from its stream's events by the domain's own `evolve` (the fold the
    projection runs). When the stream cannot be folded (it began after retention trimmed the
    task's first events, or carries an event a newer server added) `ask` gives the API's answer.
    `job`: for a job (a request fanned out over chunks), its chunks' counts and best so far as of
    the last event seen; None for any other task."""

    def __init__(self, ask: Callable[[], TaskView]) -> None:
        self._ask = ask
        self._state: TaskState | None = None
        self.job: JobState | None = None

    def see(self, view: Mapping[str, Any]) -> Shown:
        """The task after one more event of its stream (as `stored_event` takes it)."""
        try:
            state = self._state = evolve(self._state, stored_event(view))
        except (msgspec.ValidationError, ProjectionGapError):
            task = self._ask()
            self.job = task.job if isinstance(task.job, JobState) else None
            return Shown(Status(task.status), task.progress, task.attempt, task.worker)
        self.job = state.job
        return Shown(Status(state.status), state.progress, state.attempt, state.worker)


def draw(bar: Bar, shown: Shown, job: JobState | None = None) -> None:
    """Show `shown` on `bar`, with a job's chunks (`job`) when the bar takes them (ProgressBar and
    NotebookBar do; a bar written for plain tasks is called as before)."""
    if job is not None and getattr(bar, "shows_jobs", False):
        bar.show(*shown, job=job)  # type: ignore[call-arg]
    else:
        bar.show(*shown)


class ProgressBar:
    """A one-line bar redrawn in place on a terminal; on anything else, a line per change of
    status and per tenth of progress."""

    # Takes `job=` (see draw).
    shows_jobs = True

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.tty = out.isatty()
        self._last: tuple[str, int, int] | None = None

    def show(
        self, status: str, progress: float, attempt: int, worker: str | None, *, job: JobState | None = None
    ) -> None:
        """Draw the task as it is now (`progress` 0..1; a job's chunks and best with `job`).
        Off a terminal, a line per change of status, of tenth of progress and of failed chunks."""
        line = bar_text(status, progress, attempt, worker, job)
        if self.tty:
            self.out.write("\r" + line.ljust(78))
        else:
            key = (status, int(progress * 10), job.failed if job else 0)
            if key == self._last:
                return
            self._last = key
            self.out.write(line + "\n")
        self.out.flush()

    def done(self) -> None:
        """End the bar's line on a terminal."""
        if self.tty:
            self.out.write("\n")
            self.out.flush()


class NotebookBar:
    """The same bar as one output line of a Jupyter cell, updated in place (IPython's display)."""

    # Takes `job=` (see draw).
    shows_jobs = True

    def __init__(self) -> None:
        display = importlib.import_module("IPython.display").display
        self._handle = display("", display_id=True)

    def show(
        self, status: str, progress: float, attempt: int, worker: str | None, *, job: JobState | None = None
    ) -> None:
        """Redraw the cell's line (`progress` 0..1; a job's chunks and best with `job`)."""
        self._handle.update(bar_text(status, progress, attempt, worker, job))

    def done(self) -> None:
        """Nothing to finish: the line stays as last drawn."""


def bar_text(status: str, progress: float, attempt: int, worker: str | None, job: JobState | None = None) -> str:
    """`[#########.....]  30.0%  running  attempt 1 on w1`: progress is 0..1. A job's bar says
    its chunks instead of an attempt: `… running  chunks 12 done, 1 failed of 40  best …`."""
    filled = round(max(0.0, min(progress, 1.0)) * BAR_WIDTH)
    if job is not None:
        where = f"  {job_text(job)}"
    else:
        where = f"  attempt {attempt} on {worker}" if worker and status == Status.RUNNING else ""
    return f"[{'#' * filled}{'.' * (BAR_WIDTH - filled)}] {progress * 100:5.1f}%  {status}{where}"


def job_text(job: JobState) -> str:
    """A job's chunks and its best so far: `chunks 12 done, 1 failed of 40  best fast=10 slow=50
    on AAPL (return_pct 12.5)`; without the best before a chunk completed."""
    counts = f"chunks {job.done} done, {job.failed} failed of {job.chunks}"
    return f"{counts}  {best_text(job.best)}" if job.best else counts


def best_text(best: Mapping[str, Any]) -> str:
    """A job's best (its summary: `best_params`, `symbol`, `metrics`) in one phrase:
    `best fast=10 slow=50 on AAPL (return_pct 12.5)`."""
    out = "best"
    if best.get("best_params"):
        out += f" {params_text(best['best_params'])}"
    if best.get("symbol"):
        out += f" on {best['symbol']}"
    value = (best.get("metrics") or {}).get("return_pct")
    return out + (f" (return_pct {fmt(value)})" if value is not None else "")


def _in_notebook() -> bool:
    shell = getattr(sys.modules.get("IPython"), "get_ipython", lambda: None)()
    return type(shell).__name__ == "ZMQInteractiveShell"


def default_bar() -> Bar:
    """A notebook's in-cell bar inside Jupyter, else a terminal bar on stderr."""
    return NotebookBar() if _in_notebook() else ProgressBar(sys.stderr)
