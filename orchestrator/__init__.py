"""The core of Backstream, and the command that wires everything together.

- `domain`: what needs no I/O: the request, the events, the pure fold into a task's state, the
  status enum, the API's wire shapes, and the ports the outer layers implement.
- `settings`: every setting, read once from the environment.
- `storage`: everything that talks to Redis (keys, scripts, commands, the work queue, the read
  model) or to the results store.
- `client`: the Python client of the HTTP API (imports only `domain`).
- `cli`: the `backstream` command, the one composition root (the only package that imports both
  `api` and `consumers`).

The import contracts in pyproject.toml hold the layers: cli -> api | consumers -> storage ->
settings -> domain.
"""
