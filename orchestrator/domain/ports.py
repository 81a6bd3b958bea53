"""The ports of the core: what the outer layers implement and the composition root hands in.

The API checks a request and lists what can run through these Protocols, never by importing the
engine (`consumers.engine.adapters` implements them; `orchestrator.cli` wires them in). Both are blocking:
they may read data files and scan a grid of up to 10,000 combinations, so the API calls them off
the event loop (`asyncio.to_thread`).
"""

from __future__ import annotations

from typing import Protocol

from orchestrator.domain.jobs import FanOut
from orchestrator.domain.spec import BacktestSpec
from orchestrator.domain.views import Dataset, FieldProblem, Strategies


class SpecChecker(Protocol):
    """Decides whether a request can run, before it is stored."""

    def check(self, spec: BacktestSpec) -> tuple[BacktestSpec, list[FieldProblem]]:
        """The spec as it will be stored (its symbol spelled as the dataset names itself, `aapl`
        becomes `AAPL`) and every problem with it, one per field (`field` a dotted path such as
        `params.fast[2]`); no problems means runnable. Blocking.

        Raises `orchestrator.domain.errors.DataUnavailable` when the data cannot be read now (a
        retry may pass)."""
        ...


class Catalog(Protocol):
    """What the engine offers, as the API and the dashboard list it."""

    def strategies(self) -> Strategies:
        """Every installed strategy with its parameters, the sweep objectives, and the plugins that
        failed to load: the body of `GET /api/strategies`. Blocking (loads entry points once)."""
        ...

    def datasets(self) -> list[Dataset]:
        """Every symbol a request may name, sorted by symbol. Blocking (reads the data directory)."""
        ...


class JobPlanner(Protocol):
    """Decides whether a claimed request is a job, and cuts it into chunks (streams.md, "Jobs")."""

    def plan(self, spec: BacktestSpec, task_id: str) -> FanOut | None:
        """The chunks of the job `task_id` (each chunk's spec names it), or None when `spec` runs
        as one task (a single backtest, or a sweep one chunk computes). Blocking (reads data,
        scans the grid). Raises what checking the spec raises (a bad request, missing data)."""
        ...
