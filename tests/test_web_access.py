"""Access from web pages, on the wire (uvicorn on a free port, httpx): pages of other origins change
nothing, bodies must be JSON, a cookie-signed change needs the CSRF token, and `?token=` signs in
only on /signin, which trades it for the cookie and drops it from the URL."""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from api.app import create_app
from orchestrator.client.http import Api, Refused
from orchestrator.settings import ApiToken, Settings
from tests.conftest import Backend
from tests.harness import System
from tests.processes import InProcessServer, free_port

BODY: dict[str, Any] = {"strategy": "sma_cross", "symbol": "GOOG", "params": {"fast": 10, "slow": 20}}
TOKENS = (
    ApiToken("alice", "alice-secret", True),
    ApiToken("bob", "bob-secret", False),
    ApiToken("carol", "carol-secret", True),
)
BEHIND_PROXY = "https://backstream.example.com"
ALICE = {"Authorization": "Bearer alice-secret"}
COOKIE = {"Cookie": "backstream_token=alice-secret"}
STATIC = Path(__file__).resolve().parent.parent / "api" / "static"


@contextlib.asynccontextmanager
async def served(system: System) -> AsyncIterator[tuple[str, httpx.AsyncClient]]:
    app = create_app(system.settings, checker=system.checker, catalog=system.catalog, connections=system.connections)
    async with InProcessServer(app) as server, httpx.AsyncClient(base_url=server.url, timeout=10) as http:
        yield server.url, http


@pytest.fixture
def system(real_backend: Backend) -> System:
    return System(real_backend, tokens=TOKENS, allowed_origins=(BEHIND_PROXY,))


async def signed_in(http: httpx.AsyncClient) -> dict[str, str]:
    """A browser's session: the cookie, and the CSRF token our page hands its scripts."""
    page = await http.get("/", headers=COOKIE)
    assert page.status_code == 200 and "signed in as alice" in page.text
    match = re.search(r'<meta name="csrf-token" content="([0-9a-f]+)">', page.text)
    assert match, "the page gives its scripts a CSRF token"
    return {**COOKIE, "X-CSRF-Token": match[1]}


async def log_types(backend: Backend) -> list[str]:
    return [fields[b"type"].decode() for _, fields in await backend.redis.xrange(backend.keys.events)]


async def test_pages_of_other_origins_change_nothing_even_signed_in(system: System, real_backend: Backend) -> None:
    async with served(system) as (url, http):
        session = await signed_in(http)
        task_id = (await http.post("/api/backtests", json=BODY, headers=ALICE)).json()["task_id"]
        port = url.rsplit(":", 1)[1]
        for origin in (
            f"http://127.0.0.1:{free_port()}",  # another port of the same host: same site, the cookie is sent
            f"http://localhost:{port}",  # same port, another host name: another origin
            f"https://127.0.0.1:{port}",  # another scheme
            "https://evil.example",
            "null",  # a sandboxed frame or a redirect chain
        ):
            headers = {**session, "Origin": origin}
            for method, path, body in (
                ("POST", "/api/backtests", BODY),
                ("DELETE", f"/api/backtests/tasks/{task_id}", None),
                ("POST", f"/api/backtests/tasks/{task_id}/retry", None),
            ):
                reply = await http.request(method, path, json=body, headers=headers)
                assert reply.status_code == 403, (origin, method, path, reply.text)
                problem = reply.json()
                assert problem["error"] == "cross_origin_refused"
                assert problem["fields"][0]["field"] == "Origin" and method in problem["message"]
            # The sign-in form too: another site may not sign the user in as someone else.
            signin = await http.post("/signin", data={"token": "bob-secret"}, headers={"Origin": origin})
            assert signin.status_code == 403 and "set-cookie" not in signin.headers
    assert await log_types(real_backend) == ["submitted"]


async def test_without_access_control_no_site_submits_to_a_local_server(real_backend: Backend) -> None:
    async with served(System(real_backend)) as (url, http):
        refused = await http.post("/api/backtests", json=BODY, headers={"Origin": "https://evil.example"})
        assert refused.status_code == 403 and refused.json()["error"] == "cross_origin_refused"
        assert (await http.post("/api/backtests", json=BODY, headers={"Origin": url})).status_code == 202
    assert await log_types(real_backend) == ["submitted"]


async def test_sec_fetch_site_decides_when_origin_is_absent(system: System, real_backend: Backend) -> None:
    async with served(system) as (_, http):
        session = await signed_in(http)
        for site in ("cross-site", "same-site"):
            reply = await http.post("/api/backtests", json=BODY, headers={**session, "Sec-Fetch-Site": site})
            assert reply.status_code == 403, site
            assert reply.json()["fields"][0]["field"] == "Sec-Fetch-Site"
        ours = await http.post("/api/backtests", json=BODY, headers={**session, "Sec-Fetch-Site": "same-origin"})
        assert ours.status_code == 202
    assert await log_types(real_backend) == ["submitted"]


async def test_our_own_pages_change_state_with_the_csrf_token(system: System, real_backend: Backend) -> None:
    async with served(system) as (url, http):
        session = await signed_in(http)
        for origin in (url, BEHIND_PROXY):  # our own origin, and the one a proxy serves us under
            headers = {**session, "Origin": origin, "Sec-Fetch-Site": "same-origin"}
            reply = await http.post("/api/backtests", json=BODY, headers=headers)
            assert reply.status_code == 202, reply.text
            task_id = reply.json()["task_id"]
            cancelled = await http.delete(f"/api/backtests/tasks/{task_id}", headers=headers)
            assert cancelled.status_code == 200 and cancelled.json()["cancelled_by"] == "alice"
        # The cookie alone is not enough: without the page's token (an old browser sends no Origin).
        for csrf in ({}, {"X-CSRF-Token": "0" * 64}):
            for sent_origin in ({"Origin": url}, {}):
                reply = await http.post("/api/backtests", json=BODY, headers={**COOKIE, **csrf, **sent_origin})
                assert reply.status_code == 403 and reply.json()["error"] == "csrf_token_invalid"
                assert reply.json()["fields"][0]["field"] == "X-CSRF-Token"
        # One session's token is not another's.
        carol = {"Cookie": "backstream_token=carol-secret", "X-CSRF-Token": session["X-CSRF-Token"], "Origin": url}
        reply = await http.post("/api/backtests", json=BODY, headers=carol)
        assert reply.status_code == 403 and reply.json()["error"] == "csrf_token_invalid"
    assert await log_types(real_backend) == ["submitted", "cancelled"] * 2


async def test_scripts_and_the_cli_send_no_origin_and_pass(system: System, real_backend: Backend) -> None:
    async with served(system) as (url, http):
        api = Api(url, "alice-secret")  # the `backstream submit/cancel/...` client
        task = await asyncio.to_thread(api.call, "POST", "/api/backtests", BODY)
        assert task["status"] == "queued"
        cancelled = await asyncio.to_thread(api.call, "DELETE", f"/api/backtests/tasks/{task['task_id']}")
        assert cancelled["status"] == "cancelled"
        with pytest.raises(Refused, match="read-only"):  # access control still applies
            await asyncio.to_thread(Api(url, "bob-secret").call, "POST", "/api/backtests", BODY)
        assert (await http.post("/api/backtests", json=BODY, headers=ALICE)).status_code == 202  # curl
    assert await log_types(real_backend) == ["submitted", "cancelled", "submitted"]


async def test_bodies_must_be_json(system: System, real_backend: Backend) -> None:
    async with served(system) as (url, http):
        task_id = (await http.post("/api/backtests", json=BODY, headers=ALICE)).json()["task_id"]
        raw = b'{"strategy": "sma_cross", "symbol": "GOOG", "params": {"fast": 10, "slow": 20}}'
        for path in ("/api/backtests", f"/api/backtests/tasks/{task_id}/retry"):
            for content_type in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data", None):
                headers = {**ALICE, "Origin": url} | ({"Content-Type": content_type} if content_type else {})
                reply = await http.post(path, content=raw, headers=headers)
                assert reply.status_code == 415, (path, content_type, reply.text)
                problem = reply.json()
                assert problem["error"] == "unsupported_media_type"
                assert problem["fields"] == [
                    {"field": "Content-Type", "message": f"{content_type or 'none'} is not application/json"}
                ]
                assert (content_type or "none") in problem["message"]
        charset = {**ALICE, "Content-Type": "application/json; charset=utf-8"}
        assert (await http.post("/api/backtests", content=raw, headers=charset)).status_code == 202
    assert await log_types(real_backend) == ["submitted", "submitted"]


async def test_a_query_token_is_no_credential_outside_the_signin(system: System, real_backend: Backend) -> None:
    async with served(system) as (_, http):
        for method, path in (
            ("GET", "/api/backtests/tasks?token=alice-secret"),
            ("GET", "/api/stream?token=alice-secret"),
            ("POST", "/api/backtests?token=alice-secret"),
        ):
            reply = await http.request(method, path, json=BODY if method == "POST" else None)
            assert reply.status_code == 401 and reply.json()["error"] == "unauthorized", (path, reply.text)
            assert "set-cookie" not in reply.headers
        page = await http.get("/tasks?status=running&token=alice-secret", headers={"Accept": "text/html"})
        assert page.status_code == 401 and "set-cookie" not in page.headers
        assert 'action="/signin"' in page.text and 'method="post"' in page.text
        # The form returns to the page asked for, without the secret.
        assert 'name="next" value="/tasks?status=running"' in page.text and "alice-secret" not in page.text
    assert await log_types(real_backend) == []


async def test_the_signin_trades_a_token_for_the_cookie_and_drops_it_from_the_url(system: System) -> None:
    async with served(system) as (url, http):
        link = await http.get("/signin", params={"token": "alice-secret", "next": "/submit"})
        assert link.status_code == 303 and link.headers["location"] == "/submit"
        cookie = link.headers["set-cookie"]
        assert cookie.startswith("backstream_token=alice-secret;")
        assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/" in cookie
        page = await http.get("/submit", headers={"Cookie": cookie.split(";")[0]})
        assert page.status_code == 200 and "signed in as alice" in page.text

        # The form posts the token in its body: no URL ever holds it.
        form = await http.post("/signin", data={"token": "alice-secret", "next": "/workers"}, headers={"Origin": url})
        assert form.status_code == 303 and form.headers["location"] == "/workers"
        assert form.headers["set-cookie"].startswith("backstream_token=alice-secret;")

        # A wrong token: back to the form, the token gone from the URL, no cookie.
        wrong = await http.get("/signin", params={"token": "guess", "next": "/submit"})
        assert wrong.status_code == 303 and "set-cookie" not in wrong.headers
        assert "guess" not in wrong.headers["location"] and wrong.headers["location"].startswith("/signin?")
        again = await http.get(wrong.headers["location"])
        assert again.status_code == 200 and "not valid" in again.text and 'value="/submit"' in again.text
        form = await http.post("/signin", data={"token": "guess"}, headers={"Origin": url})
        assert form.status_code == 401 and "set-cookie" not in form.headers

        # Only to a page of ours, and only from a navigation of ours (or a typed URL).
        for next_path in ("//evil.example/x", "https://evil.example/", "/\\evil.example", "/signin?next=/"):
            away = await http.get("/signin", params={"token": "alice-secret", "next": next_path})
            assert away.headers["location"] == "/", next_path
        linked = await http.get("/signin?token=alice-secret", headers={"Sec-Fetch-Site": "cross-site"})
        assert linked.status_code == 303 and "set-cookie" not in linked.headers
        assert "alice-secret" not in linked.headers["location"]


async def test_the_signin_page_styles_need_no_token(system: System) -> None:
    async with served(system) as (_, http):
        page = await http.get("/", headers={"Accept": "text/html"})
        assert page.status_code == 401
        stylesheets = re.findall(r'<link rel="stylesheet" href="([^"]+)">', page.text)
        assert stylesheets == ["/static/dashboard.css"]
        css = await http.get(stylesheets[0])
        assert css.status_code == 200 and css.headers["content-type"].startswith("text/css")
        assert css.content == (STATIC / "dashboard.css").read_bytes()


def test_allowed_origins_from_the_environment() -> None:
    settings = Settings.from_env(
        {"BACKSTREAM_ALLOWED_ORIGINS": "https://Backstream.Example.com:443, http://[::1]:8080"}
    )
    assert settings.allowed_origins == ("https://backstream.example.com", "http://[::1]:8080")
    for bad in ("backstream.example.com", "https://backstream.example.com/app", "ftp://x", "null"):
        with pytest.raises(ValueError, match="origin"):
            Settings.from_env({"BACKSTREAM_ALLOWED_ORIGINS": bad})
