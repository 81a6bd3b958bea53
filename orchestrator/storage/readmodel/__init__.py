"""The read model: the one read path of current state, of a task's events and of ops gauges.

- `model`: ReadModel (task, list, read-your-writes, audit trail, dead letters, stored results,
  gauges), following the live-projection pointer.
- `pointer`: which projection is live, and every projection's position.
- `log`: reads of the event log (pages, the live tail, the projector's batches, a task's events).
- `history`: TaskHistory, Archived, HistoryArchived.
- `dead_letters`, `gauges`: their reads and shapes.
- `apply`: Projection, the read model the projector and replay also write (`apply.lua`).
"""

from orchestrator.storage.readmodel.apply import Projection
from orchestrator.storage.readmodel.history import Archived, HistoryArchived, TaskHistory
from orchestrator.storage.readmodel.model import FILTER_BATCH, FILTER_SCAN, ReadModel
from orchestrator.storage.readmodel.pointer import POINTER_TTL_S, live_keys

__all__ = [
    "FILTER_BATCH",
    "FILTER_SCAN",
    "POINTER_TTL_S",
    "Archived",
    "HistoryArchived",
    "Projection",
    "ReadModel",
    "TaskHistory",
    "live_keys",
]
