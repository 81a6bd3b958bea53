"""The HTTP transport of the client: JSON requests with the bearer token, Server-Sent Event
streams that reconnect, and the errors both raise. Standard library only (urllib)."""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from http.client import HTTPResponse
from typing import Any, TypeVar

import msgspec

from orchestrator.client import sse
from orchestrator.domain.views import ErrorBody, FieldProblem

T = TypeVar("T")
DEFAULT_URL = "http://127.0.0.1:8000"
# A live stream sends a keep-alive at least every 15 s; silence for this long means it is gone.
STREAM_TIMEOUT_S = 45.0
REQUEST_TIMEOUT_S = 30.0
# A stream that breaks is reopened this many times in a row before the error is raised.
RECONNECTS = 5


class ClientError(Exception):
    """The API refused or could not be reached; the message says why (the root of the client's errors)."""

    # True when trying again may help (unreachable, or a 5xx); a refusal (4xx) will not change.
    transient = True


class Unreachable(ClientError):
    """No answer from the API at `url`: `reason` is the network's (refused, timed out, ...)."""

    def __init__(self, url: str, reason: object) -> None:
        super().__init__(f"cannot reach the Backstream API at {url}: {reason} (set --url or BACKSTREAM_URL)")
        self.url, self.reason = url, reason


class HttpError(ClientError):
    """The API answered with an error: its HTTP `status` and `reason` phrase, and its body when it
    is the API's error shape (`body`: an ErrorBody, else None)."""

    def __init__(self, message: str, status: int = 0, reason: str = "", body: ErrorBody | None = None) -> None:
        super().__init__(message)
        self.status, self.reason, self.body = status, reason, body


class Refused(HttpError):
    """A 4xx: `status`, the API's `error` code (such as `validation_failed`, `task_not_found`) and
    `fields`, each a FieldProblem naming the field at fault (`params.fast`) and what is wrong."""

    transient = False

    def __init__(
        self,
        message: str,
        status: int = 0,
        error: str = "",
        fields: list[FieldProblem] | None = None,
        *,
        reason: str = "",
        body: ErrorBody | None = None,
    ) -> None:
        super().__init__(message, status, reason, body)
        self.error, self.fields = error, fields or []


class Api:
    """The HTTP transport to the API at `url`, sending the bearer `token` when there is one.
    Every method raises Refused (4xx), HttpError (5xx) or Unreachable, all ClientErrors."""

    def __init__(self, url: str, token: str | None = None) -> None:
        self.url = url.rstrip("/")
        self.token = token

    def open(
        self,
        method: str,
        path: str,
        body: Any = None,
        headers: dict[str, str] | None = None,
        timeout: float = REQUEST_TIMEOUT_S,
    ) -> HTTPResponse:
        """The open response to a request (`body` sent as JSON); the caller reads and closes it.
        `timeout` is in seconds, per socket operation."""
        data = None if body is None else msgspec.json.encode(body)
        request = urllib.request.Request(self.url + path, data=data, method=method)
        if data is not None:
            request.add_header("Content-Type", "application/json")
        if self.token:
            request.add_header("Authorization", f"Bearer {self.token}")
        for name, value in (headers or {}).items():
            request.add_header(name, value)
        try:
            reply: HTTPResponse = urllib.request.urlopen(request, timeout=timeout)  # the user's URL
        except urllib.error.HTTPError as e:
            raise _problem(e) from None
        except (urllib.error.URLError, OSError) as e:
            raise Unreachable(self.url, getattr(e, "reason", e)) from None
        return reply

    def call(self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None) -> Any:
        """The answer's JSON as builtins (dicts, lists, str, int, float, bool, None)."""
        with self.open(method, path, body, headers) as reply:
            return json.loads(reply.read() or b"null")

    def get(self, path: str, kind: type[T], method: str = "GET", body: Any = None, **headers: str) -> T:
        """The answer decoded into `kind` (a view Struct); extra fields a newer server adds are ignored."""
        with self.open(method, path, body, headers or None) as reply:
            return msgspec.json.decode(reply.read(), type=kind)

    def events(self, path: str, after: str | None = None) -> Iterator[dict[str, Any]]:
        """The events (as builtins) of the SSE stream at `path`, after stream id `after` (None: as
        the stream starts), reconnecting with Last-Event-ID when it ends or breaks, until the
        server says there is nothing more (204 or an `end` event). Raises the ClientError of a
        refusal at once, and of a failure after RECONNECTS attempts in a row."""
        failures = 0
        pause = threading.Event()
        while True:
            headers = {"Accept": "text/event-stream"}
            if after:
                headers["Last-Event-ID"] = after
            try:
                reply = self.open("GET", path, headers=headers, timeout=STREAM_TIMEOUT_S)
            except ClientError as e:
                failures += 1
                if not e.transient or failures > RECONNECTS:
                    raise
                pause.wait(min(2.0**failures / 4, 5.0))
                continue
            with reply:
                if reply.status == 204:
                    return
                failures = 0
                try:
                    for event in sse.parse(reply):
                        if event.name == "end":
                            return
                        if event.id:
                            after = event.id
                        if event.data:
                            yield json.loads(event.data)
                except (OSError, TimeoutError):
                    continue  # broken or silent: reconnect where we were


def _problem(error: urllib.error.HTTPError) -> HttpError:
    """An HTTP error as our exception: a 4xx is a Refused with the API's field errors."""
    try:
        body: ErrorBody | None = msgspec.json.decode(error.read(), type=ErrorBody)
    except msgspec.MsgspecError:
        body = None
    if body is None:
        message = f"{error.code} {error.reason}"
    else:
        fields = "; ".join(f"{f.field}: {f.message}" for f in body.fields if f.field)
        message = f"{error.code} {body.error}: {fields or body.message}"
    if error.code >= 500:
        return HttpError(message, error.code, str(error.reason), body)
    error_code, fields_at_fault = (body.error, body.fields) if body else ("", [])
    return Refused(message, error.code, error_code, fields_at_fault, reason=str(error.reason), body=body)
