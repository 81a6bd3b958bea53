"""The one Server-Sent Events parser (https://html.spec.whatwg.org/multipage/server-sent-events.html):
the lines of a `text/event-stream` body in, one ServerEvent per blank-line-terminated block out."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import NamedTuple


class ServerEvent(NamedTuple):
    """One SSE event: its `event` name (`message` unless named), its `id` (None when the block
    sets none) and its `data` lines joined by newlines."""

    name: str
    id: str | None
    data: str


def parse(lines: Iterable[bytes]) -> Iterator[ServerEvent]:
    """The events of a stream of UTF-8 lines (a urllib response iterates as such). Comments (`:`
    lines, the keep-alives) are skipped; a block with no data and no name yields nothing."""
    name, event_id, data = "message", None, list[str]()
    for raw in lines:
        line = raw.decode("utf-8").rstrip("\r\n")
        if not line:
            if data or name != "message":
                yield ServerEvent(name, event_id, "\n".join(data))
            name, event_id, data = "message", None, list[str]()
        elif line.startswith(":"):
            continue
        else:
            field, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if field == "data":
                data.append(value)
            elif field == "id":
                event_id = value
            elif field == "event":
                name = value
