"""Storage: every read and write of Redis, and the results store.

- `keys`: every key name (streams.md documents each); `connections`: the clients and how outages
  are waited out; `codec`: events to stream fields and back; `hashform`: a state as a hash.
- `scripts/`: each Lua script and its typed wrapper (`commands`, `attempts`, `projection`,
  `presence`), called with named arguments and answering typed replies; `batching`: concurrent
  script calls share one round trip.
- `commands`: the API's writes (submit, cancel, requeue, a deleted result).
- `workqueue`, `work_items`: the worker's side (take, claim, heartbeat, finish, release, reclaim).
- `readmodel/`: the one read path (tasks, lists, events, dead letters, gauges) and the projection
  writes; `presence`: heartbeats; `results`: full results in an object store.
"""
