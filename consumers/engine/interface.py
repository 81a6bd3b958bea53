"""The strategy interface: what a strategy declares and computes, built-in or plugin alike.

A strategy is a subclass of `Strategy` with a `Params` msgspec Struct (each field a number with
bounds, a default and a description, declared with `Annotated[int, msgspec.Meta(...)]`) and a
`decide` method that computes, vectorised over numpy arrays of the bars, what it does at each
bar's close in each position state (`Decisions`). The engine fills those decisions at the next
bar's open. STRATEGIES.md ("Writing a strategy") documents it with an example; the five built-ins
in `strategies.py` use nothing else.

This is the module plugins import from: it also names everything of `decisions.py` a strategy
uses (the action codes, `Decisions`, `rules`, `from_target`).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Generic, TypeVar

import msgspec
import numpy as np

from consumers.engine.decisions import (
    FLAT,
    HOLD,
    LONG,
    SHORT,
    BoolArray,
    CodeArray,
    Decisions,
    Rule,
    Signals,
    from_target,
    rules,
    to_signals,
)
from consumers.engine.indicators import IndicatorCache
from orchestrator.domain.spec import MANAGEMENT_FIELDS

__all__ = [
    "FLAT",
    "HOLD",
    "LONG",
    "SHORT",
    "BoolArray",
    "CodeArray",
    "Decisions",
    "InterfaceError",
    "ParamDef",
    "Registered",
    "Rule",
    "Signals",
    "Strategy",
    "from_target",
    "param_defs",
    "rules",
    "to_signals",
]

P = TypeVar("P", bound=msgspec.Struct)


@dataclass(frozen=True)
class ParamDef:
    """One parameter as validation, the API and the forms see it, read from the Params Struct."""

    name: str
    kind: type  # int or float
    minimum: float  # -inf when unbounded
    maximum: float  # inf when unbounded
    min_exclusive: bool
    max_exclusive: bool
    default: float | None  # None: required
    doc: str

    def as_json(self) -> dict[str, Any]:
        """The parameter as `/api/strategies` lists it (`orchestrator.domain.views.StrategyParam`):
        infinite bounds become None."""
        return {
            "name": self.name,
            "type": "integer" if self.kind is int else "number",
            "minimum": self.minimum if math.isfinite(self.minimum) else None,
            "maximum": self.maximum if math.isfinite(self.maximum) else None,
            "exclusive_minimum": self.min_exclusive,
            "exclusive_maximum": self.max_exclusive,
            "default": self.default,
            "description": self.doc,
        }


class InterfaceError(TypeError):
    """A strategy class does not follow the interface; the message says what to change."""


def param_defs(params: type[msgspec.Struct]) -> tuple[ParamDef, ...]:
    """The parameters a Params Struct declares. Raises InterfaceError for a field that is not an
    int or float (a sweep needs numbers), and for one without a description."""
    info = msgspec.inspect.type_info(params)
    if not isinstance(info, msgspec.inspect.StructType):
        raise InterfaceError(f"Params must be a msgspec.Struct, got {params!r}")
    out = []
    for f in info.fields:
        t, doc = f.type, ""
        if isinstance(t, msgspec.inspect.Metadata):
            doc = str((t.extra_json_schema or {}).get("description", ""))
            t = t.type
        if isinstance(t, msgspec.inspect.IntType):
            kind: type = int
        elif isinstance(t, msgspec.inspect.FloatType):
            kind = float
        else:
            raise InterfaceError(f"{params.__name__}.{f.name}: a parameter is an int or a float, got {t!r}")
        if not doc:
            raise InterfaceError(f"{params.__name__}.{f.name}: give it a description (msgspec.Meta(description=...))")
        low, high = (t.gt, True) if t.gt is not None else (t.ge, False)
        top, top_x = (t.lt, True) if t.lt is not None else (t.le, False)
        default = None if f.required else f.default
        out.append(
            ParamDef(
                f.name,
                kind,
                -math.inf if low is None else float(low),
                math.inf if top is None else float(top),
                bool(low is not None and high),
                bool(top is not None and top_x),
                default,
                doc,
            )
        )
    return tuple(out)


class Strategy(ABC, Generic[P]):
    """A strategy: subclass it, set the class attributes, and implement `decide`.

    - `name`: how requests name it (`"strategy": "donchian"`); letters, digits and underscores.
    - `summary`: one line saying what it does, shown in `/api/strategies` and the submit form.
    - `Params`: a msgspec Struct whose fields are its parameters (int or float, with bounds,
      default and description in `msgspec.Meta`); the engine passes an instance to every method.

    Methods run once per parameter combination, so a sweep calls them many times over the same
    `data`: compute indicators through `data` (`data.mean(n)`, `data.memo(key, fn)`) and each
    distinct one is computed once per run, whatever the number of combinations.
    """

    name: ClassVar[str]
    summary: ClassVar[str]
    Params: ClassVar[type[msgspec.Struct]]

    def warmup(self, p: P) -> int:
        """Bars before the first one whose indicators are defined; decisions before it are ignored."""
        return 0

    def check(self, p: P) -> list[tuple[str, str]]:
        """Rules across parameters, as (field, message) pairs, e.g. ("params.fast", "must be below slow").
        A combination of a sweep that breaks one is skipped; a single run is refused with a 422."""
        return []

    @abstractmethod
    def decide(self, data: IndicatorCache, p: P, long_only: bool) -> Decisions:
        """What to do at each bar's close. `data` holds the bars (`open`, `high`, `low`, `close`,
        `volume`: float64 arrays, oldest first) and the shared indicator cache. With `long_only`
        a strategy never returns SHORT (the engine refuses to enter short in any case)."""


class Registered:
    """A strategy as the engine uses it: its parameters read once, and dict-in helpers."""

    def __init__(self, strategy: Strategy[Any], origin: str = "built-in") -> None:
        if not getattr(strategy, "name", "") or not str(strategy.name).replace("_", "").isalnum():
            raise InterfaceError(f"{type(strategy).__name__}.name must be letters, digits and underscores")
        self.impl = strategy
        self.name: str = strategy.name
        self.summary: str = getattr(strategy, "summary", "")
        self.origin = origin  # "built-in", or the entry point's "package: module:object"
        self.params = param_defs(strategy.Params)
        self.param_names = tuple(p.name for p in self.params)
        if taken := set(self.param_names) & set(MANAGEMENT_FIELDS):
            raise InterfaceError(f"{self.name}: {', '.join(sorted(taken))} name position management; rename it")
        self.defaults = {p.name: p.default for p in self.params if p.default is not None}

    def with_defaults(self, combo: Mapping[str, Any]) -> dict[str, Any]:
        """`combo` (in its order) followed by every omitted parameter at its default."""
        return {**combo, **{n: v for n, v in self.defaults.items() if n not in combo}}

    def struct(self, combo: Mapping[str, Any]) -> Any:
        """The Params instance of a combination (defaults filled, no validation: `check_spec` did it)."""
        full = self.with_defaults(combo)  # a sweep's combination also holds position management
        return self.impl.Params(**{n: full[n] for n in self.param_names if n in full})

    def warmup(self, combo: Mapping[str, Any]) -> int:
        """The strategy's warm-up (bars) for this combination."""
        return int(self.impl.warmup(self.struct(combo)))

    def rules(self, combo: Mapping[str, Any]) -> list[tuple[str, str]]:
        """The strategy's cross-parameter rules this combination breaks, as (field, message)."""
        return list(self.impl.check(self.struct(combo)))

    def decide(self, data: IndicatorCache, combo: Mapping[str, Any], long_only: bool) -> Decisions:
        """The strategy's decisions for this combination; raises InterfaceError when they are not
        Decisions of one value per bar."""
        return self._checked(self.impl.decide(data, self.struct(combo), long_only), data)

    def decide_with_warmup(
        self, data: IndicatorCache, combo: Mapping[str, Any], long_only: bool
    ) -> tuple[Decisions, int]:
        """`decide` and `warmup` of one combination, its Params built once (a sweep's inner loop)."""
        p = self.struct(combo)
        return self._checked(self.impl.decide(data, p, long_only), data), int(self.impl.warmup(p))

    def _checked(self, d: Any, data: IndicatorCache) -> Decisions:
        if not isinstance(d, Decisions):
            raise InterfaceError(f"{self.name}.decide must return Decisions, got {type(d).__name__}")
        n = data.close.shape[0]
        for a in (d.flat, d.long, d.short, d.stop_price, d.target_price):
            if a is not None and np.shape(a) != (n,):
                raise InterfaceError(f"{self.name}.decide: each array of Decisions has one value per bar ({n})")
        return d

    def as_json(self) -> dict[str, Any]:
        """The strategy as `/api/strategies` lists it (`orchestrator.domain.views.Strategy`)."""
        return {
            "name": self.name,
            "summary": self.summary,
            "origin": self.origin,
            "params": [p.as_json() for p in self.params],
        }
