"""The projector: folds every partition's event log into its current-state hashes, exactly once in
effect; live projectors share the partitions through leases (see partition_leases.py)."""

from __future__ import annotations

import asyncio
import gc
import uuid
from collections.abc import Callable

import redis.exceptions
import structlog

from consumers.partition_folder import FOLLOW_INTERVAL_S, Batch, PartitionFolder, Source
from consumers.partition_leases import PartitionLeases
from orchestrator.storage.connections import store_unavailable
from orchestrator.storage.presence import Heartbeat
from orchestrator.storage.readmodel import Projection

__all__ = ["FOLLOW_INTERVAL_S", "GC_THRESHOLD", "LEASE_MS", "Batch", "Projector", "Source", "collect_less_often"]

log = structlog.get_logger("backstream.projector")

# The least number of net allocations of tracked objects between two passes of the cycle
# collector in a process that folds (CPython's default is 700). A batch's XREAD reply and its
# decode allocate ~12,000 containers that live for one batch; at 700 they were promoted to the
# oldest generation and made full passes over the heap, ~2.4 of ~9 µs of CPU per event.
GC_THRESHOLD = 20_000

# How long a projector's lease on a partition lasts unless renewed (renewed every third of it),
# by default: the workers' lease (Settings.lease_ms). A projector that dies without giving its
# partitions back leaves them unfolded this long at most (the API's reads of single tasks fold
# unprojected events themselves; lists lag).
LEASE_MS = 15_000


class Projector:
    """Folds the partitions of `projection` in batches of up to `batch_size` events (a blocking
    read waits up to `block_ms` ms). `source`: where a one-partition projection's events are read
    (tests); `sources(i)`: where partition i's are (replay passes archives); default: the logs.
    `on_batch(n)`: called after each stored batch; `heartbeat`: the live projector's liveness,
    whose name is also the name its leases hold (else a random one). `lease_ms`: see LEASE_MS.
    `applied` counts the events stored. Raises ValueError for `source` on several partitions."""

    def __init__(
        self,
        projection: Projection,
        *,
        batch_size: int = 1000,
        block_ms: int = 1000,
        source: Source | None = None,
        sources: Callable[[int], Source] | None = None,
        on_batch: Callable[[int], None] | None = None,
        heartbeat: Heartbeat | None = None,
        lease_ms: int = LEASE_MS,
    ) -> None:
        if source is not None and projection.layout.width > 1:
            raise ValueError("`source` reads one partition; give `sources` for a projection of several")
        self.projection = projection
        # The live projector's liveness for /readyz and for the others' shares; replays run without.
        self.heartbeat = heartbeat
        self.batch_size = batch_size
        self.block_ms = block_ms
        self.sources = sources if source is None else (lambda _: source)
        self.on_batch = on_batch
        self.name = heartbeat.name if heartbeat is not None else f"projector-{uuid.uuid4().hex[:12]}"
        self.leases = PartitionLeases(projection.redis, projection.layout, self.name, lease_ms=lease_ms)
        self._stopping = asyncio.Event()
        self._steppers: dict[int, PartitionFolder] = {}
        self._leading: _Leading | None = None
        self.applied = 0

    @property
    def folding(self) -> list[int]:
        """The partitions this following projector folds now (it holds their leases), sorted."""
        return sorted(self._leading.held) if self._leading is not None else []

    def stop(self) -> None:
        """Stop following; the batches in flight are still stored, the leases given back."""
        self._stopping.set()

    def _stored(self, count: int) -> None:
        self.applied += count
        if self.on_batch is not None:
            self.on_batch(count)

    def folder(self, index: int) -> PartitionFolder:
        """A new folder of partition `index` (with an empty cache), reporting to this projector."""
        source = self.sources(index) if self.sources is not None else None
        return PartitionFolder(
            self.projection,
            index,
            batch_size=self.batch_size,
            block_ms=self.block_ms,
            source=source,
            on_stored=self._stored,
        )

    async def step(self, *, block: bool = False) -> int:
        """Fold and store one batch of each partition after its stored position (whatever the
        leases say). Returns how many events were read."""
        read = 0
        await self.projection.connect()
        for index in range(self.projection.layout.width):
            stepper = self._steppers.setdefault(index, self.folder(index))
            read += await stepper.step(block=block)
        return read

    async def run(self, *, burst: bool = False) -> None:
        """In burst mode, fold every partition (each in a task of its own, leases aside) and
        return once all are fully folded. Else follow the partitions this projector holds a lease
        on, rebalancing every third of a lease, until stopped (`stop`: the leases are given back;
        cancelled: they are left to expire, as a crash leaves them). The first error of a
        partition's folder (a gap seen twice, a store error that does not pass) stops the others
        and is raised. The process's cycle collector is made to run less often."""
        log.info("projector.started", projection=self.projection.layout.projection_name, name=self.name)
        collect_less_often()
        heartbeat = self.heartbeat
        beating = asyncio.create_task(heartbeat.run()) if heartbeat is not None else None
        crashed = False
        try:
            await self.projection.connect()
            if burst:
                width = self.projection.layout.width
                await _all_or_none([asyncio.create_task(self.folder(i).run(burst=True)) for i in range(width)])
            else:
                self._leading = _Leading(self)
                await self._leading.run()
        except asyncio.CancelledError:
            crashed = True  # as a crash leaves it: the heartbeat ages out, the leases expire
            raise
        finally:
            if heartbeat is not None and beating is not None:
                beating.cancel()
                if not crashed:
                    await heartbeat.remove()
        log.info("projector.stopped", applied=self.applied)


class _Leading:
    """A following projector's partitions: a folder task per held lease, rebalanced on a timer."""

    def __init__(self, projector: Projector) -> None:
        self.projector = projector
        self.leases = projector.leases
        self.held: dict[int, tuple[PartitionFolder, asyncio.Task[None]]] = {}
        self.interval_s = projector.leases.lease_ms / 3000

    async def run(self) -> None:
        """Rebalance, then wait a third of a lease (or until stopped, or a folder ends), again.
        Stopped or failed: the folders stop and the leases are given back. Cancelled: the
        folders are cancelled (their stores in flight still land) and the leases left to expire."""
        stopping = asyncio.create_task(self.projector._stopping.wait())
        try:
            while not stopping.done():
                await self._rebalance()
                self._raise_failures()
                folding = [task for _, task in self.held.values()]
                await asyncio.wait([stopping, *folding], timeout=self.interval_s, return_when=asyncio.FIRST_COMPLETED)
                self._raise_failures()
        except asyncio.CancelledError:
            for _, task in self.held.values():
                task.cancel()
            await asyncio.gather(*(task for _, task in self.held.values()), return_exceptions=True)
            raise
        except BaseException:
            await self._give_back(list(self.held))
            raise
        finally:
            stopping.cancel()
        errors = await self._give_back(list(self.held))
        if errors:
            raise errors[0]

    async def _rebalance(self) -> None:
        """Renew the held leases, stop folding the lost ones, give back extras, take free ones."""
        try:
            lost = await self.leases.renew(list(self.held))
            if lost:
                log.info("projector.leases_lost", partitions=lost, name=self.leases.name)
                for error in await self._stop_folding(lost):
                    raise error
            share = await self.leases.share()
            extras = self.leases.extras(share, set(self.held))
            for error in await self._give_back(extras):
                raise error
            taken = await self.leases.take(share, set(self.held))
        except redis.exceptions.RedisError as e:
            if not store_unavailable(e):
                raise
            # The folders wait outages out themselves; the leases are renewed at the next turn.
            log.warning("store.unavailable", error=str(e), error_type=type(e).__name__, retry_in_s=self.interval_s)
            return
        for index in taken:
            folder = self.projector.folder(index)
            self.held[index] = (folder, asyncio.create_task(folder.run()))
        if lost or extras or taken:
            log.info("projector.partitions", held=sorted(self.held), quota=share.quota, name=self.leases.name)

    async def _stop_folding(self, indexes: list[int]) -> list[BaseException]:
        """Stop the folders of `indexes` (their batches in flight are stored) and forget them;
        returns the errors they ended with."""
        stopping = [self.held.pop(i) for i in indexes if i in self.held]
        for folder, _ in stopping:
            folder.stop()
        results = await asyncio.gather(*(t for _, t in stopping), return_exceptions=True)
        return [e for e in results if isinstance(e, BaseException) and not isinstance(e, asyncio.CancelledError)]

    async def _give_back(self, indexes: list[int]) -> list[BaseException]:
        """Stop folding `indexes`, then release their leases (best effort: they expire anyway);
        returns the errors the folders ended with."""
        errors = await self._stop_folding(indexes)
        try:
            await self.leases.release(indexes)
        except redis.exceptions.RedisError as e:
            log.warning("projector.leases_not_released", partitions=indexes, error=str(e))
        return errors

    def _raise_failures(self) -> None:
        """Raise the error a folder ended with (a folder ends early only on one)."""
        for index, (_, task) in list(self.held.items()):
            if task.done():
                del self.held[index]
                task.result()


async def _all_or_none(tasks: list[asyncio.Task[None]]) -> None:
    """Wait for every task; on the first error (or a cancel), cancel the others, let them finish,
    and raise it."""
    try:
        done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        for task in done:
            task.result()
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def collect_less_often() -> None:
    """Raise this process's first cycle-collector threshold to at least GC_THRESHOLD (never
    lower it): the projector's batches are short-lived containers, not cycles. Process-wide and
    kept after the projector stops; nothing is left uncollected, only collected later."""
    threshold, *older = gc.get_threshold()
    if threshold < GC_THRESHOLD:
        gc.set_threshold(GC_THRESHOLD, *older)
