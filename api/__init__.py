"""The HTTP API (Starlette): `app` builds it (`create_app`), `context` types what handlers use,
`tasks`, `results`, `strategies` are the JSON routes, `live/` the Server-Sent Events, `metrics/`
Prometheus and readiness, `dashboard/` the server-rendered pages, `auth` and `csrf` access
control, `errors` the one mapping of errors to answers, `openapi/` the document. It imports no
consumer: the engine reaches it through the ports in orchestrator.domain.ports."""
