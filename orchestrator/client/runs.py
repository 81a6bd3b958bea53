"""The client of the Backstream API: submit, follow and read tasks (blocking calls)."""

from __future__ import annotations

import urllib.parse
from typing import Any

from orchestrator.client.http import DEFAULT_URL, Api
from orchestrator.client.progress import SUBMITTED, Bar, Watch, default_bar, draw
from orchestrator.client.results import Result, frame
from orchestrator.domain.spec import BacktestSpec, ParamValue
from orchestrator.domain.status import TERMINAL_STATUSES, Status
from orchestrator.domain.views import (
    ChunkPage,
    Dataset,
    Datasets,
    EventView,
    SubmitReply,
    TaskEvents,
    TaskPage,
    TaskView,
)


def _task_path(task_id: str, tail: str = "") -> str:
    return f"/api/backtests/tasks/{urllib.parse.quote(task_id, safe='')}{tail}"


class Run:
    """A submitted task: follow it, read it, cancel it. Every method raises the client's errors
    (orchestrator.client.http): Refused for a 4xx, HttpError for a 5xx, Unreachable."""

    def __init__(self, client: Client, task_id: str) -> None:
        self.client = client
        self.task_id = task_id

    def __repr__(self) -> str:
        return f"Run({self.task_id!r})"

    def status(self) -> TaskView:
        """The task as the API shows it now."""
        return self.client.task(self.task_id)

    def wait(self, *, progress: bool = True, bar: Bar | None = None) -> TaskView:
        """Follow the task's live stream until it ends, drawing a progress bar (`bar`, else in a
        notebook cell or on stderr; `progress=False` for none); return the task as it ended."""
        shown = bar or (default_bar() if progress else None)
        if shown:
            draw(shown, SUBMITTED)
        watch = Watch(self.status)
        for event in self.client.api.events(_task_path(self.task_id, "/stream")):
            now = watch.see(event)
            if shown:
                draw(shown, now, watch.job)
            if now.status in TERMINAL_STATUSES:
                break
        if shown:
            shown.done()
        return self.status()

    def result(self) -> Result:
        """The full result (raises Refused `result_not_available` unless the task completed)."""
        return Result(self.client.api.call("GET", _task_path(self.task_id, "/result")))

    def events(self) -> list[EventView]:
        """The task's events still in the log, oldest first."""
        return self.client.api.get(_task_path(self.task_id, "/events"), TaskEvents).events

    def chunks(self) -> list[TaskView]:
        """A job's chunk tasks in chunk order, every page of them ([] while a job is not yet
        planned; Refused `not_a_job` for a task that ran as one task)."""
        found: list[TaskView] = []
        cursor: int | None = 0
        while cursor is not None:
            page = self.client.api.get(_task_path(self.task_id, f"/chunks?limit=500&cursor={cursor}"), ChunkPage)
            found += page.chunks
            cursor = page.next_cursor
        return found

    def cancel(self) -> TaskView:
        """Cancel the task (a no-op on a finished one); the task as it is then."""
        return self.client.api.get(_task_path(self.task_id), TaskView, method="DELETE")

    def retry(self) -> TaskView:
        """Run a failed task again (Refused unless it failed); the task, queued."""
        return self.client.api.get(_task_path(self.task_id, "/retry"), TaskView, method="POST")


def _spec(
    strategy: str | BacktestSpec, symbol: str | None, params: dict[str, ParamValue] | None, **fields: Any
) -> BacktestSpec | dict[str, Any]:
    if isinstance(strategy, BacktestSpec):
        return strategy
    # A universe (`symbols=[...]` or `"*"`) names no single symbol.
    body: dict[str, Any] = {"strategy": strategy, "params": params or {}}
    body.update({k: v for k, v in {"symbol": symbol, **fields}.items() if v is not None})
    return body


def _list_path(
    status: Status | str | None, symbol: str | None, strategy: str | None, limit: int, cursor: str | None
) -> str:
    query = {"status": status, "symbol": symbol, "strategy": strategy, "limit": str(limit), "cursor": cursor}
    return "/api/backtests/tasks?" + urllib.parse.urlencode({k: v for k, v in query.items() if v is not None})


class Client:
    """A Backstream API at `url` (default http://127.0.0.1:8000), with an optional bearer token.
    `api` is its transport (orchestrator.client.http.Api); every method raises its errors."""

    def __init__(self, url: str = DEFAULT_URL, token: str | None = None) -> None:
        self.api = Api(url, token)

    def submit(
        self,
        strategy: str | BacktestSpec,
        symbol: str | None = None,
        *,
        params: dict[str, ParamValue] | None = None,
        idempotency_key: str | None = None,
        **fields: Any,
    ) -> Run:
        """Submit a backtest (a sweep when any parameter is a list). `fields` are BacktestSpec's
        (start, end, cash, commission, ...; `symbols=["AAPL", "IBM"]` or `"*"` instead of a
        `symbol` for a universe, a job over the fleet); or pass a whole BacktestSpec. Raises
        Refused with the field errors when the API refuses it."""
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        body = _spec(strategy, symbol, params, **fields)
        reply = self.api.get("/api/backtests", SubmitReply, method="POST", body=body, **headers)
        return Run(self, reply.task_id)

    def run(self, task_id: str) -> Run:
        """An existing task by id."""
        return Run(self, task_id)

    def task(self, task_id: str) -> TaskView:
        """The task as the API shows it now (Refused `task_not_found` for an unknown id)."""
        return self.api.get(_task_path(task_id), TaskView)

    def page(
        self,
        *,
        status: Status | str | None = None,
        symbol: str | None = None,
        strategy: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> TaskPage:
        """One page of tasks, newest first (see TaskListQuery for the filters)."""
        return self.api.get(_list_path(status, symbol, strategy, limit, cursor), TaskPage)

    def tasks(
        self,
        *,
        status: Status | str | None = None,
        symbol: str | None = None,
        strategy: str | None = None,
        limit: int = 50,
    ) -> list[TaskView]:
        """Up to `limit` tasks, newest first, following the cursor across pages."""
        found: list[TaskView] = []
        cursor = None
        while len(found) < limit:
            page = self.page(
                status=status, symbol=symbol, strategy=strategy, limit=min(limit - len(found), 500), cursor=cursor
            )
            found += page.tasks
            cursor = page.next_cursor
            if cursor is None:
                break
        return found

    def datasets(self) -> list[Dataset]:
        """Every symbol a request may name, sorted by symbol."""
        return self.api.get("/api/datasets", Datasets).datasets

    def metrics_frame(self, tasks: list[TaskView]) -> Any:
        """One row per task: id, status, strategy, symbol, params and headline metrics; a pandas
        DataFrame when pandas is installed, else a list of dicts."""
        rows = [
            {
                "task_id": t.task_id,
                "status": t.status,
                "strategy": t.spec.strategy,
                "symbol": t.spec.symbol,
                **{f"param_{k}": v for k, v in t.spec.params.items()},
                **((t.result or {}).get("metrics") or {}),
            }
            for t in tasks
        ]
        return frame(rows)
