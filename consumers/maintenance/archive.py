"""The log archive: newline-delimited JSON of stream entries, for audit outside Redis.

Each line is one entry, `{"id": "<stream id>", "fields": {<field>: <value>}}`, exactly as
stored (so an archive replays byte for byte); a first line `{"archive": "backstream-log", ...}`
describes the export. Files ending in `.gz` are gzip-compressed.
"""

from __future__ import annotations

import bisect
import gzip
import json
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any, Literal

from orchestrator.domain.events import StoredEvent
from orchestrator.domain.ids import id_order
from orchestrator.storage.codec import decode_entry, stream_entries, text
from orchestrator.storage.connections import RedisClient
from orchestrator.storage.keys import Keys

ARCHIVE_FORMAT = "backstream-log"


def _open(path: Path, mode: Literal["r", "w"]) -> IO[str]:
    if path.suffix == ".gz":
        return gzip.open(path, "rt" if mode == "r" else "wt", encoding="utf-8")
    return open(path, mode, encoding="utf-8")  # noqa: SIM115


async def export(
    redis: RedisClient, keys: Keys, path: Path, *, since: str = "-", until: str = "+", page: int = 10_000
) -> tuple[int, str | None]:
    """Write the log entries with since <= id <= until to `path`. Returns (count, last id)."""
    count, last = 0, None
    with _open(path, "w") as out:
        out.write(
            json.dumps({"archive": ARCHIVE_FORMAT, "version": 1, "prefix": keys.prefix, "since": since, "until": until})
            + "\n"
        )
        start = since
        while True:
            entries = stream_entries(await redis.xrange(keys.events, start, until, count=page))
            for entry_id, fields in entries:
                last = text(entry_id)
                out.write(
                    json.dumps(
                        {"id": last, "fields": {text(k): text(v) for k, v in fields.items()}}, separators=(",", ":")
                    )
                    + "\n"
                )
            count += len(entries)
            if len(entries) < page:
                break
            start = f"({last}"
    return count, last


def read_entries(path: Path) -> Iterator[tuple[str, dict[str, str]]]:
    """The (stream id, fields) of each entry of an archive file, in file order. Raises ValueError
    when the file is not a backstream-log archive, OSError and json errors as they come."""
    with _open(path, "r") as lines:
        for number, line in enumerate(lines, 1):
            record = json.loads(line)
            if "archive" in record:
                if record["archive"] != ARCHIVE_FORMAT:
                    raise ValueError(f"{path}: line {number}: not a {ARCHIVE_FORMAT} archive")
                continue
            yield record["id"], record["fields"]


class ArchiveThenLive:
    """One history from an archive file and the live log after it: a projector `Source`.
    Entries the live log still holds are taken once, from the live log."""

    def __init__(self, paths: list[Path], live: Any) -> None:
        entries: dict[str, dict[str, str]] = {}
        for path in paths:
            entries.update(read_entries(path))
        self._ids = sorted(entries, key=id_order)
        self._keys = [id_order(i) for i in self._ids]
        self._entries = entries
        self._live = live  # Projection.read_log of the live log
        self.archived = len(self._ids)

    async def __call__(self, after: str | None, count: int, block_ms: int | None) -> list[StoredEvent]:
        """Up to `count` archived events after stream id `after` (None: from the first), in log
        order; [] at the end. `block_ms` is ignored: an archive never grows."""
        start = bisect.bisect_right(self._keys, id_order(after)) if after else 0
        if start < len(self._ids):
            chunk = self._ids[start : start + count]
            return [decode_entry(i, self._entries[i]) for i in chunk]
        return list(await self._live(after, count, block_ms))
