"""Which strategies this process can run: the built-ins and those installed as plugins.

A plugin is a Python package the operator installs on the workers and the API; it declares its
strategies in the entry-point group `backstream.strategies` (see examples/README.md):

    [project.entry-points."backstream.strategies"]
    donchian = "backstream_donchian:Donchian"

Plugins are code the operator installs, never code sent over the API: a request names a
strategy, and only the installed ones exist.
"""

from __future__ import annotations

import functools
import importlib.metadata
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import structlog

from consumers.engine.errors import EngineError
from consumers.engine.interface import Registered, Strategy
from consumers.engine.strategies import STRATEGIES

GROUP = "backstream.strategies"

log = structlog.get_logger()


class StrategyMissing(EngineError):
    """The request names a strategy this process does not have (the API accepted it, so another
    machine has the plugin and this one does not). Not retryable: the same worker fails the same
    way until the operator installs it; `POST /api/tasks/{id}/retry` requeues the task after that."""

    retryable = False


@dataclass(frozen=True)
class LoadFailure:
    """An entry point that did not give a usable strategy, and why (logged, and shown by the API)."""

    entry_point: str  # "name = module:object"
    error: str


@dataclass(frozen=True)
class Registry(Mapping[str, Registered]):
    """Strategies by name: the built-ins first, then plugins in entry-point order."""

    by_name: dict[str, Registered]
    failures: list[LoadFailure] = field(default_factory=list)

    def __getitem__(self, name: str) -> Registered:
        return self.by_name[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self.by_name)

    def __len__(self) -> int:
        return len(self.by_name)

    def require(self, name: str) -> Registered:
        """The strategy `name`; raises StrategyMissing naming what this process has instead."""
        got = self.by_name.get(name)
        if got is None:
            raise StrategyMissing(
                f"strategy {name!r} is not installed in this process (it has {', '.join(self.by_name)}); install "
                f"the package that provides it on every worker and the API (entry-point group {GROUP!r}), "
                "then retry the task"
            )
        return got


def _load(ep: importlib.metadata.EntryPoint) -> Registered:
    obj: Any = ep.load()
    if isinstance(obj, type):
        if not issubclass(obj, Strategy):
            raise TypeError(f"{ep.value} is not a subclass of consumers.engine.interface.Strategy")
        obj = obj()
    if not isinstance(obj, Strategy):
        raise TypeError(f"{ep.value} is not a Strategy (subclass or instance)")
    dist = ep.dist.name if ep.dist is not None else "?"
    got = Registered(obj, origin=f"{dist}: {ep.value}")
    if got.name != ep.name:
        raise TypeError(f"the entry point is named {ep.name!r} but the strategy calls itself {got.name!r}")
    return got


def discover(entry_points: Iterable[importlib.metadata.EntryPoint] | None = None) -> Registry:
    """The built-ins plus every strategy in the `backstream.strategies` entry-point group (or the
    given entry points). A plugin that fails to load, breaks the interface or reuses a taken name
    is left out and logged (`strategy.load_failed`): one broken package never hides the others."""
    found = dict(STRATEGIES)
    failures = []
    seen = set()
    eps = importlib.metadata.entry_points(group=GROUP) if entry_points is None else entry_points
    for ep in eps:
        if (ep.name, ep.value) in seen:  # one distribution reachable twice on sys.path
            continue
        seen.add((ep.name, ep.value))
        where = f"{ep.name} = {ep.value}"
        try:
            got = _load(ep)
            if got.name in found:
                raise TypeError(f"a strategy named {got.name!r} already exists ({found[got.name].origin})")
        except Exception as e:  # a plugin's import can raise anything; it must not stop the others
            failures.append(LoadFailure(where, f"{type(e).__name__}: {e}"))
            log.error("strategy.load_failed", entry_point=where, error=f"{type(e).__name__}: {e}")
            continue
        found[got.name] = got
        log.info("strategy.loaded", strategy=got.name, origin=got.origin)
    return Registry(found, failures)


@functools.cache
def strategies() -> Registry:
    """This process's strategies, discovered once (installing a plugin needs a restart)."""
    return discover()
