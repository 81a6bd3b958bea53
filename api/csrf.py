"""Cross-site request forgery: refuse state changes from other origins, non-JSON bodies, and
cookie-signed requests without the page's CSRF token."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable, MutableMapping
from typing import Any

import structlog
from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from api.errors import ApiError, FieldProblem, api_error
from orchestrator.settings import normalize_origin

log = structlog.get_logger("backstream.csrf")

# Methods that only read; every other method changes state and must come from our own origin.
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
# `Sec-Fetch-Site` values that are ours: our own pages, and the user typing or bookmarking a URL.
OWN_FETCH_SITES = frozenset({"same-origin", "none"})
# The header the dashboard's scripts send the CSRF token in.
CSRF_HEADER = "x-csrf-token"
# What the token is derived for, so the same secret never signs two things alike.
_CSRF_PURPOSE = b"backstream csrf token v1"


def own_origin(scope: MutableMapping[str, Any]) -> str | None:
    """The origin this request was addressed to: its scheme and its `Host` header (or, without
    one, the address it reached). None when that is not a valid origin."""
    host = next((v.decode("latin-1") for k, v in scope.get("headers", []) if k == b"host"), None)
    if host is None and scope.get("server"):
        address, port = scope["server"][0], scope["server"][1]
        host = f"[{address}]:{port}" if ":" in str(address) else f"{address}:{port}"
    try:
        return normalize_origin(f"{scope.get('scheme', 'http')}://{host}") if host else None
    except ValueError:
        return None


def cross_origin_problem(scope: MutableMapping[str, Any], allowed: frozenset[str]) -> str | None:
    """Why this request comes from another origin, or None when it is ours (or from no browser).
    `Origin` decides when present; otherwise `Sec-Fetch-Site`; a request with neither comes from
    curl, the CLI or a script, not from a page, and passes."""
    headers = Headers(scope=scope)
    origin = headers.get("origin")
    if origin is not None:
        try:
            sent = normalize_origin(origin)
        except ValueError:
            return f"Origin {origin!r} is not one this server accepts"
        own = own_origin(scope)
        if sent == own or sent in allowed:
            return None
        return f"Origin {sent} is not this server's ({own}) nor in BACKSTREAM_ALLOWED_ORIGINS"
    site = headers.get("sec-fetch-site")
    if site is not None and site.lower() not in OWN_FETCH_SITES:
        return f"Sec-Fetch-Site is {site!r}: the request comes from another site's page"
    return None


def _has_body(scope: Scope) -> bool:
    for name, value in scope.get("headers", []):
        if name == b"transfer-encoding":
            return True
        if name == b"content-length" and value.strip() not in (b"", b"0"):
            return True
    return False


def is_json(content_type: str) -> bool:
    """`application/json` or a `+json` type, any parameters (charset) allowed."""
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or (media.startswith("application/") and media.endswith("+json"))


class SameOriginOnly:
    """Pure ASGI middleware on every route. A state-changing request (any method but GET, HEAD,
    OPTIONS) whose `Origin` (or, without one, `Sec-Fetch-Site`) is not this server's own origin or
    one of `allowed_origins` gets 403 `cross_origin_refused`; one with a body that is not JSON gets
    415 `unsupported_media_type` (only `form_paths`, the sign-in, take a form). A page cannot send
    JSON to another origin without a CORS preflight, which this server never grants."""

    def __init__(self, app: ASGIApp, allowed_origins: Iterable[str] = (), form_paths: Iterable[str] = ()) -> None:
        self.app = app
        self.allowed = frozenset(normalize_origin(o) for o in allowed_origins)
        self.form_paths = frozenset(form_paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The ASGI entry: an unsafe request (not GET/HEAD/OPTIONS) from another origin gets 403."""
        if scope["type"] != "http" or scope["method"] in SAFE_METHODS:
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        problem = cross_origin_problem(scope, self.allowed)
        if problem is not None:
            log.warning("csrf.cross_origin_refused", path=scope["path"], method=scope["method"], reason=problem)
            field = "Origin" if "origin" in request.headers else "Sec-Fetch-Site"
            error = ApiError(
                403,
                "cross_origin_refused",
                f"{scope['method']} refused: {problem}",
                [FieldProblem(field, problem)],
            )
            await (await api_error(request, error))(scope, receive, send)
            return
        content_type = request.headers.get("content-type", "")
        if _has_body(scope) and not is_json(content_type) and scope["path"] not in self.form_paths:
            shown = content_type or "none"
            error = ApiError(
                415,
                "unsupported_media_type",
                f"the request body must be application/json, not {shown}",
                [FieldProblem("Content-Type", f"{shown} is not application/json")],
            )
            await (await api_error(request, error))(scope, receive, send)
            return
        await self.app(scope, receive, send)


def csrf_token(secret: str) -> str:
    """The CSRF token of a session signed in with `secret`: HMAC-SHA256(secret, purpose), hex. A page
    of ours gets it; another origin can neither read our pages nor derive it without the secret."""
    return hmac.new(secret.encode(), _CSRF_PURPOSE, hashlib.sha256).hexdigest()


def csrf_problem(scope: Scope, secret: str) -> ApiError | None:
    """For a state-changing request signed in by the cookie: a 403 unless it carries the session's
    token in `X-CSRF-Token` (the dashboard's scripts send it)."""
    if scope["method"] in SAFE_METHODS:
        return None
    sent = next((v.decode("latin-1") for k, v in scope.get("headers", []) if k == CSRF_HEADER.encode()), "")
    if hmac.compare_digest(sent.encode(), csrf_token(secret).encode()):
        return None
    message = "missing" if not sent else "does not match this session"
    return ApiError(
        403,
        "csrf_token_invalid",
        f"a request signed in by the dashboard's cookie needs its CSRF token in X-CSRF-Token ({message}); "
        "scripts should send Authorization: Bearer instead",
        [FieldProblem("X-CSRF-Token", message)],
    )
