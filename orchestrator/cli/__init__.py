"""The `backstream` command: the one composition root, where roles, admin commands and the HTTP
client are wired to the stores, the engine and the API."""
