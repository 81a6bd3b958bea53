"""A Python client for the Backstream HTTP API, for notebooks and scripts (and the CLI).

    from orchestrator.client import Client
    run = Client("http://127.0.0.1:8000").submit("sma_cross", "AAPL", params={"fast": 10, "slow": 20})
    task = run.wait()              # a progress bar in a notebook or on the terminal
    result = run.result()          # .metrics; .equity, .trades, .table as pandas DataFrames if installed

Answers decode into the API's own types (`orchestrator.domain.views`, `orchestrator.domain.spec.BacktestSpec`),
the ones that also generate /openapi.json. A refusal raises `Refused` carrying the API's `error`
code and its field errors. `AsyncClient` has the same methods as coroutines. Only the standard
library is used for HTTP (urllib); pandas is optional (the `pandas` extra). This package imports
nothing of api/ or consumers/: it speaks to any deployment over HTTP.

Modules: `http` (the transport, SSE streams, the errors), `sse` (the one SSE parser), `runs`
(Client, Run), `aio` (AsyncClient, AsyncRun), `progress` (following a task, progress bars),
`results` (Result).
"""

from orchestrator.client.aio import AsyncClient, AsyncRun
from orchestrator.client.http import ClientError, HttpError, Refused, Unreachable
from orchestrator.client.results import Result
from orchestrator.client.runs import Client, Run

__all__ = ["AsyncClient", "AsyncRun", "Client", "ClientError", "HttpError", "Refused", "Result", "Run", "Unreachable"]
