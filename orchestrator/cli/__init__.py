"""The `backstream` command: the one composition root, where roles, admin commands and the HTTP
client are wired to the stores, the engine and the API.

Modules: `main` (the parser and entry point), `roles` (up, api, worker, projector), `audit`
(audit, replay, export, retention), `results` (result, results-retention), `tasks` (the HTTP
client commands), `request` (submit's arguments as a request body), `render` (text output),
`args` (what the subcommand modules share), `stores` (which Redis a command runs on), `home`
(the embedded store's directory and lock), `embedded` (its valkey-server), `logs` (structlog).
"""
