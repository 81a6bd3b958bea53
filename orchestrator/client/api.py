"""A Python client for the Backstream HTTP API, for notebooks and scripts (and the CLI).

    from orchestrator.client.api import Client
    run = Client("http://127.0.0.1:8000").submit("sma_cross", "AAPL", params={"fast": 10, "slow": 20})
    task = run.wait()              # a progress bar in a notebook or on the terminal
    result = run.result()          # .metrics; .equity, .trades, .table as pandas DataFrames if installed

Answers decode into the API's own types (`orchestrator.domain.views`, `orchestrator.domain.spec.BacktestSpec`),
the ones that also generate /openapi.json. A refusal raises `Refused` carrying the API's
`error` code and its field errors. `AsyncClient` has the same methods as coroutines. Only the
standard library is used for HTTP (urllib); pandas is optional (the `pandas` extra). This module
imports nothing of api/ or consumers/: it speaks to any deployment over HTTP.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import sys
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from typing import Any, TextIO, TypeVar

import msgspec

from orchestrator.domain.spec import BacktestSpec, ParamValue
from orchestrator.domain.views import (
    Dataset,
    Datasets,
    ErrorBody,
    EventView,
    FieldProblem,
    SubmitReply,
    TaskEvents,
    TaskPage,
    TaskView,
)

T = TypeVar("T")
TERMINAL = ("completed", "failed", "cancelled")
DEFAULT_URL = "http://127.0.0.1:8000"
# A live stream sends a keep-alive at least every 15 s; silence for this long means it is gone.
STREAM_TIMEOUT_S = 45.0
REQUEST_TIMEOUT_S = 30.0
RECONNECTS = 5
BAR_WIDTH = 30


class ClientError(Exception):
    """The API refused or could not be reached; the message says why (the root of this module's errors)."""

    # True when trying again may help (unreachable, or a 5xx); a refusal (4xx) will not change.
    transient = True


class Refused(ClientError):
    """A 4xx: `status`, the API's `error` code (such as `validation_failed`, `task_not_found`) and
    `fields`, each a FieldProblem naming the field at fault (`params.fast`) and what is wrong."""

    transient = False

    def __init__(self, message: str, status: int = 0, error: str = "", fields: list[FieldProblem] | None = None):
        super().__init__(message)
        self.status, self.error, self.fields = status, error, fields or []


class Api:
    """The HTTP transport: JSON requests with the bearer token, and Server-Sent Event streams."""

    def __init__(self, url: str, token: str | None = None) -> None:
        self.url = url.rstrip("/")
        self.token = token

    def _request(
        self,
        method: str,
        path: str,
        body: Any = None,
        headers: dict[str, str] | None = None,
        timeout: float = REQUEST_TIMEOUT_S,
    ) -> Any:
        data = None if body is None else msgspec.json.encode(body)
        request = urllib.request.Request(self.url + path, data=data, method=method)
        if data is not None:
            request.add_header("Content-Type", "application/json")
        if self.token:
            request.add_header("Authorization", f"Bearer {self.token}")
        for name, value in (headers or {}).items():
            request.add_header(name, value)
        try:
            return urllib.request.urlopen(request, timeout=timeout)  # the user's URL
        except urllib.error.HTTPError as e:
            raise _problem(e) from None
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise ClientError(
                f"cannot reach the Backstream API at {self.url}: {reason} (set --url or BACKSTREAM_URL)"
            ) from None

    def call(self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None) -> Any:
        """The answer's JSON as builtins."""
        with self._request(method, path, body, headers) as reply:
            return json.loads(reply.read() or b"null")

    def get(self, path: str, kind: type[T], method: str = "GET", body: Any = None, **headers: str) -> T:
        """The answer decoded into `kind` (a view Struct); extra fields a newer server adds are ignored."""
        with self._request(method, path, body, headers or None) as reply:
            return msgspec.json.decode(reply.read(), type=kind)

    def events(self, path: str, after: str | None = None) -> Iterator[dict[str, Any]]:
        """The events of an SSE stream, reconnecting with Last-Event-ID when it ends or breaks,
        until the server says there is nothing more (204 or an `end` event)."""
        failures = 0
        pause = threading.Event()
        while True:
            headers = {"Accept": "text/event-stream"}
            if after:
                headers["Last-Event-ID"] = after
            try:
                reply = self._request("GET", path, headers=headers, timeout=STREAM_TIMEOUT_S)
            except ClientError as e:
                failures += 1
                if not e.transient or failures > RECONNECTS:
                    raise
                pause.wait(min(2.0**failures / 4, 5.0))
                continue
            with reply:
                if reply.status == 204:
                    return
                failures = 0
                try:
                    for event_name, event_id, data in _sse(reply):
                        if event_name == "end":
                            return
                        if event_id:
                            after = event_id
                        if data:
                            yield json.loads(data)
                except (OSError, TimeoutError):
                    continue  # broken or silent: reconnect where we were


def _problem(error: urllib.error.HTTPError) -> ClientError:
    """An HTTP error as our exception: a 4xx is a Refused with the API's field errors."""
    try:
        body = msgspec.json.decode(error.read(), type=ErrorBody)
    except msgspec.MsgspecError:
        body = None
    if body is None:
        message = f"{error.code} {error.reason}"
    else:
        fields = "; ".join(f"{f.field}: {f.message}" for f in body.fields if f.field)
        message = f"{error.code} {body.error}: {fields or body.message}"
    if error.code >= 500:
        return ClientError(message)
    return Refused(message, error.code, body.error if body else "", body.fields if body else [])


def _sse(reply: Any) -> Iterator[tuple[str, str | None, str]]:
    """(event name, id, data) per SSE event; comments are skipped."""
    name, event_id, data = "message", None, list[str]()
    for raw in reply:
        line = raw.decode("utf-8").rstrip("\r\n")
        if not line:
            if data or name != "message":
                yield name, event_id, "\n".join(data)
            name, event_id, data = "message", None, list[str]()
        elif line.startswith(":"):
            continue
        else:
            field, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if field == "data":
                data.append(value)
            elif field == "id":
                event_id = value
            elif field == "event":
                name = value


# --- progress ---


class ProgressBar:
    """A one-line bar redrawn in place on a terminal; on anything else, a line per change of
    status and per tenth of progress."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.tty = out.isatty()
        self._last: tuple[str, int] | None = None

    def show(self, status: str, progress: float, attempt: int, worker: str | None) -> None:
        line = bar_text(status, progress, attempt, worker)
        if self.tty:
            self.out.write("\r" + line.ljust(78))
        else:
            key = (status, int(progress * 10))
            if key == self._last:
                return
            self._last = key
            self.out.write(line + "\n")
        self.out.flush()

    def done(self) -> None:
        if self.tty:
            self.out.write("\n")
            self.out.flush()


class NotebookBar:
    """The same bar as one output line of a Jupyter cell, updated in place (IPython's display)."""

    def __init__(self) -> None:
        display = importlib.import_module("IPython.display").display
        self._handle = display("", display_id=True)

    def show(self, status: str, progress: float, attempt: int, worker: str | None) -> None:
        self._handle.update(bar_text(status, progress, attempt, worker))

    def done(self) -> None:
        pass


def bar_text(status: str, progress: float, attempt: int, worker: str | None) -> str:
    """`[#########.....]  30.0%  running  attempt 1 on w1`: progress is 0..1."""
    filled = round(max(0.0, min(progress, 1.0)) * BAR_WIDTH)
    where = f"  attempt {attempt} on {worker}" if worker and status == "running" else ""
    return f"[{'#' * filled}{'.' * (BAR_WIDTH - filled)}] {progress * 100:5.1f}%  {status}{where}"


def _in_notebook() -> bool:
    shell = getattr(sys.modules.get("IPython"), "get_ipython", lambda: None)()
    return type(shell).__name__ == "ZMQInteractiveShell"


def default_bar() -> ProgressBar | NotebookBar:
    """A notebook's in-cell bar inside Jupyter, else a terminal bar on stderr."""
    return NotebookBar() if _in_notebook() else ProgressBar(sys.stderr)


# --- results ---


def _frame(columns: dict[str, list[Any]] | list[dict[str, Any]] | None) -> Any:
    """A pandas DataFrame when pandas is installed, else the data as the API sent it."""
    if columns is None:
        return None
    try:
        pandas = importlib.import_module("pandas")  # optional: the `pandas` extra
    except ImportError:
        return columns
    return pandas.DataFrame(columns)


class Result:
    """A completed task's full result. `raw` is the API's JSON; `kind` is `backtest` or `sweep`.
    `metrics` are the (best run's) metrics; `equity` (time, equity, drawdown_pct, position per bar),
    `trades` (one row per trade) and, for a sweep, `table` (one row per combination, params as
    columns, best first) are pandas DataFrames when pandas is installed, else the API's columns."""

    def __init__(self, raw: dict[str, Any]) -> None:
        self.raw = raw
        self.kind: str = raw.get("kind", "backtest")
        run = raw.get("best") or raw if self.kind == "sweep" else raw
        self.params: dict[str, Any] = run.get("params", {})
        self.metrics: dict[str, Any] = run.get("metrics", {})
        self.data: dict[str, Any] | None = raw.get("data")
        self.equity = _frame(run.get("equity_curve"))
        self.trades = _frame(run.get("trades"))
        rows = raw.get("table")
        self.table = (
            _frame([{**r.get("params", {}), **{k: v for k, v in r.items() if k != "params"}} for r in rows])
            if rows
            else None
        )

    def __repr__(self) -> str:
        return f"Result(kind={self.kind!r}, params={self.params!r}, metrics={self.metrics!r})"


# --- the client ---


def _spec(strategy: str | BacktestSpec, symbol: str | None, params: dict[str, ParamValue] | None, **fields: Any) -> Any:
    if isinstance(strategy, BacktestSpec):
        return strategy
    body: dict[str, Any] = {"strategy": strategy, "symbol": symbol, "params": params or {}}
    body.update({k: v for k, v in fields.items() if v is not None})
    return body


def _list_path(status: str | None, symbol: str | None, strategy: str | None, limit: int, cursor: str | None) -> str:
    query = {"status": status, "symbol": symbol, "strategy": strategy, "limit": str(limit), "cursor": cursor}
    return "/api/backtests/tasks?" + urllib.parse.urlencode({k: v for k, v in query.items() if v is not None})


class Run:
    """A submitted task: follow it, read it, cancel it."""

    def __init__(self, client: Client, task_id: str) -> None:
        self.client = client
        self.task_id = task_id

    def __repr__(self) -> str:
        return f"Run({self.task_id!r})"

    def status(self) -> TaskView:
        return self.client.task(self.task_id)

    def wait(self, *, progress: bool = True, bar: Any = None) -> TaskView:
        """Follow the task's live stream until it ends, drawing a progress bar (in a notebook
        cell or on stderr; `progress=False` for none); return the task as it ended."""
        shown = bar or (default_bar() if progress else None)
        status, fraction, attempt, worker = "queued", 0.0, 0, None
        if shown:
            shown.show(status, fraction, attempt, worker)
        for event in self.client.api.events(f"/api/backtests/tasks/{self.task_id}/stream"):
            kind, data = event["type"], event["data"]
            if kind == "started":
                status, fraction, attempt, worker = "running", 0.0, event["attempt"], data.get("worker")
            elif kind == "progress":
                fraction = data["progress"]
            elif kind == "completed":
                status, fraction = "completed", 1.0
            elif kind in ("failed", "cancelled"):
                status = kind
            elif kind in ("retry_scheduled", "released", "requeued"):
                status, fraction = "queued", 0.0
            if shown:
                shown.show(status, fraction, attempt, worker)
            if status in TERMINAL:
                break
        if shown:
            shown.done()
        return self.status()

    def result(self) -> Result:
        """The full result (raises Refused `result_not_available` unless the task completed)."""
        return Result(self.client.api.call("GET", f"/api/backtests/tasks/{self.task_id}/result"))

    def events(self) -> list[EventView]:
        return self.client.api.get(f"/api/backtests/tasks/{self.task_id}/events", TaskEvents).events

    def cancel(self) -> TaskView:
        return self.client.api.get(f"/api/backtests/tasks/{self.task_id}", TaskView, method="DELETE")

    def retry(self) -> TaskView:
        return self.client.api.get(f"/api/backtests/tasks/{self.task_id}/retry", TaskView, method="POST")


class Client:
    """A Backstream API at `url` (default http://127.0.0.1:8000), with an optional bearer token."""

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
        (start, end, cash, commission, ...); or pass a whole BacktestSpec. Raises Refused with the
        field errors when the API refuses it."""
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        body = _spec(strategy, symbol, params, **fields)
        reply = self.api.get("/api/backtests", SubmitReply, method="POST", body=body, **headers)
        return Run(self, reply.task_id)

    def run(self, task_id: str) -> Run:
        """An existing task by id."""
        return Run(self, task_id)

    def task(self, task_id: str) -> TaskView:
        return self.api.get(f"/api/backtests/tasks/{urllib.parse.quote(task_id, safe='')}", TaskView)

    def page(
        self,
        *,
        status: str | None = None,
        symbol: str | None = None,
        strategy: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> TaskPage:
        """One page of tasks, newest first (see TaskListQuery for the filters)."""
        return self.api.get(_list_path(status, symbol, strategy, limit, cursor), TaskPage)

    def tasks(
        self, *, status: str | None = None, symbol: str | None = None, strategy: str | None = None, limit: int = 50
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
        return _frame(rows)


class AsyncRun:
    """A submitted task, with Run's methods as coroutines (each runs the blocking call in a thread)."""

    def __init__(self, run: Run) -> None:
        self.sync = run
        self.task_id = run.task_id

    async def status(self) -> TaskView:
        return await asyncio.to_thread(self.sync.status)

    async def wait(self, *, progress: bool = True, bar: Any = None) -> TaskView:
        return await asyncio.to_thread(lambda: self.sync.wait(progress=progress, bar=bar))

    async def result(self) -> Result:
        return await asyncio.to_thread(self.sync.result)

    async def events(self) -> list[EventView]:
        return await asyncio.to_thread(self.sync.events)

    async def cancel(self) -> TaskView:
        return await asyncio.to_thread(self.sync.cancel)

    async def retry(self) -> TaskView:
        return await asyncio.to_thread(self.sync.retry)


class AsyncClient:
    """Client's methods as coroutines, for asyncio code and notebooks' top-level await. Each call
    runs the blocking HTTP request in a worker thread, so no async HTTP library is needed."""

    def __init__(self, url: str = DEFAULT_URL, token: str | None = None) -> None:
        self.sync = Client(url, token)

    async def submit(self, strategy: str | BacktestSpec, symbol: str | None = None, **kwargs: Any) -> AsyncRun:
        return AsyncRun(await asyncio.to_thread(lambda: self.sync.submit(strategy, symbol, **kwargs)))

    def run(self, task_id: str) -> AsyncRun:
        return AsyncRun(self.sync.run(task_id))

    async def task(self, task_id: str) -> TaskView:
        return await asyncio.to_thread(self.sync.task, task_id)

    async def page(self, **kwargs: Any) -> TaskPage:
        return await asyncio.to_thread(lambda: self.sync.page(**kwargs))

    async def tasks(self, **kwargs: Any) -> list[TaskView]:
        return await asyncio.to_thread(lambda: self.sync.tasks(**kwargs))

    async def datasets(self) -> list[Dataset]:
        return await asyncio.to_thread(self.sync.datasets)
