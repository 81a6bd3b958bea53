"""The read model: the one read path of current state, of a task's events and of ops gauges.

- `model`: ReadModel (task, list, read-your-writes, audit trail, dead letters, stored results,
  gauges) over every partition of a Layout (or one partition's Keys), following the
  live-projection pointer.
- `listing`: the task list merged over the partitions' indexes, with an exact cursor.
- `cursor`: LogCursor, a position per partition for readers that follow the whole log.
- `pointer`: which projection is live, and every projection's position.
- `log`: reads of the event log (pages, the live tail, the projector's batches, a task's events).
- `history`: TaskHistory, Archived, HistoryArchived.
- `dead_letters`, `gauges`: their reads and shapes.
- `apply`: Projection, the read model the projector and replay also write (`apply.lua`).
"""

from orchestrator.storage.readmodel.apply import Projection
from orchestrator.storage.readmodel.cursor import BadCursor, LogCursor
from orchestrator.storage.readmodel.history import Archived, HistoryArchived, TaskHistory
from orchestrator.storage.readmodel.model import FILTER_BATCH, FILTER_SCAN, ReadModel
from orchestrator.storage.readmodel.pointer import POINTER_TTL_S, live_keys

__all__ = [
    "FILTER_BATCH",
    "FILTER_SCAN",
    "POINTER_TTL_S",
    "Archived",
    "BadCursor",
    "HistoryArchived",
    "LogCursor",
    "Projection",
    "ReadModel",
    "TaskHistory",
    "live_keys",
]
