"""Bearer-token access control: 401 without a valid token, 403 for read-only writes, and `by`."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from structlog.testing import capture_logs

from api.app import create_app
from api.auth import warn_if_exposed
from orchestrator.domain.events import Failed
from orchestrator.domain.spec import BacktestSpec
from orchestrator.settings import ApiToken, Settings, parse_tokens
from orchestrator.storage.keys import WORKER_GROUP
from tests.conftest import Backend
from tests.harness import System

BODY: dict[str, Any] = {"strategy": "sma_cross", "symbol": "GOOG", "params": {"fast": 10, "slow": 20}}
TOKENS = (ApiToken("alice", "alice-secret", True), ApiToken("bob", "bob-secret", False))
ALICE = {"Authorization": "Bearer alice-secret"}
BOB = {"Authorization": "Bearer bob-secret"}


@pytest.fixture
def system(backend: Backend) -> System:
    return System(backend, tokens=TOKENS)


async def test_without_a_valid_token_401_and_nothing_stored(system: System, backend: Backend) -> None:
    async with system.client() as http:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic YWxpY2U6eA=="}):
            for method, path in (
                ("GET", "/api/backtests/tasks"),
                ("POST", "/api/backtests"),
                ("GET", "/"),
                ("GET", "/api/stream"),
            ):
                reply = await http.request(method, path, json=BODY if method == "POST" else None, headers=headers)
                assert reply.status_code == 401, (method, path, headers)
                assert reply.headers["www-authenticate"] == "Bearer"
                assert reply.json()["error"] == "unauthorized"
        page = await http.get("/", headers={"Accept": "text/html"})
        assert page.status_code == 401 and 'name="token"' in page.text  # a sign-in form for browsers
        # Probes and the scrape stay open.
        for path in ("/healthz", "/readyz", "/metrics"):
            # /readyz answers 503 here (no projector runs), but answers: it is not refused.
            assert (await http.get(path)).status_code in ((200, 503) if path == "/readyz" else (200,)), path
    assert await backend.redis.xlen(backend.keys.events) == 0


async def test_read_only_tokens_read_but_may_not_write(system: System, backend: Backend) -> None:
    async with system.client() as http:
        task_id = (await http.post("/api/backtests", json=BODY, headers=ALICE)).json()["task_id"]
        assert (await http.get(f"/api/backtests/tasks/{task_id}", headers=BOB)).status_code == 200
        assert (await http.get("/", headers=BOB)).status_code == 200
        for method, path in (
            ("POST", "/api/backtests"),
            ("DELETE", f"/api/backtests/tasks/{task_id}"),
            ("POST", f"/api/backtests/tasks/{task_id}/retry"),
        ):
            reply = await http.request(method, path, json=BODY if path.endswith("backtests") else None, headers=BOB)
            assert reply.status_code == 403 and reply.json()["error"] == "forbidden"
            assert "read-only" in reply.json()["message"]
    assert await backend.redis.xlen(backend.keys.events) == 1


async def test_events_record_who_submitted_and_cancelled(system: System) -> None:
    async with system.client() as http:
        task_id = (await http.post("/api/backtests", json=BODY, headers=ALICE)).json()["task_id"]
        cancelled = await http.delete(f"/api/backtests/tasks/{task_id}", headers=ALICE)
        assert cancelled.json()["submitted_by"] == "alice" and cancelled.json()["cancelled_by"] == "alice"
        events = (await http.get(f"/api/backtests/tasks/{task_id}/events", headers=BOB)).json()["events"]
    assert [(e["type"], e["data"]["by"]) for e in events] == [("submitted", "alice"), ("cancelled", "alice")]


async def test_a_retry_records_who_asked(system: System, backend: Backend) -> None:
    await system.queue.ensure_group()
    task_id = str(uuid.uuid4())
    await system.commands.submit(
        task_id, BacktestSpec(strategy="sma_cross", symbol="GOOG", params={"fast": 10, "slow": 20})
    )
    reply = await backend.redis.xreadgroup(WORKER_GROUP, "w1", {backend.keys.work: ">"}, count=1)
    message_id = reply[0][1][0][0].decode()
    await system.queue.claim(task_id, worker="w1", token="t", message_id=message_id, reclaim=False, max_attempts=1)
    await system.queue.finish(Failed(task_id=task_id, attempt=1, error="boom"), message_id=message_id, reason="boom")
    async with system.client() as http:
        assert (await http.post(f"/api/backtests/tasks/{task_id}/retry", headers=ALICE)).status_code == 202
        events = (await http.get(f"/api/backtests/tasks/{task_id}/events", headers=ALICE)).json()["events"]
    assert (events[-1]["type"], events[-1]["data"]["by"]) == ("requeued", "alice")


async def test_the_signin_sets_a_cookie_that_signs_the_dashboard_in(system: System) -> None:
    async with system.client() as http:
        # `?token=` is a credential only for the sign-in, which trades it for the cookie.
        assert (await http.get("/?token=alice-secret")).status_code == 401
        signin = await http.get("/signin?token=alice-secret")
        assert signin.status_code == 303 and signin.headers["location"] == "/"
        cookie = signin.headers["set-cookie"]
        assert cookie.startswith("backstream_token=alice-secret;")
        assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
        # The cookie alone now authenticates (it is what EventSource and fetch send); a state
        # change also needs the CSRF token the page hands its scripts.
        http.cookies.set("backstream_token", "alice-secret")
        page = await http.get("/")
        assert page.status_code == 200 and "signed in as alice" in page.text
        csrf = page.text.split('<meta name="csrf-token" content="', 1)[1].split('"', 1)[0]
        assert (await http.post("/api/backtests", json=BODY)).status_code == 403
        reply = await http.post("/api/backtests", json=BODY, headers={"X-CSRF-Token": csrf})
        assert reply.status_code == 202
        task = (await http.get(f"/api/backtests/tasks/{reply.json()['task_id']}")).json()
        assert task["submitted_by"] == "alice"


async def test_no_tokens_means_open(backend: Backend) -> None:
    async with System(backend).client() as http:
        reply = await http.post("/api/backtests", json=BODY)
        assert reply.status_code == 202
        assert (await http.get(f"/api/backtests/tasks/{reply.json()['task_id']}")).json()["submitted_by"] is None


def test_tokens_from_the_environment_and_a_file(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    path.write_text("# operators\ncarol:c-secret:rw\ndave:d:with:colons:ro\n")
    settings = Settings.from_env(
        {"BACKSTREAM_TOKENS": "alice:a1:rw, bob:b1:ro,erin:e1", "BACKSTREAM_TOKENS_FILE": str(path)}
    )
    assert [(t.owner, t.secret, t.can_write) for t in settings.tokens] == [
        ("alice", "a1", True),
        ("bob", "b1", False),
        ("erin", "e1", True),
        ("carol", "c-secret", True),
        ("dave", "d:with:colons", False),
    ]
    # Secrets never show in a repr (they end up in logs).
    assert "a1" not in repr(settings) and "c-secret" not in repr(settings.tokens)
    for bad in ("alice", "alice:", ":secret", "a:s,b:s"):
        with pytest.raises(ValueError):
            parse_tokens(bad)


def test_binding_beyond_loopback_without_tokens_warns() -> None:
    message = warn_if_exposed(Settings(), "0.0.0.0")
    assert message is not None and "WITHOUT access control" in message and "BACKSTREAM_TOKENS" in message
    assert warn_if_exposed(Settings(), "127.0.0.1") is None
    assert warn_if_exposed(Settings(), "::1") is None
    assert warn_if_exposed(Settings(), "localhost") is None
    assert warn_if_exposed(Settings(tokens=TOKENS), "0.0.0.0") is None


async def test_requests_reaching_a_network_address_without_tokens_warn_once(backend: Backend) -> None:
    system = System(backend)
    app = create_app(system.settings, checker=system.checker, catalog=system.catalog, connections=system.connections)
    transport = httpx.ASGITransport(app=app)
    with capture_logs() as logs:
        async with (
            app.router.lifespan_context(app),
            httpx.AsyncClient(transport=transport, base_url="http://10.1.2.3") as http,
        ):
            for _ in range(3):
                assert (await http.get("/healthz")).status_code == 200
    assert [entry["event"] for entry in logs].count("auth.open_to_network") == 1
