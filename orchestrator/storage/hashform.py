"""The projection's hash form of a task's state: one field per attribute, JSON-encoded."""

from __future__ import annotations

from typing import Any

import msgspec

from orchestrator.domain.state import TaskState
from orchestrator.storage.codec import decode_json, encode_json

# --- the projection's hash form: one field per attribute, each value JSON-encoded so that the
# same state always gives the same bytes (msgspec's float and key order are deterministic).


def to_hash(state: TaskState) -> dict[str, bytes]:
    """The whole hash of `state`: field name -> JSON bytes, None fields left out."""
    return {name: encode_json(value) for name, value in msgspec.structs.asdict(state).items() if value is not None}


def changed_fields(old: TaskState, new: TaskState) -> tuple[dict[str, bytes], list[str]]:
    """What to write to turn `old`'s hash into `new`'s: the changed fields encoded as in
    `to_hash`, and the names of the fields that became empty. Only the changes are encoded."""
    fields: dict[str, bytes] = {}
    gone: list[str] = []
    for name in TaskState.__struct_fields__:
        value = getattr(new, name)
        if value != getattr(old, name):
            if value is None:
                gone.append(name)
            else:
                fields[name] = encode_json(value)
    return fields, gone


def from_hash(fields: dict[Any, Any]) -> TaskState:
    """The state a projected hash holds (names and values as bytes or str). Raises
    msgspec.ValidationError for a hash that is not a TaskState."""
    data = {(k.decode() if isinstance(k, bytes) else k): decode_json(v) for k, v in fields.items()}
    return msgspec.convert(data, TaskState)


def index_position(stream_id: str) -> str:
    """Where a stream id (`ms-seq`) sorts in the projection's indexes: `<ms, 15 digits>-<seq, 6
    digits>`, so that members compare by text as their ids compare by number."""
    ms, _, seq = stream_id.partition("-")
    return f"{int(ms):015d}-{int(seq or 0):06d}"


def index_member(state: TaskState) -> str:
    """Sort key of a task in the projection's indexes: its submit's index position, then its
    task id (`<position>|<task id>`)."""
    return f"{index_position(state.submitted_id)}|{state.task_id}"
