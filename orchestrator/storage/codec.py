"""Events <-> stream entry fields. Encoders and decoders are built once and reused."""

from __future__ import annotations

import itertools
import operator
from collections.abc import Callable
from typing import Any, TypeAlias, cast

import msgspec
from redis.typing import StreamRangeResponse

from orchestrator.domain.errors import EventDecodeError
from orchestrator.domain.events import EVENT_TYPES, AnyEvent, Event, StoredEvent

_json_encoder = msgspec.json.Encoder()
_json_decoder = msgspec.json.Decoder()
_BASE_FIELDS = ("type", "task_id", "seq", "attempt")

Upcaster = Callable[[dict[str, Any]], dict[str, Any]]

# Error types that version 1 `failed` events recorded for failures no retry could fix.
_PERMANENT_V1_ERRORS = frozenset({"DatasetError", "UnknownSymbolError", "SpecError", "CheckpointError", "TaskTimeout"})


def _failed_v1_to_v2(data: dict[str, Any]) -> dict[str, Any]:
    """v2 added `retryable`; v1 events had only the error type to tell it by."""
    return {**data, "retryable": data.get("error_type", "Error") not in _PERMANENT_V1_ERRORS}


# (event type, stored version) -> function turning that version's data into the next version's.
# Old events are upcast when read; the log is never rewritten.
UPCASTERS: dict[tuple[str, int], Upcaster] = {
    ("failed", 1): _failed_v1_to_v2,
    ("completed", 1): lambda data: data,  # v2 added `result_ref`, None for v1
}


def encode_json(value: Any) -> bytes:
    """`value` (builtins or msgspec Structs) as JSON bytes. Raises TypeError for a value msgspec
    cannot encode."""
    return _json_encoder.encode(value)


def decode_json(raw: bytes | str) -> Any:
    """JSON as builtins. Raises msgspec.DecodeError for malformed JSON."""
    return _json_decoder.decode(raw)


def event_data(event: Event) -> bytes:
    """The JSON `data` field of an event: everything but the fields stored on their own."""
    payload = msgspec.to_builtins(event)
    for name in _BASE_FIELDS:
        payload.pop(name, None)
    return _json_encoder.encode(payload)


# A stream entry as our clients read it: its id and {field: value}, bytes (RESP2, replies not
# decoded: see connections.client).
Entry: TypeAlias = tuple[bytes, dict[bytes, bytes]]


def stream_entries(reply: StreamRangeResponse | None) -> list[Entry]:
    """An XRANGE/XREVRANGE reply's entries as our clients get them ([] for none). redis-py types
    its replies for RESP3 and decoded responses too, neither of which our clients ask for: the
    one place that says what they are."""
    return cast(list[Entry], reply) if reply else []


def text(value: Any) -> str:
    """A reply from Redis (bytes) or a value we made (str, int) as text."""
    return value.decode() if isinstance(value, bytes) else str(value)


def _bytes(value: bytes | str | int) -> bytes:
    return value if isinstance(value, bytes) else str(value).encode()


_event_decoder = msgspec.json.Decoder(AnyEvent)
_CURRENT_VERSIONS = {name.encode(): str(cls.SCHEMA_VERSION).encode() for name, cls in EVENT_TYPES.items()}
# Older versions whose data decodes as the current version's (the version added only a field with
# a default): the fast path takes them too, so replaying an old log does not slow down.
_SAME_AS_CURRENT = {(b"completed", b"1")}


def decode_entry(entry_id: bytes | str, fields: dict[Any, Any]) -> StoredEvent:
    """Turn one stream entry into a typed event, upcasting old schema versions on the way."""
    if not isinstance(next(iter(fields), b""), bytes):
        fields = {_bytes(k): _bytes(v) for k, v in fields.items()}
    try:
        # The common case, on the replay hot path: an event of the current version is decoded by
        # splicing its own fields into its JSON data and decoding that once, typed.
        kind, task_id, data = fields[b"type"], fields[b"task_id"], fields[b"data"]
        if (
            (
                _CURRENT_VERSIONS.get(kind) == fields.get(b"v", b"1")
                or (kind, fields.get(b"v", b"1")) in _SAME_AS_CURRENT
            )
            and data[:1] == b"{"
            and b'"' not in task_id
            and b"\\" not in task_id
        ):
            body = b'{"type":"%s","task_id":"%s","seq":%d,"attempt":%d%s' % (
                kind,
                task_id,
                int(fields[b"seq"]),
                int(fields[b"attempt"]),
                b"}" if data == b"{}" else b"," + data[1:],
            )
            return StoredEvent(id=text(entry_id), event=_event_decoder.decode(body))
    except (KeyError, ValueError, TypeError, msgspec.ValidationError, msgspec.DecodeError):
        pass  # the careful path below says what is wrong
    return _decode_carefully(text(entry_id), fields)


# The stream fields of an event in the order the scripts write them (lib.lua's `append`).
_LAYOUT = (b"type", b"v", b"task_id", b"seq", b"attempt", b"data")
_CURRENT_PAIRS = frozenset(_CURRENT_VERSIONS.items())
_batch_decoder = msgspec.json.Decoder(list[StoredEvent])
_SPLICED = b'{"id":"%s","event":{"type":"%s","task_id":"%s","seq":%s,"attempt":%s,%s}'
_SPLICED_EMPTY = b'{"id":"%s","event":{"type":"%s","task_id":"%s","seq":%s,"attempt":%s}}'
_tail = operator.itemgetter(slice(1, None))
_ID = operator.attrgetter("id")


def decode_entries(entries: list[Any]) -> list[StoredEvent]:
    """Stream entries as Redis sends them, `[id, [field, value, ...]]` (an XREAD or XRANGE reply
    read without redis-py's per-entry callbacks), as typed events in log order.

    The replay hot path, with no Python code run per entry: when every entry is of a current
    schema version, its fields in the scripts' order, its data a JSON object and its task id
    free of `"` and `\\`, each becomes `{"id": ..., "event": {its fields spliced into its data}}`
    (built column by column with C-level maps) and the whole batch is decoded by one msgspec
    call. Otherwise (an old version to upcast, other fields), and whenever that decode fails or
    gives other events than the entries it was made of, every entry goes through `decode_entry`:
    the same events, or an EventDecodeError that names the entry."""
    if not entries:
        return []
    try:
        ids, lists = zip(*entries, strict=True)
        columns = tuple(zip(*lists, strict=False))  # as many columns as the shortest entry has fields
        n = len(ids)
        datas = columns[11]
        task_ids = b"".join(columns[5])
        if (
            all(columns[2 * k].count(name) == n for k, name in enumerate(_LAYOUT))
            and set(zip(columns[1], columns[3], strict=True)) <= _CURRENT_PAIRS
            and all(map(bytes.startswith, datas, itertools.repeat(b"{")))
            and b'"' not in task_ids
            and b"\\" not in task_ids
        ):
            head = (ids, columns[1], columns[5], columns[7], columns[9])
            if datas.count(b"{}"):
                bodies = [
                    _SPLICED_EMPTY % row[:5] if row[5] == b"{}" else _SPLICED % (*row[:5], row[5][1:])
                    for row in zip(*head, datas, strict=True)
                ]
            else:
                bodies = list(map(_SPLICED.__mod__, zip(*head, map(_tail, datas), strict=True)))
            # seq and attempt went in as they are: anything but a JSON integer fails the decode.
            events = _batch_decoder.decode(b"[%s]" % b",".join(bodies))
            if list(map(_ID, events)) == list(map(bytes.decode, ids)):
                return events
    except (TypeError, ValueError, IndexError, msgspec.ValidationError, msgspec.DecodeError):
        pass  # not entries of the usual form: one at a time below, which says what is wrong
    return [decode_entry(i, f if isinstance(f, dict) else _pairs(f)) for i, f in entries]


def _pairs(fields: list[Any]) -> dict[Any, Any]:
    """A flat `[field, value, ...]` reply as a dict."""
    return dict(zip(fields[0::2], fields[1::2], strict=False))


def _decode_carefully(entry: str, fields: dict[bytes, bytes]) -> StoredEvent:
    try:
        get = {text(k): v for k, v in fields.items()}
        event_type = text(get["type"])
        cls = EVENT_TYPES.get(event_type)
        if cls is None:
            raise EventDecodeError(
                f"entry {entry}: unknown event type {event_type!r}; this Backstream is older than the "
                "writer of the log: upgrade it before projecting"
            )
        version = int(get.get("v", 1))
        if version > cls.SCHEMA_VERSION:
            raise EventDecodeError(
                f"entry {entry}: {event_type} schema version {version} is newer than this Backstream "
                f"understands ({cls.SCHEMA_VERSION}); upgrade it"
            )
        data = _json_decoder.decode(get["data"])
        if not isinstance(data, dict):
            raise EventDecodeError(f"entry {entry}: not a valid event: its data is not a JSON object")
        while version < cls.SCHEMA_VERSION:
            data = UPCASTERS[(event_type, version)](data)
            version += 1
        data.update(
            type=event_type,
            task_id=text(get["task_id"]),
            seq=int(get["seq"]),
            attempt=int(get["attempt"]),
        )
        event: AnyEvent = msgspec.convert(data, AnyEvent)
    except EventDecodeError:
        raise
    except (KeyError, ValueError, msgspec.ValidationError, msgspec.DecodeError) as e:
        raise EventDecodeError(f"entry {entry}: not a valid event: {e}") from e
    return StoredEvent(id=entry, event=event)
