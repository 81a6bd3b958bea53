"""The domain: pure values and functions, no I/O and no clock.

`spec` (the request), `events` (a task's life as tagged Structs), `status` (the Status enum),
`state` (the fold of events into a TaskState), `timeline` (state as of an id or a moment),
`history` (attempts and event views), `ids` (stream ids and ISO times), `views` (the API's wire
shapes), `display` (values and events as text), `results` (what every result carries),
`errors`, and `ports` (SpecChecker, Catalog: Protocols the engine implements for the API).
"""
