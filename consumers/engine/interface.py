"""The strategy interface: what a strategy declares and computes, built-in or plugin alike.

A strategy is a subclass of `Strategy` with a `Params` msgspec Struct (each field a number with
bounds, a default and a description, declared with `Annotated[int, msgspec.Meta(...)]`) and a
`decide` method that computes, vectorised over numpy arrays of the bars, what it does at each
bar's close in each position state (`Decisions`). The engine fills those decisions at the next
bar's open. STRATEGIES.md ("Writing a strategy") documents it with an example; the five built-ins
in `strategies.py` use nothing else.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Generic, TypeVar

import msgspec
import numpy as np
import numpy.typing as npt

from consumers.engine.indicators import IndicatorCache
from orchestrator.domain.spec import MANAGEMENT_FIELDS

# What a decision asks for at the next bar's open. Every entry first closes the open trade,
# so LONG while already long re-enters (as backtesting.py's SmaCross does on a repeated cross).
LONG, SHORT, FLAT = 1, -1, 0
# No decision at this bar (the position is kept).
HOLD = 9

BoolArray = npt.NDArray[np.bool_]
CodeArray = npt.NDArray[np.int8]
Rule = tuple[BoolArray, int]

P = TypeVar("P", bound=msgspec.Struct)


@dataclass(frozen=True)
class Decisions:
    """What the strategy does at each bar's close, for each position state it may be in.

    `flat`, `long` and `short` are int8 arrays of one code per bar (LONG, SHORT, FLAT or HOLD):
    the action taken at that bar's close when the position is flat, long or short. Build them
    with `rules()` (if/elif masks per state) or `from_target()` (a target position per bar)
    rather than by hand. Decisions inside the warm-up are ignored by the engine.

    `stop_price`, `target_price` (optional float64 arrays, one per bar, NaN for none): the
    stop-loss and take-profit price of a trade entered on the decision taken at that bar's close
    (backtesting.py's `buy(sl=, tp=)`). A level on the wrong side of the fill price (a long's
    stop at or above it, its target at or below it; mirrored for a short) is ignored; the
    request's `stop_loss_pct` / `take_profit_pct`, when set, replace these.
    """

    flat: CodeArray
    long: CodeArray
    short: CodeArray
    stop_price: npt.NDArray[np.float64] | None = None
    target_price: npt.NDArray[np.float64] | None = None

    def for_state(self, state: int) -> CodeArray:
        return self.flat if state == 0 else self.long if state > 0 else self.short


def _codes(n: int, pairs: Sequence[Rule]) -> CodeArray:
    code = np.full(n, HOLD, dtype=np.int8)
    for mask, act in reversed(pairs):  # earlier pairs overwrite later ones, like if/elif
        if act not in (LONG, SHORT, FLAT):
            raise ValueError(f"an action is LONG, SHORT or FLAT, got {act!r}")
        code[mask] = act
    return code


def rules(
    n: int,
    *,
    flat: Sequence[Rule] = (),
    long: Sequence[Rule] = (),
    short: Sequence[Rule] = (),
    stop_price: npt.NDArray[np.float64] | None = None,
    target_price: npt.NDArray[np.float64] | None = None,
) -> Decisions:
    """Decisions from (mask, action) pairs per position state, `n` bars long, with optional
    per-entry stop and target prices (see `Decisions`).

    Within a state, the first pair whose boolean mask is true at a bar decides it (if/elif);
    a bar no mask covers holds. States given the same list object share one array (read-only).
    Example, an SMA cross that always reverses:
    `rules(n, flat=[(up, LONG), (down, SHORT)], long=[(down, SHORT)], short=[(up, LONG)])`.
    """
    made: dict[int, CodeArray] = {}  # states given the same list of pairs share one array

    def codes(pairs: Sequence[Rule]) -> CodeArray:
        got = made.get(id(pairs))
        if got is None:
            got = made[id(pairs)] = _codes(n, pairs)
        return got

    return Decisions(codes(flat), codes(long), codes(short), stop_price, target_price)


def from_target(
    target: npt.NDArray[np.floating[Any]],
    *,
    stop_price: npt.NDArray[np.float64] | None = None,
    target_price: npt.NDArray[np.float64] | None = None,
) -> Decisions:
    """Decisions from a target position per bar: 1 long, -1 short, 0 flat, NaN no opinion (with
    optional per-entry stop and target prices, see `Decisions`).

    The engine trades at a bar whose target differs from the position it holds (an entry
    closes the opposite trade first); NaN bars hold whatever is held.
    """
    t = np.asarray(target, dtype=np.float64)
    bad = ~np.isnan(t) & ~np.isin(t, (-1.0, 0.0, 1.0))
    if bad.any():
        raise ValueError(f"a target is -1, 0, 1 or NaN; bar {int(np.flatnonzero(bad)[0])} has {float(t[bad][0])!r}")
    n = t.shape[0]
    out = []
    for state in (0, 1, -1):
        code = np.full(n, HOLD, dtype=np.int8)
        act = ~np.isnan(t) & (t != state)
        code[act] = t[act].astype(np.int8)
        out.append(code)
    return Decisions(out[0], out[1], out[2], stop_price, target_price)


@dataclass(frozen=True)
class Signals:
    """The engine's form of Decisions: decision bars and actions per position state (-1 short,
    0 flat, 1 long), ascending. The kernel, in state s at bar i, acts on the first entry of
    `bars[s]` at or after i."""

    bars: dict[int, list[int]]
    acts: dict[int, list[int]]
    # Per-entry levels by decision bar (NaN: none), when the strategy gives them.
    stop: list[float] | None = None
    target: list[float] | None = None


def to_signals(d: Decisions, start: int) -> Signals:
    """The decisions at bars `start` and later, as event lists per state."""
    bars: dict[int, list[int]] = {}
    acts: dict[int, list[int]] = {}
    for state in (-1, 0, 1):
        code = d.for_state(state)
        idx = np.flatnonzero(code[start:] != HOLD) + start
        bars[state] = idx.tolist()
        acts[state] = code[idx].tolist()
    stop = None if d.stop_price is None else np.asarray(d.stop_price, dtype=np.float64).tolist()
    target = None if d.target_price is None else np.asarray(d.target_price, dtype=np.float64).tolist()
    return Signals(bars, acts, stop, target)


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
        return int(self.impl.warmup(self.struct(combo)))

    def rules(self, combo: Mapping[str, Any]) -> list[tuple[str, str]]:
        return list(self.impl.check(self.struct(combo)))

    def decide(self, data: IndicatorCache, combo: Mapping[str, Any], long_only: bool) -> Decisions:
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
        return {
            "name": self.name,
            "summary": self.summary,
            "origin": self.origin,
            "params": [p.as_json() for p in self.params],
        }
