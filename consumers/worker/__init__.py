"""A worker: `loop` (dispatch), `intake` (where work items come from), `attempt` (computing one),
`first_chunks` and `compute` (the compute threads), `lease` (heartbeats on a timer), `report`
(storing the outcome), `retry` (retry or fail), `isolation` (a process of its own after a lost
worker), `assignment` (what an attempt is given)."""
