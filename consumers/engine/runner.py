"""Running a request in bounded chunks: progress, cancellation points, checkpoints and the outcome."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import msgspec

from consumers.engine import kernel, sweep
from consumers.engine.datasets import Bars, Catalog, DataProvenance, NotAdjustedReason
from consumers.engine.errors import CheckpointError, EngineError, SpecError
from consumers.engine.indicators import IndicatorCache, IndicatorUnfinished
from consumers.engine.interface import Registered, Signals, to_signals
from consumers.engine.kernel import Costs, KernelState, Simulation
from consumers.engine.managed import ATR_PERIODS, Management, Manager, advance_managed, atr
from consumers.engine.metrics import compute_metrics
from consumers.engine.registry import strategies
from consumers.engine.report import backtest_detail, headline, json_safe, sweep_detail, trades_table
from consumers.engine.sweep import SweepRow
from consumers.engine.validation import check_spec
from orchestrator.domain.spec import MANAGEMENT_FIELDS, BacktestSpec

# Decisions per kernel chunk between clock checks: ~1 µs each, so a check every ~0.1 ms.
EVENTS_PER_CHUNK = 128
# Bars of an exact indicator replay (for near ties) per step: ~0.3-1 µs each, so ~10-40 ms.
EXACT_BARS_PER_STEP = 40_000
CHECKPOINT_VERSION = 1


class Checkpoint(msgspec.Struct, frozen=True, kw_only=True):
    """The state between chunks, enough to resume instead of starting over.

    Indicators are not saved: they are recomputed from the data, which `fingerprint` pins
    (with the request), so a checkpoint cannot be resumed against other data.
    """

    version: int = CHECKPOINT_VERSION
    fingerprint: str
    kernel: KernelState | None = None  # a single backtest's progress
    rows: list[SweepRow] = []  # a sweep's finished combinations, in grid order


class Outcome(msgspec.Struct, frozen=True):
    summary: dict[str, Any]
    detail: dict[str, Any]


@dataclass(frozen=True)
class Market:
    """One symbol's bars in the requested date range, with what every combination shares."""

    bars: Bars
    indicators: IndicatorCache
    open_list: list[float]
    provenance: DataProvenance

    @classmethod
    def of(
        cls, bars: Bars, not_adjusted_reason: NotAdjustedReason | None = None, provenance: DataProvenance | None = None
    ) -> Market:
        """The market of `bars` (a range of one symbol's prices, from `Bars.prices`)."""
        cache = IndicatorCache(
            bars.close,
            open=bars.open,
            high=bars.high,
            low=bars.low,
            volume=bars.volume,
            exact_bars_per_call=EXACT_BARS_PER_STEP,
        )
        return cls(bars, cache, bars.open.tolist(), provenance or bars.provenance(not_adjusted_reason))

    def manager(self, m: Management) -> Manager:
        """Position management over these bars (the lists and the ATR made once per market)."""
        lists = self.indicators.memo(
            ("engine:bar-lists",), lambda: (self.bars.high.tolist(), self.bars.low.tolist(), self.bars.close.tolist())
        )
        atr_list = None
        if m.trailing_atr is not None:
            b = self.bars
            atr_list = self.indicators.memo(("engine:atr", ATR_PERIODS), lambda: atr(b.high, b.low, b.close).tolist())
        high, low, close = lists
        return Manager(m, self.open_list, high, low, close, atr_list)


def scaled(bars: Bars, unit: float) -> Bars:
    """`bars` priced per `unit` of the asset: Open, High, Low, Close x unit, Volume / unit
    (backtesting.py's FractionalBacktest, operation for operation)."""
    return Bars(
        bars.symbol,
        bars.source,
        bars.dates,
        bars.open * unit,
        bars.high * unit,
        bars.low * unit,
        bars.close * unit,
        bars.volume / unit,
        None,
        bars.adjusted,
    )


def in_units(detail: dict[str, Any], unit: float) -> None:
    """A fractional run's detail back in units of the asset: trade sizes and positions x unit,
    trade prices / unit; money (pnl, commission, equity, position value) is unchanged."""
    trades = detail["trades"]
    trades["size"] = [s * unit for s in trades["size"]]
    for col in ("entry_price", "exit_price"):
        trades[col] = [None if p is None else p / unit for p in trades[col]]
    curve = detail["equity_curve"]
    curve["position"] = [p * unit for p in curve["position"]]


def costs_of(spec: BacktestSpec) -> Costs:
    return Costs(spec.commission, spec.commission_fixed, spec.spread, spec.slippage_bps / 10_000)


def fingerprint(spec: BacktestSpec, bars: Bars) -> str:
    h = hashlib.sha256(msgspec.json.encode(spec))
    h.update(bars.dates.tobytes())
    h.update(bars.open.tobytes())
    h.update(bars.close.tobytes())
    return h.hexdigest()[:32]


def signals_for(market: Market, strategy: Registered, params: Mapping[str, Any], long_only: bool) -> Signals:
    """The strategy's decisions after its warm-up, in the kernel's form."""
    return to_signals(strategy.decide(market.indicators, params, long_only), strategy.warmup(params) + 1)


class Job:
    """One backtest advancing in bounded steps: kernel chunks, then settlement, then statistics."""

    def __init__(
        self,
        market: Market,
        strategy: Registered,
        params: Mapping[str, Any],
        costs: Costs,
        long_only: bool,
        cash: float,
        state: KernelState | None = None,
    ) -> None:
        self.market, self.strategy, self.params = market, strategy, params
        self.costs, self.long_only = costs, long_only
        self.warmup = strategy.warmup(params)
        self.state = state if state is not None else kernel.initial_state(cash, self.warmup + 1)
        management = Management(**{k: params[k] for k in MANAGEMENT_FIELDS if k in params})
        self.manager = market.manager(management) if management.active else None
        self.signals: Signals | None = None
        self.sim: Simulation | None = None
        self.metrics: dict[str, object] | None = None

    @property
    def done(self) -> bool:
        return self.metrics is not None

    def step(self, max_events: int = EVENTS_PER_CHUNK) -> None:
        bars = self.market.bars
        if not self.state.done:
            if self.signals is None:
                # Recomputed after a resume too (not saved): same data, same signals.
                try:
                    self.signals = signals_for(self.market, self.strategy, self.params, self.long_only)
                except IndicatorUnfinished:
                    return  # a bounded part of an exact replay is done; the next step goes on
                if self.manager is None and (self.signals.stop is not None or self.signals.target is not None):
                    self.manager = self.market.manager(Management())  # the strategy's own levels
                if self.manager is not None:
                    self.manager.signals = self.signals
            if self.manager is None:
                kernel.advance(self.state, self.signals, self.market.open_list, len(bars), self.costs, max_events)
            else:
                advance_managed(self.state, self.signals, self.manager, self.costs, max_events)
        elif self.sim is None:
            self.sim = kernel.settle(self.state, bars.open, bars.close, self.warmup + 1, self.costs, self.manager)
        else:
            self.metrics = compute_metrics(bars.dates, bars.close, self.sim.equity, self.sim.trades, self.warmup)


def run_once(
    market: Market, strategy: Registered, params: Mapping[str, Any], costs: Costs, long_only: bool, cash: float
) -> tuple[Simulation, dict[str, object]]:
    """One complete backtest without pauses."""
    job = Job(market, strategy, params, costs, long_only, cash)
    while not job.done:
        job.step(1 << 30)
    assert job.sim is not None and job.metrics is not None
    return job.sim, job.metrics


class BacktestRun:
    """One task's run. Call `advance()` until `done`; between calls the worker reports progress,
    checks for a cancel and may save `checkpoint()`."""

    def __init__(self, spec: BacktestSpec, catalog: Catalog, checkpoint: Checkpoint | None = None) -> None:
        known = strategies()
        strategy = known.require(spec.strategy)  # before validation: a missing plugin is not a bad request
        errors = check_spec(spec, catalog, known)
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
        params = {**strategy.with_defaults(spec.params), **spec.management}
        self.combinations = (
            list(sweep.admissible(self.strategy, params, spec.constraint, len(bars))) if spec.is_sweep else [params]
        )
        self.rows: list[SweepRow] = []
        self._ranked: list[SweepRow] | None = None
        self._fast = self._fast_sweep() if spec.is_sweep else None
        self._job: Job | None = None
        self._best: Job | None = None
        self._trades: dict[str, list[Any]] | None = None
        self._outcome: Outcome | None = None
        if checkpoint is not None:
            self._restore(checkpoint)

    def _fast_sweep(self) -> Any:
        """The compiled batch path for this sweep (`fast_sweep.py`), or None where it does not apply:
        position management, an objective it does not compute, or numba not installed."""
        if not self.spec.is_sweep:
            return None
        try:
            from consumers.engine import fast_sweep  # imports numba: only for a sweep
        except ImportError:
            return None
        if not fast_sweep.eligible(self.spec.objective, self.spec.management):
            return None
        return fast_sweep.FastSweep(
            self.market.indicators,
            self.market.bars.dates,
            self.strategy,
            self.costs,
            self.spec.long_only,
            self.spec.cash,
            self.spec.objective,
        )

    def _new_job(self, params: Mapping[str, Any], state: KernelState | None = None) -> Job:
        return Job(self.market, self.strategy, params, self.costs, self.spec.long_only, self.spec.cash, state)

    def _restore(self, cp: Checkpoint) -> None:
        if cp.version != CHECKPOINT_VERSION or cp.fingerprint != self.fingerprint:
            raise CheckpointError("checkpoint belongs to another request, data or engine version; start over")
        if len(cp.rows) > len(self.combinations) or (not self.spec.is_sweep and cp.rows):
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
        return self._outcome is not None

    @property
    def progress(self) -> float:
        if self._outcome is not None:
            return 1.0
        total = len(self.combinations)
        within = 0.0
        if self._job is not None:
            within = self._job.state.cursor / max(1, len(self.market.bars))
        return 0.99 * min(1.0, (len(self.rows) + within) / total)

    def advance(self, max_seconds: float = 0.02) -> None:
        """Do about `max_seconds` of work (at least one step) and return."""
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
        last = self._best if self.spec.is_sweep else self._job
        return last is not None and last.done

    def _step(self) -> None:
        if not self.spec.is_sweep:
            if self._job is None:
                self._job = self._new_job(self.combinations[0])
            self._step_last(self._job, self._single_outcome)
            return
        if len(self.rows) < len(self.combinations):
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
                self.rows.append(sweep.make_row(dict(self._job.params), self._job.metrics, self.spec.objective))
                self._job = None
            return
        if self._best is None:
            self._best = self._new_job(self._best_params())
        self._step_last(self._best, self._sweep_outcome)

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
        if self._ranked is None or len(self._ranked) != len(self.rows):
            self._ranked = sweep.ranked(self.rows)
        return self._ranked

    def _single_outcome(self, job: Job) -> Outcome:
        assert job.sim is not None and job.metrics is not None
        detail = backtest_detail(
            self.market.bars, job.sim, job.metrics, self.spec.strategy, job.params, trades=self._trades
        )
        if self.unit is not None:
            in_units(detail, self.unit)
        data = self._data()
        return Outcome({"metrics": headline(detail["metrics"]), "data": data}, {**detail, "data": data})

    def _sweep_outcome(self, best: Job) -> Outcome:
        assert best.sim is not None and best.metrics is not None
        best_detail = backtest_detail(
            self.market.bars, best.sim, best.metrics, self.spec.strategy, best.params, trades=self._trades
        )
        if self.unit is not None:
            in_units(best_detail, self.unit)
        table = self._table()
        grid = sweep.grid_size({**self.spec.params, **self.spec.management})
        detail = sweep_detail(table, self.spec.objective, grid, best_detail)
        data = self._data()
        summary = {
            "metrics": headline(best_detail["metrics"]),
            "best_params": json_safe(dict(best.params)),
            "objective": self.spec.objective,
            "combinations": len(self.rows),
            "data": data,
        }
        return Outcome(summary, {**detail, "data": data})

    def _data(self) -> dict[str, Any]:
        """What the result was computed on (see STRATEGIES.md "Data"), as JSON types."""
        return msgspec.to_builtins(self.market.provenance)  # type: ignore[no-any-return]

    def checkpoint(self) -> Checkpoint:
        """The state after the last step. A step in settlement or statistics is redone on resume."""
        saved = None
        job = self._job or self._best
        if job is not None:
            state = job.state
            saved = msgspec.structs.replace(state, trades=list(state.trades), segments=list(state.segments))
        return Checkpoint(fingerprint=self.fingerprint, kernel=saved, rows=list(self.rows))

    def outcome(self) -> Outcome:
        if self._outcome is None:
            raise EngineError("the run is not done yet: call advance() until done")
        return self._outcome


def start_run(spec: BacktestSpec, catalog: Catalog) -> BacktestRun:
    """Validate the request and set up its run; raises SpecError or DatasetError (not retryable)."""
    return BacktestRun(spec, catalog)


def resume_run(spec: BacktestSpec, catalog: Catalog, checkpoint: Checkpoint) -> BacktestRun:
    """Continue from a checkpoint; raises CheckpointError if it belongs to other input."""
    return BacktestRun(spec, catalog, checkpoint)
