"""Running a request in bounded chunks: progress, cancellation points, checkpoints and the outcome.

A run is made of jobs (`job.py`, one backtest each) on one market (`market.py`); a sweep also
takes the compiled batch path (`fast_sweep.py`) where it applies; between chunks its state can
be saved (`checkpoint.py`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, cast

import msgspec

from consumers.engine import sweep
from consumers.engine.checkpoint import CHECKPOINT_VERSION, Checkpoint, fingerprint, saved
from consumers.engine.datasets import Catalog
from consumers.engine.errors import CheckpointError, EngineError, SpecError
from consumers.engine.job import Job
from consumers.engine.kernel import KernelState
from consumers.engine.market import Market, costs_of, in_units, scaled
from consumers.engine.registry import strategies
from consumers.engine.report import backtest_detail, headline, json_safe, sweep_detail, trades_table
from consumers.engine.sweep import SweepRow
from consumers.engine.validation import FieldError, check_spec
from orchestrator.domain.spec import BacktestSpec


class Outcome(msgspec.Struct, frozen=True):
    """A finished run: `summary` for the `completed` event (headline metrics, the data used, and
    for a sweep its best parameters), `detail` the full result (trades, equity curve, sweep table);
    both JSON types."""

    summary: dict[str, Any]
    detail: dict[str, Any]


class BacktestRun:
    """One task's run. Call `advance()` until `done`; between calls the worker reports progress,
    checks for a cancel and may save `checkpoint()`.

    Raises (from the constructor) StrategyMissing, SpecError, DatasetError or CheckpointError."""

    def __init__(self, spec: BacktestSpec, catalog: Catalog, checkpoint: Checkpoint | None = None) -> None:
        known = strategies()
        strategy = known.require(spec.strategy)  # before validation: a missing plugin is not a bad request
        errors = check_spec(spec, catalog, known, system=True)
        if spec.symbols is not None and not errors:
            errors = [FieldError("symbols", "a universe runs as a job: its chunks run (jobs.plan_job), not itself")]
        if errors:
            raise SpecError("; ".join(f"{e.field}: {e.message}" for e in errors), list(errors))
        bars, not_adjusted = catalog.load(spec.symbol).prices(spec.adjusted)
        bars = bars.between(spec.start, spec.end)
        bars.day_strings  # made once per dataset, here rather than inside a chunk of the run  # noqa: B018
        self.spec = spec
        self.strategy = strategy
        self.unit = spec.fractional_unit
        self.market = Market.of(bars, not_adjusted)
        if self.unit is not None:
            # backtesting.py's FractionalBacktest: trade whole multiples of `unit` on prices x unit,
            # then show sizes x unit and prices / unit (see STRATEGIES.md, "Fractional units").
            self.market = Market.of(scaled(bars, self.unit), provenance=self.market.provenance)
        self.costs = costs_of(spec)
        self.fingerprint = fingerprint(spec, bars)
        # A job's chunk always gives a sweep's outcome (a table), even of one combination.
        self.is_sweep = spec.is_sweep or spec.chunk is not None
        self.combinations = self._combinations(len(bars))
        self.rows: list[SweepRow] = []
        self._order: list[int] | None = None
        self._fast = self._fast_sweep() if self.is_sweep else None
        self._job: Job | None = None
        self._best: Job | None = None
        self._trades: dict[str, list[Any]] | None = None
        self._outcome: Outcome | None = None
        if checkpoint is not None:
            self._restore(checkpoint)

    def _combinations(self, n_bars: int) -> list[Mapping[str, Any]]:
        """The combinations this run computes, in grid order: a sweep's admissible ones (the
        range [start, stop) of them for a job's chunk), or the one of a single run. Raises
        SpecError when a chunk's range lies beyond the admissible combinations."""
        spec = self.spec
        params = {**self.strategy.with_defaults(spec.params), **spec.management}
        if not spec.is_sweep:
            every: Sequence[Mapping[str, Any]] = [params]
        elif spec.chunk is None:
            return list(sweep.admissible(self.strategy, params, spec.constraint, n_bars))
        else:
            # A worker runs many chunks of one job: the grid is scanned once per process.
            every = sweep.admissible_of(spec.strategy, msgspec.json.encode(params), spec.constraint, n_bars)
        if spec.chunk is None:
            return list(every)
        chunk = spec.chunk
        combinations: list[Mapping[str, Any]] = [dict(c) for c in every[chunk.start : chunk.stop]]
        if len(combinations) != chunk.stop - chunk.start:
            message = f"combinations [{chunk.start}, {chunk.stop}) asked, but {spec.symbol} has fewer admissible"
            raise SpecError(f"chunk: {message}", [FieldError("chunk", message)])
        return combinations

    def _fast_sweep(self) -> Any:
        """The compiled batch path for this sweep (`fast_sweep.py`), or None where it does not apply:
        position management, an objective it does not compute, or numba not installed."""
        if not self.spec.is_sweep:
            return None
        try:
            from consumers.engine import fast_sweep  # imports numba: only for a sweep
        except ImportError:
            return None
        if not fast_sweep.eligible(self.spec.metric, self.spec.management):
            return None
        return fast_sweep.FastSweep(
            self.market.indicators,
            self.market.bars.dates,
            self.strategy,
            self.costs,
            self.spec.long_only,
            self.spec.cash,
            self.spec.metric,
        )

    def _new_job(self, params: Mapping[str, Any], state: KernelState | None = None) -> Job:
        return Job(self.market, self.strategy, params, self.costs, self.spec.long_only, self.spec.cash, state)

    def _restore(self, cp: Checkpoint) -> None:
        if cp.version != CHECKPOINT_VERSION or cp.fingerprint != self.fingerprint:
            raise CheckpointError("checkpoint belongs to another request, data or engine version; start over")
        if len(cp.rows) > len(self.combinations) or (not self.is_sweep and cp.rows):
            raise CheckpointError("checkpoint has more finished combinations than the request")
        self.rows = list(cp.rows)
        if cp.kernel is None:
            return
        state = msgspec.structs.replace(cp.kernel)
        if len(self.rows) < len(self.combinations):
            self._job = self._new_job(self.combinations[len(self.rows)], state)
        else:  # the sweep's closing re-run of its best combination
            self._best = self._new_job(self._best_params(), state)

    @property
    def done(self) -> bool:
        """True once the outcome is built (`outcome()` returns it)."""
        return self._outcome is not None

    @property
    def progress(self) -> float:
        """The fraction done, in [0, 0.99] until the outcome is built, then 1.0; never decreases."""
        if self._outcome is not None:
            return 1.0
        total = len(self.combinations)
        within = 0.0
        if self._job is not None:
            within = self._job.state.cursor / max(1, len(self.market.bars))
        return 0.99 * min(1.0, (len(self.rows) + within) / total)

    def advance(self, max_seconds: float = 0.02) -> None:
        """Do about `max_seconds` of work (at least one step) and return. Raises RepresentationError
        when a value exceeds what the engine represents."""
        started = time.perf_counter()
        deadline = started + max_seconds
        stepped = False
        while self._outcome is None:
            # Building the outcome takes the largest steps (tens of ms on a long series): they
            # get a chunk of their own unless this one has hardly begun, so a chunk overruns little.
            if stepped and self._outcome_next() and time.perf_counter() - started > max_seconds / 4:
                break
            self._step()
            stepped = True
            if time.perf_counter() >= deadline:
                break

    def _outcome_next(self) -> bool:
        last = self._best if self.is_sweep else self._job
        return last is not None and last.done

    def _step(self) -> None:
        if not self.is_sweep:
            if self._job is None:
                self._job = self._new_job(self.combinations[0])
            self._step_last(self._job, self._single_outcome)
        elif len(self.rows) < len(self.combinations):
            self._step_sweep()
        else:
            if self._best is None:
                self._best = self._new_job(self._best_params())
            self._step_last(self._best, self._sweep_outcome)

    def _step_sweep(self) -> None:
        """A step of the sweep's grid: a compiled batch of rows, or a step of the next combination
        on the interpreted path."""
        if self._job is None and self._fast is not None:
            # A batch of rows; None: the next combination takes the interpreted path below.
            batch = self._fast.step(self.combinations, len(self.rows))
            if batch is not None:
                self.rows.extend(batch)
                return
        if self._job is None:
            self._job = self._new_job(self.combinations[len(self.rows)])
        self._job.step()
        if self._job.done:
            assert self._job.metrics is not None
            self.rows.append(sweep.make_row(dict(self._job.params), self._job.metrics, self.spec.metric))
            self._job = None

    def _step_last(self, job: Job, outcome: Callable[[Job], Outcome]) -> None:
        """A step of the run's last job: compute it, then build the trade table, then the outcome
        (on a long series each takes tens of ms, and a chunk cannot be cut inside a step)."""
        if not job.done:
            job.step()
        elif self._trades is None:
            assert job.sim is not None
            self._trades = trades_table(self.market.bars, job.sim)
        else:
            self._outcome = outcome(job)

    def _best_params(self) -> Mapping[str, Any]:
        # The best row; if no combination has an objective value (none traded), the first one
        # in grid order that did not go bankrupt, as optimize() reports the first combination.
        return self._table()[0].params

    def _table(self) -> list[SweepRow]:
        """The rows ranked (sweep.ranked), sorted once when the last row is in."""
        return [self.rows[i] for i in self._ranking()]

    def _ranking(self) -> list[int]:
        """The rows' positions (in grid order) best first (sweep.ranked_order), sorted once when
        the last row is in."""
        if self._order is None or len(self._order) != len(self.rows):
            self._order = sweep.ranked_order(self.rows, self.spec.minimise)
        return self._order

    def _detail(self, job: Job) -> dict[str, Any]:
        """The full result of `job` (the single backtest, or a sweep's best), in the asset's units."""
        assert job.sim is not None and job.metrics is not None
        detail = backtest_detail(
            self.market.bars, job.sim, job.metrics, self.spec.strategy, job.params, trades=self._trades
        )
        if self.unit is not None:
            in_units(detail, self.unit)
        return detail

    def _single_outcome(self, job: Job) -> Outcome:
        detail = self._detail(job)
        data = self._data()
        return Outcome({"metrics": headline(detail["metrics"]), "data": data}, {**detail, "data": data})

    def _sweep_outcome(self, best: Job) -> Outcome:
        best_detail = self._detail(best)
        table = self._table()
        grid = sweep.grid_size({**self.spec.params, **self.spec.management})
        chunk = self.spec.chunk
        # A chunk's rows say which symbol and which admissible combination (grid order) they are.
        numbers = None if chunk is None else [chunk.start + i for i in self._ranking()]
        detail = sweep_detail(table, self.spec.objective, grid, best_detail, symbol=self.spec.symbol, numbers=numbers)
        data = self._data()
        summary = {
            "metrics": headline(best_detail["metrics"]),
            "best_params": json_safe(dict(best.params)),
            "objective": self.spec.objective,
            "combinations": len(self.rows),
            "data": data,
        }
        if chunk is not None:
            # What the job's best-so-far is ranked by (orchestrator.domain.ranking.rank_key).
            rank = {"objective": table[0].objective, "bankrupt": sweep.bankrupt(table[0])}
            summary |= {"symbol": self.spec.symbol, "rank": rank}
            detail["symbol"] = self.spec.symbol
        return Outcome(summary, {**detail, "data": data})

    def _data(self) -> dict[str, Any]:
        """What the result was computed on (see STRATEGIES.md "Data"), as JSON types."""
        return cast(dict[str, Any], msgspec.to_builtins(self.market.provenance))  # a Struct: a JSON object

    def checkpoint(self) -> Checkpoint:
        """The state after the last step. A step in settlement or statistics is redone on resume."""
        job = self._job or self._best
        kernel = saved(job.state) if job is not None else None
        return Checkpoint(fingerprint=self.fingerprint, kernel=kernel, rows=list(self.rows))

    def outcome(self) -> Outcome:
        """The finished run's outcome; raises EngineError before `done`."""
        if self._outcome is None:
            raise EngineError("the run is not done yet: call advance() until done")
        return self._outcome


def start_run(spec: BacktestSpec, catalog: Catalog, checkpoint: bytes | None = None) -> BacktestRun:
    """Validate the request and set up its run, from `checkpoint` (JSON, a `Checkpoint` an
    earlier attempt saved) when given and it belongs to this request and data, else from the
    start. Raises SpecError or DatasetError (not retryable), StrategyMissing when its plugin is
    not installed here, DataUnavailable (retryable)."""
    if checkpoint is not None:
        try:
            return BacktestRun(spec, catalog, msgspec.json.decode(checkpoint, type=Checkpoint))
        except (msgspec.DecodeError, msgspec.ValidationError, CheckpointError):
            pass  # another request's, data's or engine version's state: start over
    return BacktestRun(spec, catalog)


def resume_run(spec: BacktestSpec, catalog: Catalog, checkpoint: Checkpoint) -> BacktestRun:
    """Continue from a checkpoint (`BacktestRun.checkpoint()`, saved and read back); raises
    CheckpointError if it belongs to another request, other data or another engine version, and
    what `start_run` raises."""
    return BacktestRun(spec, catalog, checkpoint)
