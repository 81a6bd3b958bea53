"""Planning a job: a sweep or a universe cut into chunks of admissible combinations, each a task.

A job's chunks are counted symbol by symbol (in the plan's order), each symbol's admissible
combinations in grid order (`sweep.admissible`, as a single task's sweep counts them), cut into
ranges of at most `per_chunk`; a chunk task runs its range with `runner.BacktestRun` (`chunk_spec` makes
its request) and its rows, ranked with the others by `orchestrator.domain.ranking.rank_key`,
give the table the whole sweep would have given as one task.
"""

from __future__ import annotations

import msgspec

from consumers.engine import sweep
from consumers.engine.datasets import Catalog
from consumers.engine.errors import SpecError
from consumers.engine.field_checks import FieldError
from consumers.engine.registry import Registry, strategies
from consumers.engine.validation import check_spec
from orchestrator.domain.spec import BacktestSpec, Chunk

# How long one chunk should compute (seconds): long enough that a task's own cost (claim, start,
# finish, a few ms) stays near 1% of it, short enough that a lost or cancelled chunk loses little
# and that the fleet's workers share a job evenly.
CHUNK_TARGET_SECONDS = 0.3
# The engine's cost of one combination per bar (seconds), setup included: sma_cross on the
# bundled GOOG (2,148 bars) and AAPL (3,270), 2 shared vCPUs, a chunk request run as a worker runs
# it (start_run, advance(0.05) until done), minimum of 2-3 runs. Compiled batch path (fast_sweep):
# the 10,000-combination grid fast 2..101 x slow 102..201, whole 23-30 ns, chunks of 1,000-2,000
# 24-33 ns (chunks of 100: 50-69 ns, each task's indicators being its own). Interpreted path: 400
# combinations (fast 2..21 x slow 102..121) ranked by calmar (not a fast objective) 160-214 ns, with
# stop_loss_pct 5 (position management) 264-321 ns.
FAST_SECONDS_PER_BAR = 30e-9
INTERPRETED_SECONDS_PER_BAR = 300e-9


# The most chunks a job is cut into: its fan-out is one script, whose arguments (each chunk's
# spec, ~1 KB) and writes (~5 commands a chunk) must stay small enough not to stall Redis
# (2,000 chunks: ~2 MB of arguments, ~10,000 writes, a few ms). Chunks grow to stay below it.
MAX_CHUNKS = 2_000


class Span(msgspec.Struct, frozen=True):
    """The combinations [start, stop) of `symbol`'s admissible ones, in grid order, that one
    chunk computes."""

    symbol: str
    start: int
    stop: int


class JobPlan(msgspec.Struct, frozen=True):
    """A job's chunks: `symbols` the universe resolved (dataset names; "*": every dataset,
    sorted), `spans` one per chunk in chunk order (symbol by symbol, each in grid order),
    `combinations` the admissible combinations over all symbols, `per_chunk` the most a chunk
    holds (a symbol's combinations are cut into the fewest such chunks, of sizes within 1)."""

    symbols: list[str]
    spans: list[Span]
    combinations: int
    per_chunk: int


def plan_job(
    spec: BacktestSpec,
    catalog: Catalog,
    known: Registry | None = None,
    *,
    target_seconds: float = CHUNK_TARGET_SECONDS,
) -> JobPlan | None:
    """The chunks of the request, or None when it is not a job: it names no universe and is a
    single backtest or a sweep one chunk computes. A universe (`symbols`) is always a job.
    `known`: the strategies (default: this process's). Chunks are sized to compute for about
    `target_seconds` on the longest date range of the universe, at least 1 combination.

    Raises StrategyMissing, SpecError (the request fails `check_spec`), DatasetError,
    DataUnavailable (the data cannot be read now: retry)."""
    known = strategies() if known is None else known
    strategy = known.require(spec.strategy)  # before validation: a missing plugin is not a bad request
    errors = check_spec(spec, catalog, known)
    if errors:
        raise SpecError("; ".join(f"{e.field}: {e.message}" for e in errors), list(errors))
    if spec.symbols is None:
        symbols = [catalog.load(spec.symbol).symbol]
    elif spec.symbols == "*":
        symbols = catalog.symbols()
    else:
        symbols = [catalog.load(s).symbol for s in spec.symbols]
    params = {**strategy.with_defaults(spec.params), **spec.management}
    grid = msgspec.json.encode(params)
    counts: list[int] = []
    longest = 1
    for symbol in symbols:
        n_bars = len(catalog.load(symbol).prices(spec.adjusted)[0].between(spec.start, spec.end))
        longest = max(longest, n_bars)
        # The scan the chunks this worker runs reuse (sweep.admissible_of).
        counts.append(len(sweep.admissible_of(spec.strategy, grid, spec.constraint, n_bars)) if spec.is_sweep else 1)
    per_chunk = max(1, int(target_seconds / (_seconds_per_bar(spec) * longest)))
    if len(symbols) > MAX_CHUNKS // 2:
        message = f"{len(symbols)} symbols; a job runs on at most {MAX_CHUNKS // 2}"
        raise SpecError(f"symbols: {message}", [FieldError("symbols", message)])
    # Each symbol's last chunk may be short: at most total / per_chunk + symbols chunks in all.
    per_chunk = max(per_chunk, -(-sum(counts) // (MAX_CHUNKS - len(symbols))))
    if spec.symbols is None and (not spec.is_sweep or counts[0] <= per_chunk):
        return None
    spans = [span for symbol, n in zip(symbols, counts, strict=True) for span in _cut(symbol, n, per_chunk)]
    return JobPlan(symbols=symbols, spans=spans, combinations=sum(counts), per_chunk=per_chunk)


def _cut(symbol: str, n: int, per_chunk: int) -> list[Span]:
    """`n` combinations in the fewest chunks of at most `per_chunk`, their sizes within 1 of each
    other (no small last chunk to wait for)."""
    k = -(-n // per_chunk)
    return [Span(symbol, i * n // k, (i + 1) * n // k) for i in range(k)]


def _seconds_per_bar(spec: BacktestSpec) -> float:
    """The measured cost of one combination per bar on the path the request's runs take."""
    try:
        from consumers.engine import fast_sweep  # imports numba, as the run will
    except ImportError:
        return INTERPRETED_SECONDS_PER_BAR
    if spec.is_sweep and fast_sweep.eligible(spec.metric, spec.management):
        return FAST_SECONDS_PER_BAR
    return INTERPRETED_SECONDS_PER_BAR


def chunk_spec(spec: BacktestSpec, plan: JobPlan, index: int, parent: str) -> BacktestSpec:
    """The request of chunk `index` of the job `parent` (its task id): the job's request on the
    span's symbol alone, with `chunk` set to the span. Raises IndexError for an index outside
    the plan."""
    if not 0 <= index < len(plan.spans):
        raise IndexError(f"chunk {index} is not in the plan's {len(plan.spans)} chunks")
    span = plan.spans[index]
    return msgspec.structs.replace(
        spec,
        symbol=span.symbol,
        symbols=None,
        chunk=Chunk(parent=parent, index=index, start=span.start, stop=span.stop),
    )
