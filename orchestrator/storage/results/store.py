"""ResultStore: the reads and writes of results in one obstore store (a local directory, S3, or
memory). Layout under the store's root:

    <task_id>/<attempt>-<nonce>/manifest.json     written last: its presence means complete
    <task_id>/<attempt>-<nonce>/<table>.parquet   equity, trades, sweep (symbols with universes)
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import obstore
import pyarrow as pa
import pyarrow.parquet as pq

from orchestrator.domain.events import ResultRef
from orchestrator.storage.codec import decode_json
from orchestrator.storage.results.encoding import MANIFEST, RESULT_SCHEMA_VERSION, EncodedResult, encode_result
from orchestrator.storage.results.errors import ResultGone, ResultsError


@dataclass(frozen=True)
class StoredObject:
    """One object in the store: its path from the store's root, its size in bytes and when it
    was last written (ms since the epoch)."""

    path: str
    size: int
    last_modified_ms: int


class ResultStore:
    """Reads and writes results in one obstore store (a local directory, S3, or memory).

    `store` is the obstore store, `url` what it was opened from (for logs and messages; see
    `open_results`). All methods but `open_file` are async; obstore does the I/O off the event
    loop, Parquet encoding runs in a thread."""

    def __init__(self, store: Any, url: str) -> None:
        self.store = store
        self.url = url

    def _gone(self, ref: ResultRef) -> ResultGone:
        return ResultGone(f"the result {ref.key} is not in the store {self.url}")

    async def put(self, task_id: str, attempt: int, detail: dict[str, Any]) -> ResultRef:
        """Encode (in a thread) and upload one attempt's result; see `upload`. Raises pyarrow's
        errors for a detail it cannot store, and `upload`'s."""
        return await self.upload(await asyncio.to_thread(encode_result, task_id, attempt, detail))

    async def upload(self, encoded: EncodedResult) -> ResultRef:
        """Upload an encoded result; returns its address for the `completed` event. Each call
        writes a fresh prefix (attempt plus a nonce), so a retried upload never touches what a
        recorded outcome names, and the manifest goes last: a prefix without one is incomplete.
        Raises obstore's errors (or OSError) when the store cannot be reached."""
        key = f"{encoded.task_id}/{encoded.attempt}-{uuid.uuid4().hex[:12]}"
        for name, data in encoded.files.items():
            await obstore.put_async(self.store, f"{key}/{name}", data)
        await obstore.put_async(self.store, f"{key}/{MANIFEST}", encoded.manifest)
        size = len(encoded.manifest) + sum(len(d) for d in encoded.files.values())
        return ResultRef(key=key, schema_version=RESULT_SCHEMA_VERSION, bytes=size, tables=encoded.rows)

    async def manifest(self, ref: ResultRef) -> dict[str, Any]:
        """The manifest of a stored result (see `encoding`). Raises ResultGone if it is not in
        the store, ResultsError if its schema version is newer than this Backstream reads."""
        try:
            got = await obstore.get_async(self.store, f"{ref.key}/{MANIFEST}")
            raw = bytes(await got.bytes_async())
        except FileNotFoundError as e:
            raise self._gone(ref) from e
        manifest: dict[str, Any] = decode_json(raw)
        if manifest.get("schema_version", 0) > RESULT_SCHEMA_VERSION:
            raise ResultsError(
                f"result {ref.key} has schema version {manifest['schema_version']}, newer than this "
                f"Backstream reads ({RESULT_SCHEMA_VERSION}); upgrade it"
            )
        return manifest

    async def file_bytes(self, ref: ResultRef, file: str, start: int | None = None, end: int | None = None) -> bytes:
        """A file of the result, whole or the bytes [start, end). Raises ResultGone."""
        path = f"{ref.key}/{file}"
        try:
            if start is None:
                got = await obstore.get_async(self.store, path)
                return bytes(await got.bytes_async())
            return bytes(await obstore.get_range_async(self.store, path, start=start, end=end))
        except FileNotFoundError as e:
            raise self._gone(ref) from e

    async def tables(self, ref: ResultRef, manifest: dict[str, Any], names: list[str]) -> dict[str, pa.Table]:
        """The named tables of a result (names from `manifest["tables"]`), each read whole, by
        name. Raises ResultGone, KeyError for a name the manifest lacks."""
        out = {}
        for name in names:
            data = await self.file_bytes(ref, manifest["tables"][name]["file"])
            out[name] = pq.read_table(pa.BufferReader(data))
        return out

    def open_file(self, ref: ResultRef, file: str) -> pa.PythonFile:
        """A seekable, synchronous reader of one file (for Parquet scans in a thread): only the
        footer and the row groups a scan reads are fetched. Raises ResultGone."""
        try:
            return pa.PythonFile(_ObjectFile(obstore.open_reader(self.store, f"{ref.key}/{file}")), mode="r")
        except FileNotFoundError as e:
            raise self._gone(ref) from e

    async def delete(self, key: str) -> int:
        """Delete every object under one result's prefix; returns how many. Idempotent."""
        paths = [obj.path async for obj in self.objects(f"{key}/")]
        if paths:
            await obstore.delete_async(self.store, paths)
        return len(paths)

    async def objects(self, prefix: str | None = None) -> AsyncIterator[StoredObject]:
        """Every object under `prefix` (the whole store when None), in the store's listing
        order. Raises obstore's errors when the store cannot be reached."""
        stream = obstore.list(self.store, prefix=prefix)
        async for batch in stream:
            for meta in batch:
                yield StoredObject(
                    path=meta["path"],
                    size=int(meta["size"]),
                    last_modified_ms=int(meta["last_modified"].timestamp() * 1000),
                )


class _ObjectFile:
    """obstore's ReadableFile with the file-object surface pyarrow's PythonFile expects."""

    closed = False

    def __init__(self, reader: Any) -> None:
        self._reader = reader

    def read(self, n: int | None = -1) -> bytes:
        return bytes(self._reader.read(n) if n is not None and n >= 0 else self._reader.read())

    def seek(self, offset: int, whence: int = 0) -> int:
        return int(self._reader.seek(offset, whence))

    def tell(self) -> int:
        return int(self._reader.tell())

    def seekable(self) -> bool:
        return True

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        self._reader.close()
        self.closed = True
