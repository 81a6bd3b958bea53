"""The engine behind the core's ports: `SpecChecker` and `Catalog` (orchestrator.domain.ports).

The composition root (orchestrator.cli) builds these over one `datasets.Catalog` and hands them to
the API, which therefore never imports the engine. The engine's own types (FieldError, DatasetInfo,
the strategy registry) become the wire shapes of orchestrator.domain.views here, and only here.
"""

from __future__ import annotations

import msgspec

from consumers.engine import datasets, registry
from consumers.engine.jobs import CHUNK_TARGET_SECONDS, chunk_spec, plan_job
from consumers.engine.metrics import OBJECTIVES
from consumers.engine.validation import check_spec, with_dataset_name
from orchestrator.domain.jobs import FanOut
from orchestrator.domain.spec import BacktestSpec
from orchestrator.domain.views import Dataset, FieldProblem, LoadFailure, Strategies, Strategy


class EngineSpecChecker:
    """`SpecChecker` over the engine's validation: the same checks a worker's run would fail on."""

    def __init__(self, data: datasets.Catalog) -> None:
        self.data = data

    def check(self, spec: BacktestSpec) -> tuple[BacktestSpec, list[FieldProblem]]:
        """The spec with its dataset's own symbol name, and one FieldProblem per field at fault
        (none: runnable). Blocking: it reads the data file and may scan up to 10,000 combinations.
        Raises DataUnavailable (a subclass of orchestrator.domain.errors.DataUnavailable) when the
        data cannot be read now."""
        spec = with_dataset_name(spec, self.data)
        return spec, [FieldProblem(e.field, e.message) for e in check_spec(spec, self.data)]


class EngineCatalog:
    """`Catalog` over this process's strategy registry and data directory."""

    def __init__(self, data: datasets.Catalog) -> None:
        self.data = data

    def strategies(self) -> Strategies:
        """Every installed strategy (built-ins first, then plugins, as `registry.strategies()` finds
        them), the sweep objectives, and the plugins that failed to load. Blocking the first time
        (loads the entry points)."""
        known = registry.strategies()
        return Strategies(
            strategies=[msgspec.convert(s.as_json(), Strategy) for s in known.values()],
            objectives=list(OBJECTIVES),
            load_failures=[LoadFailure(f.entry_point, f.error) for f in known.failures],
        )

    def datasets(self) -> list[Dataset]:
        """Every loadable symbol, sorted by symbol, its dates as ISO `YYYY-MM-DD`. Blocking (reads
        the user's data directory; an unreadable file is left out, not raised)."""
        return [
            Dataset(d.symbol, d.start.isoformat(), d.end.isoformat(), d.rows, d.source, d.adjustable)
            for d in self.data.datasets()
        ]


class EngineJobPlanner:
    """`JobPlanner` over the engine's planning (`consumers.engine.jobs`): chunks that compute for
    about `chunk_seconds` each."""

    def __init__(self, data: datasets.Catalog, chunk_seconds: float = CHUNK_TARGET_SECONDS) -> None:
        self.data = data
        self.chunk_seconds = chunk_seconds

    def plan(self, spec: BacktestSpec, task_id: str) -> FanOut | None:
        """The chunks of the job `task_id`, each spec naming it, or None when `spec` runs as one
        task. Blocking. Raises what `plan_job` raises."""
        plan = plan_job(spec, self.data, target_seconds=self.chunk_seconds)
        if plan is None:
            return None
        chunks = [chunk_spec(spec, plan, index, task_id) for index in range(len(plan.spans))]
        return FanOut(chunks=chunks, symbols=plan.symbols, combinations=plan.combinations, per_chunk=plan.per_chunk)


def engine_ports(data_dir: str | None) -> tuple[EngineSpecChecker, EngineCatalog]:
    """Both ports over one data catalog of `data_dir` (None: the bundled data only)."""
    data = datasets.Catalog.from_env_dir(data_dir)
    return EngineSpecChecker(data), EngineCatalog(data)
