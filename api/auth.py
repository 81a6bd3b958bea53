"""Optional bearer-token access control: a pure ASGI middleware that sets scope["user"], and the
dashboard's sign-in, which trades a token for a cookie."""

from __future__ import annotations

import hmac
import ipaddress
import urllib.parse
from collections.abc import Iterable
from http.cookies import CookieError, SimpleCookie

import structlog
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from api.context import context
from api.csrf import cross_origin_problem, csrf_problem, csrf_token
from api.dashboard.render import render
from api.errors import ApiError, api_error
from orchestrator.settings import ApiToken, Settings, normalize_origin

log = structlog.get_logger("backstream.auth")

# Routes (by name) any caller may read: probes and the scrape (they reveal no task data), and the sign-in.
OPEN_ROUTES = ("healthz", "readyz", "metrics", "signin")
# Mounts (by name) any caller may read: the dashboard's styles and scripts, the code we ship, no
# data; the sign-in page needs the styles.
OPEN_MOUNTS = ("static",)
# Methods that only read; every other method needs a read-write token.
READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
COOKIE = "backstream_token"
SIGNIN_PATH = "/signin"
# A sign-in form body holds a token and a path: anything longer is not one.
MAX_SIGNIN_BODY = 8 * 1024


def match_token(tokens: Iterable[ApiToken], presented: str) -> ApiToken | None:
    """The token whose secret is `presented`, compared with every secret in constant time each."""
    found = None
    for token in tokens:
        if hmac.compare_digest(token.secret.encode(), presented.encode()):
            found = token
    return found


def _presented(scope: Scope) -> tuple[str | None, bool]:
    """The token the request carries, and whether it came in the cookie: the `Authorization: Bearer`
    header first, then the `backstream_token` cookie. A `?token=` in the URL is not a credential
    here: only the sign-in (`/signin`) takes one, and trades it for the cookie."""
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
        return urllib.parse.unquote(cookie), True
    return None, False


def signin_page(request: Request, next_path: str, *, status_code: int, problem: str | None = None) -> HTMLResponse:
    """The sign-in form (signin.html): it posts the token (never in a URL) and the page to return
    to (`safe_next` of `next_path`); `problem`, when given, says why the last try failed."""
    return render(request, "signin.html", status_code=status_code, next=safe_next(next_path), problem=problem)


class TokenAuth:
    """Without tokens configured, every request passes (scope["user"] stays unset). With tokens:
    a request without a valid one gets 401 (a sign-in page for a browser asking for HTML); a
    read-only token gets 403 on anything but GET/HEAD/OPTIONS. The token comes in `Authorization:
    Bearer` or in the cookie `/signin` sets; a state change signed in by that cookie also needs the
    session's CSRF token in `X-CSRF-Token` (403 `csrf_token_invalid` without it). Sets
    scope["csrf_token"] for the pages to hand to their scripts."""

    def __init__(
        self,
        app: ASGIApp,
        tokens: Iterable[ApiToken],
        open_paths: Iterable[str] = (),
        open_prefixes: Iterable[str] = (),
    ) -> None:
        self.app = app
        self.tokens = tuple(tokens)
        # Paths (and path prefixes) that pass without a token: OPEN_ROUTES and OPEN_MOUNTS'.
        self.open_paths = frozenset(open_paths)
        self.open_prefixes = tuple(open_prefixes)
        self._checked_hosts: set[str] = set()  # our own addresses that requests reached

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The ASGI entry: a request without a valid token (where tokens are configured) gets 401,
        or a redirect to the sign-in page for a browser; open paths pass."""
        if not self.tokens and scope["type"] == "http" and scope.get("server"):
            host = str(scope["server"][0])
            if host not in self._checked_hosts:
                # A request that reached a non-loopback address of ours: the API is on the network.
                self._checked_hosts.add(host)
                if _is_ip(host):
                    warn_if_exposed(Settings(), host)
        if (
            scope["type"] != "http"
            or not self.tokens
            or scope["path"] in self.open_paths
            or scope["path"].startswith(self.open_prefixes)
        ):
            await self.app(scope, receive, send)
            return
        presented, from_cookie = _presented(scope)
        token = match_token(self.tokens, presented) if presented else None
        request = Request(scope)
        if token is None:
            log.info("auth.refused", path=scope["path"], reason="invalid token" if presented else "no token")
            if "text/html" in request.headers.get("accept", "") and scope["method"] == "GET":
                # Back to this page after signing in, without a `?token=` (never put a secret in a URL).
                query = [(k, v) for k, v in request.query_params.multi_items() if k != "token"]
                back = scope["path"] + (f"?{urllib.parse.urlencode(query)}" if query else "")
                response = signin_page(request, back, status_code=401)
                response.headers["WWW-Authenticate"] = "Bearer"
                await response(scope, receive, send)
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
        if from_cookie and (forged := csrf_problem(scope, token.secret)) is not None:
            log.warning("auth.csrf_refused", path=scope["path"], method=scope["method"], owner=token.owner)
            await (await api_error(request, forged))(scope, receive, send)
            return
        scope["user"] = token.owner
        scope["csrf_token"] = csrf_token(token.secret)
        await self.app(scope, receive, send)


def safe_next(raw: str | None) -> str:
    """Where to go after signing in: a path on this server, never another site (`//host`, `/\\host`)."""
    if not raw or not raw.startswith("/") or raw.startswith(("//", "/\\")) or not raw.isprintable():
        return "/"
    if raw == SIGNIN_PATH or raw.startswith(SIGNIN_PATH + "?"):  # not back to the form
        return "/"
    return raw


async def _signin_form(request: Request) -> dict[str, str]:
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_SIGNIN_BODY:
            raise ApiError(413, "body_too_large", f"a sign-in form is at most {MAX_SIGNIN_BODY} bytes")
    fields = urllib.parse.parse_qs(body.decode("latin-1"), keep_blank_values=True)
    return {name: values[0] for name, values in fields.items()}


async def signin(request: Request) -> Response:
    """The dashboard's sign-in. GET shows the form; the form POSTs `token` and `next`. A link may also
    carry `?token=`: GET then answers 303 to a URL without it. A valid token gets 303 to `next` with
    an HttpOnly SameSite=Strict cookie holding it (Secure over https); an invalid one the form
    again, 401. Only a navigation from our own origin (or a typed URL) signs in."""
    settings = context(request).settings
    if request.method == "POST":
        fields = await _signin_form(request)
        presented, target = fields.get("token", ""), safe_next(fields.get("next"))
    else:
        presented, target = request.query_params.get("token", ""), safe_next(request.query_params.get("next"))
    if not settings.tokens:
        return RedirectResponse(target, status_code=303)  # nothing to sign in to
    if not presented:
        if "token" in request.query_params:  # an empty one: still drop it from the URL
            return RedirectResponse(_signin_url(request, target), status_code=303)
        refused = "That token is not valid." if request.query_params.get("refused") else None
        return signin_page(request, target, status_code=200 if request.method == "GET" else 401, problem=refused)
    token = match_token(settings.tokens, presented)
    # A page of another site may link here with its own token (sign the user in as someone else).
    allowed = frozenset(normalize_origin(o) for o in settings.allowed_origins)
    problem = cross_origin_problem(request.scope, allowed)
    if token is None or problem is not None:
        log.info("auth.signin_refused", reason="invalid token" if token is None else problem)
        if request.method == "POST":
            return signin_page(request, target, status_code=401, problem="That token is not valid.")
        return RedirectResponse(_signin_url(request, target, refused="1"), status_code=303)
    log.info("auth.signed_in", owner=token.owner)
    cookie = f"{COOKIE}={urllib.parse.quote(token.secret, safe='')}; Path=/; HttpOnly; SameSite=Strict"
    if request.url.scheme == "https":
        cookie += "; Secure"
    response = RedirectResponse(target, status_code=303, headers={"Cache-Control": "no-store"})
    response.raw_headers.append((b"set-cookie", cookie.encode("latin-1")))
    return response


def _signin_url(request: Request, target: str, **more: str) -> str:
    return f"{request.app.url_path_for('signin')}?{urllib.parse.urlencode({'next': target, **more})}"


routes = [Route(SIGNIN_PATH, signin, methods=["GET", "POST"], name="signin")]


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def is_loopback(host: str) -> bool:
    """Whether `host` (`localhost` or an IP address) is this machine only; a name is not."""
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
