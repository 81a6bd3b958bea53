"""The one ranking of a sweep's rows, shared by the engine (a task's table) and the assembly of a
job's table from its chunks, so both order the same rows the same way."""

from __future__ import annotations


def score(objective: float | None, minimise: bool) -> float | None:
    """The value a row is ranked by, highest first: the objective, negated when it is minimised;
    None when the row has no objective value (no trade, or the metric undefined)."""
    if objective is None:
        return None
    return -objective if minimise else objective


def bankrupt(equity_final: float | None) -> bool:
    """The row's run lost everything: its final equity (account currency) reached 0."""
    return equity_final is not None and equity_final <= 0


def rank_key(objective: float | None, equity_final: float | None, minimise: bool) -> tuple[bool, bool, float]:
    """The sort key of a row, smallest first, for a stable sort: bankrupt rows after all others
    whatever the objective (backtesting.py ranks by the objective alone, so a run that lost
    everything could outrank one that did not); then rows without an objective value (as
    optimize() skips them); then by `score` descending. Equal keys keep the order given: in a
    task that is grid order (the first maximum wins, as with pandas idxmax)."""
    value = score(objective, minimise)
    return (bankrupt(equity_final), value is None, 0.0 if value is None else -value)
