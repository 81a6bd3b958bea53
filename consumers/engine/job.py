"""One backtest advancing in bounded steps: kernel chunks, then settlement, then statistics."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from consumers.engine import kernel
from consumers.engine.decisions import Signals
from consumers.engine.indicators import IndicatorUnfinished
from consumers.engine.interface import Registered
from consumers.engine.kernel import Costs, KernelState, Simulation
from consumers.engine.managed import Management, advance_managed
from consumers.engine.market import Market, signals_for
from consumers.engine.metrics import compute_metrics
from orchestrator.domain.spec import MANAGEMENT_FIELDS

# Decisions per kernel chunk between clock checks: ~1 µs each, so a check every ~0.1 ms.
EVENTS_PER_CHUNK = 128


class Job:
    """One backtest of `params` on `market`: call `step()` until `done`, then read `sim` (trades
    and equity) and `metrics` (compute_metrics' names). `state` resumes a saved kernel state."""

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
        """True once the statistics are computed (`sim` and `metrics` are set)."""
        return self.metrics is not None

    def step(self, max_events: int = EVENTS_PER_CHUNK) -> None:
        """One bounded step: up to `max_events` decisions, or the settlement, or the statistics.
        Raises RepresentationError when a value exceeds what the engine represents."""
        bars = self.market.bars
        if not self.state.done:
            if self.signals is None and not self._make_signals():
                return  # a bounded part of an exact replay is done; the next step goes on
            assert self.signals is not None
            if self.manager is None:
                kernel.advance(self.state, self.signals, self.market.open_list, len(bars), self.costs, max_events)
            else:
                advance_managed(self.state, self.signals, self.manager, self.costs, max_events)
        elif self.sim is None:
            self.sim = kernel.settle(self.state, bars.open, bars.close, self.warmup + 1, self.costs, self.manager)
        else:
            self.metrics = compute_metrics(bars.dates, bars.close, self.sim.equity, self.sim.trades, self.warmup)

    def _make_signals(self) -> bool:
        """Compute the signals (recomputed after a resume too: same data, same signals); False
        while an exact indicator replay is still under way."""
        try:
            self.signals = signals_for(self.market, self.strategy, self.params, self.long_only)
        except IndicatorUnfinished:
            return False
        if self.manager is None and (self.signals.stop is not None or self.signals.target is not None):
            self.manager = self.market.manager(Management())  # the strategy's own levels
        if self.manager is not None:
            self.manager.signals = self.signals
        return True


def run_once(
    market: Market, strategy: Registered, params: Mapping[str, Any], costs: Costs, long_only: bool, cash: float
) -> tuple[Simulation, dict[str, object]]:
    """One complete backtest without pauses: its simulation and metrics (the benchmarks' path)."""
    job = Job(market, strategy, params, costs, long_only, cash)
    while not job.done:
        job.step(1 << 30)
    assert job.sim is not None and job.metrics is not None
    return job.sim, job.metrics
