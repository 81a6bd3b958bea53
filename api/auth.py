"""Optional bearer-token access control: a pure ASGI middleware that sets scope["user"]."""

from __future__ import annotations

import hmac
import ipaddress
import urllib.parse
from collections.abc import Iterable
from http.cookies import CookieError, SimpleCookie
from typing import Any

import structlog
from starlette.requests import Request
from starlette.responses import HTMLResponse

from api.errors import ApiError, api_error
from orchestrator.settings import ApiToken, Settings

log = structlog.get_logger("backstream.auth")

# Paths any caller may read: probes and the scrape (they reveal no task data).
OPEN_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
# Methods that only read; every other method needs a read-write token.
READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
COOKIE = "backstream_token"

_LOGIN = """<!doctype html><html><head><meta charset="utf-8"><title>Backstream: sign in</title>
<link rel="stylesheet" href="/static/dashboard.css"></head><body><main class="login">
<h1>Backstream</h1><p>This server needs an access token.</p>
<form method="get"><label>Token <input type="password" name="token" autofocus></label>
<button type="submit">Sign in</button></form></main></body></html>"""


def _presented(scope: dict[str, Any]) -> tuple[str | None, bool]:
    """The token the request carries, and whether it came in the query string: the
    `Authorization: Bearer` header first, then the `backstream_token` cookie, then `?token=`."""
    cookie = None
    for name, value in scope.get("headers", []):
        if name == b"authorization":
            scheme, _, credentials = value.decode("latin-1").partition(" ")
            if scheme.lower() == "bearer" and credentials.strip():
                return credentials.strip(), False
        elif name == b"cookie":
            jar: SimpleCookie = SimpleCookie()
            try:
                jar.load(value.decode("latin-1"))
            except CookieError:  # a malformed cookie header is as good as none
                log.info("auth.bad_cookie_header")
                continue
            if COOKIE in jar:
                cookie = jar[COOKIE].value
    if cookie:
        return urllib.parse.unquote(cookie), False
    query = urllib.parse.parse_qs(scope.get("query_string", b"").decode("latin-1"))
    if query.get("token"):
        return query["token"][0], True
    return None, False


class TokenAuth:
    """Without tokens configured, every request passes (scope["user"] stays unset). With tokens:
    a request without a valid one gets 401 (a sign-in page for a browser asking for HTML); a
    read-only token gets 403 on anything but GET/HEAD/OPTIONS. A valid `?token=` also sets an
    HttpOnly SameSite=Strict cookie, so a browser (and its EventSource) stays signed in."""

    def __init__(self, app: Any, tokens: Iterable[ApiToken]) -> None:
        self.app = app
        self.tokens = tuple(tokens)
        self._checked_hosts: set[str] = set()  # our own addresses that requests reached

    def _match(self, presented: str) -> ApiToken | None:
        found = None
        for token in self.tokens:  # compare with every secret, in constant time each
            if hmac.compare_digest(token.secret.encode(), presented.encode()):
                found = token
        return found

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if not self.tokens and scope["type"] == "http" and scope.get("server"):
            host = str(scope["server"][0])
            if host not in self._checked_hosts:
                # A request that reached a non-loopback address of ours: the API is on the network.
                self._checked_hosts.add(host)
                if _is_ip(host):
                    warn_if_exposed(Settings(), host)
        if scope["type"] != "http" or not self.tokens or scope["path"] in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        presented, from_query = _presented(scope)
        token = self._match(presented) if presented else None
        request = Request(scope)
        if token is None:
            log.info("auth.refused", path=scope["path"], reason="invalid token" if presented else "no token")
            if "text/html" in request.headers.get("accept", "") and scope["method"] == "GET":
                await HTMLResponse(_LOGIN, status_code=401, headers={"WWW-Authenticate": "Bearer"})(
                    scope, receive, send
                )
                return
            message = (
                "this token is not valid"
                if presented
                else ("authentication required: send Authorization: Bearer <token>")
            )
            error = ApiError(401, "unauthorized", message, headers={"WWW-Authenticate": "Bearer"})
            await (await api_error(request, error))(scope, receive, send)
            return
        if scope["method"] not in READ_METHODS and not token.can_write:
            error = ApiError(403, "forbidden", f"the token of {token.owner} is read-only")
            await (await api_error(request, error))(scope, receive, send)
            return
        scope["user"] = token.owner
        if not from_query:
            await self.app(scope, receive, send)
            return

        async def send_with_cookie(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                cookie = f"{COOKIE}={urllib.parse.quote(presented or '', safe='')}; Path=/; HttpOnly; SameSite=Strict"
                message["headers"] = [*message.get("headers", []), (b"set-cookie", cookie.encode("latin-1"))]
            await send(message)

        await self.app(scope, receive, send_with_cookie)


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


def warn_if_exposed(settings: Settings, host: str) -> str | None:
    """Log a clear warning when the API binds beyond loopback with no tokens; returns it."""
    if settings.tokens or is_loopback(host):
        return None
    message = (
        f"the API listens on {host} WITHOUT access control: anyone who reaches it can submit and "
        "cancel backtests. Set BACKSTREAM_TOKENS (owner:secret:rw|ro,...) or BACKSTREAM_TOKENS_FILE, "
        "or bind to 127.0.0.1."
    )
    log.warning("auth.open_to_network", host=host, message=message)
    return message
