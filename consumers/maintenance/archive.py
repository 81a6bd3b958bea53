"""The log archive: newline-delimited JSON of stream entries, for audit outside Redis.

Each line is one entry, `{"id": "<stream id>", "fields": {<field>: <value>}}`, exactly as
stored (so an archive replays byte for byte). A header line `{"archive": "backstream-log", ...}`
describes what follows. The archive of a one-partition deployment is one header (version 1)
and its log. That of a deployment of several partitions is one section per partition,
partition 0 first, each a header (version 2, naming its `partition`, the deployment's
`partitions` and the partition's `prefix`) followed by that partition's log: stream ids are
per partition, so entries are only ever read within their section. Entries before any
section header (a version 1 archive) are partition 0's. Files ending in `.gz` are gzip-compressed.
"""

from __future__ import annotations

import bisect
import gzip
import json
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any, Literal

import msgspec

from orchestrator.domain.events import StoredEvent
from orchestrator.domain.ids import id_order
from orchestrator.storage.codec import decode_entry, stream_entries, text
from orchestrator.storage.connections import RedisClient
from orchestrator.storage.keys import Keys
from orchestrator.storage.partitions import Layout

ARCHIVE_FORMAT = "backstream-log"


class Exported(msgspec.Struct, frozen=True):
    """What an export wrote of one partition's log: how many entries, and the last one's id
    (None: none in the range)."""

    partition: int
    count: int
    last: str | None


def _open(path: Path, mode: Literal["r", "w"]) -> IO[str]:
    if path.suffix == ".gz":
        return gzip.open(path, "rt" if mode == "r" else "wt", encoding="utf-8")
    return open(path, mode, encoding="utf-8")  # noqa: SIM115


async def _write_log(
    redis: RedisClient, keys: Keys, out: IO[str], since: str, until: str, page: int
) -> tuple[int, str | None]:
    """Write partition `keys`'s entries with since <= id <= until, `page` per XRANGE."""
    count, last = 0, None
    start = since
    while True:
        entries = stream_entries(await redis.xrange(keys.events, start, until, count=page))
        for entry_id, fields in entries:
            last = text(entry_id)
            line = {"id": last, "fields": {text(k): text(v) for k, v in fields.items()}}
            out.write(json.dumps(line, separators=(",", ":")) + "\n")
        count += len(entries)
        if len(entries) < page:
            return count, last
        start = f"({last}"


async def export(
    redis: RedisClient, keys: Keys, path: Path, *, since: str = "-", until: str = "+", page: int = 10_000
) -> tuple[int, str | None]:
    """Write one partition's log entries with since <= id <= until to `path`, as a version 1
    archive. Returns (count, last id)."""
    with _open(path, "w") as out:
        header = {"archive": ARCHIVE_FORMAT, "version": 1, "prefix": keys.prefix, "since": since, "until": until}
        out.write(json.dumps(header) + "\n")
        return await _write_log(redis, keys, out, since, until, page)


async def export_layout(
    redis: RedisClient, layout: Layout, path: Path, *, since: str = "-", until: str = "+", page: int = 10_000
) -> list[Exported]:
    """Write every partition's log entries with since <= id <= until (the same bounds in each) to
    `path`: for one partition exactly what `export` writes, else a section per partition. Returns
    what was written of each partition, partition 0 first."""
    if layout.width == 1:
        count, last = await export(redis, layout.home, path, since=since, until=until, page=page)
        return [Exported(0, count, last)]
    written = []
    with _open(path, "w") as out:
        for index, keys in enumerate(layout.partitions):
            header = {
                "archive": ARCHIVE_FORMAT,
                "version": 2,
                "partition": index,
                "partitions": layout.width,
                "prefix": keys.prefix,
                "since": since,
                "until": until,
            }
            out.write(json.dumps(header) + "\n")
            count, last = await _write_log(redis, keys, out, since, until, page)
            written.append(Exported(index, count, last))
    return written


def read_entries(path: Path, partition: int | None = None) -> Iterator[tuple[str, dict[str, str]]]:
    """The (stream id, fields) of each entry of an archive file, in file order: of every partition
    (`partition` None), or of that one only. Raises ValueError when the file is not a
    backstream-log archive, OSError and json errors as they come."""
    section = 0
    with _open(path, "r") as lines:
        for number, line in enumerate(lines, 1):
            record = json.loads(line)
            if "archive" in record:
                if record["archive"] != ARCHIVE_FORMAT:
                    raise ValueError(f"{path}: line {number}: not a {ARCHIVE_FORMAT} archive")
                section = int(record.get("partition", 0))
                continue
            if partition is None or section == partition:
                yield record["id"], record["fields"]


class ArchiveThenLive:
    """One history of partition `partition` from archive files and its live log after them: a
    projector `Source`. Entries the live log still holds are taken once, from the live log."""

    def __init__(self, paths: list[Path], live: Any, *, partition: int = 0) -> None:
        entries: dict[str, dict[str, str]] = {}
        for path in paths:
            entries.update(read_entries(path, partition))
        self._ids = sorted(entries, key=id_order)
        self._keys = [id_order(i) for i in self._ids]
        self._entries = entries
        self._live = live  # Projection.read_log of the partition's live log
        self.archived = len(self._ids)

    async def __call__(self, after: str | None, count: int, block_ms: int | None) -> list[StoredEvent]:
        """Up to `count` archived events after stream id `after` (None: from the first), in log
        order; [] at the end. `block_ms` is ignored: an archive never grows."""
        start = bisect.bisect_right(self._keys, id_order(after)) if after else 0
        if start < len(self._ids):
            chunk = self._ids[start : start + count]
            return [decode_entry(i, self._entries[i]) for i in chunk]
        return list(await self._live(after, count, block_ms))
