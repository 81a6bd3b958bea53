"""Writing events to the log directly, as the scripts would (for tests that fill a log fast)."""

from __future__ import annotations

from orchestrator.domain.events import Event
from orchestrator.storage.codec import event_data


def entry_fields(event: Event) -> dict[str, str | bytes | int]:
    """All stream fields of an event, as the scripts write them (XADD them to the events stream)."""
    return {
        "type": type(event).__struct_config__.tag,  # type: ignore[dict-item]
        "v": type(event).SCHEMA_VERSION,
        "task_id": event.task_id,
        "seq": event.seq,
        "attempt": event.attempt,
        "data": event_data(event),
    }
