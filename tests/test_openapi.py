"""The OpenAPI document and /docs, and schemathesis against a real `backstream up` on real Redis."""

from __future__ import annotations

import html.parser
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
from starlette.routing import Route

from api import app as app_module
from api import auth
from api.dashboard.routes import routes as dashboard_routes
from api.openapi import document
from orchestrator.domain.spec import BacktestSpec
from orchestrator.domain.views import TaskListQuery
from tests.processes import Cluster, Role, free_port

# The dashboard's HTML pages, the sign-in and the Prometheus scrape are not part of the JSON API.
# HTML pages (the dashboard's and the sign-in), probes, the scrape, and the document itself.
NOT_API = {getattr(r, "path", "") for r in (*dashboard_routes, *auth.routes)} | {
    "/metrics",
    "/readyz",
    "/openapi.json",
    "/docs",
}


def test_every_api_route_is_documented_with_its_methods() -> None:
    doc = document()
    for route in app_module.routes:
        if not isinstance(route, Route) or route.path in NOT_API:
            continue
        methods = {m.lower() for m in route.methods or ()} - {"head"}
        assert route.path in doc["paths"], f"{route.path} is missing from api/openapi/operations.py OPERATIONS"
        assert methods <= set(doc["paths"][route.path]), route.path


def test_the_served_document_names_only_served_routes() -> None:
    served = frozenset(getattr(r, "path", "") for r in app_module.routes)
    assert set(document(served)["paths"]) == set(document()["paths"]) & served
    assert "/api/backtests" in document(served)["paths"]


def test_schemas_are_generated_from_the_validating_types() -> None:
    doc = document()
    _, components = msgspec.json.schema_components([BacktestSpec], ref_template="#/components/schemas/{name}")
    assert doc["openapi"] == "3.1.0"
    assert doc["components"]["schemas"]["BacktestSpec"] == components["BacktestSpec"]
    body = doc["paths"]["/api/backtests"]["post"]["requestBody"]["content"]["application/json"]
    assert body["schema"] == {"$ref": "#/components/schemas/BacktestSpec"}
    # The example validates against the type that validates requests.
    msgspec.convert(body["examples"]["sma_cross"]["value"], BacktestSpec)
    listed = {p["name"] for p in doc["paths"]["/api/backtests/tasks"]["get"]["parameters"]}
    assert listed == set(TaskListQuery.__struct_fields__)


class _Links(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.urls += [v for k, v in attrs if k in ("src", "href") and v]


def test_docs_page_loads_nothing_from_elsewhere() -> None:
    page = (Path(app_module.__file__).parent / "static" / "docs.html").read_text()
    parser = _Links()
    parser.feed(page)
    assert "/openapi.json" in parser.urls
    assert all(u.startswith(("/", "#", "data:")) for u in parser.urls), parser.urls
    assert "http://" not in page and "https://" not in page and "@import" not in page


@pytest.fixture
def served_up(tmp_path: Path, real_url: str, real_prefix: str) -> Iterator[tuple[str, Role]]:
    """A real `backstream up` (all roles, real Redis, this test's prefix) on a free port."""
    cluster = Cluster(real_url, real_prefix, tmp_path)
    try:
        port = free_port()
        role = cluster.start("up", "--port", str(port), "--workers", "2")
        url = f"http://127.0.0.1:{port}"

        role.wait_serving(url, timeout=30)
        yield url, role
    finally:
        cluster.close()


@pytest.mark.slow
@pytest.mark.redis
def test_docs_page_renders_every_operation_offline(served_up: tuple[str, Role]) -> None:
    from tests.test_dashboard_browser import CHROMIUM, FLAGS, _require_browser

    url, _ = served_up
    sync_playwright = _require_browser()
    elsewhere: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
        try:
            page = browser.new_page()

            def only_the_server(route: Any) -> None:
                if route.request.url.startswith(url + "/"):
                    route.continue_()
                else:
                    elsewhere.append(route.request.url)
                    route.abort()

            page.route("**/*", only_the_server)
            page.goto(f"{url}/docs")
            page.wait_for_selector("#post_api_backtests")
            served = httpx.get(f"{url}/openapi.json", timeout=5).json()
            operations = sum(len(methods) for methods in served["paths"].values())
            assert (
                page.locator("section.op[id^='get_'], section.op[id^='post_'], section.op[id^='delete_']").count()
                == operations
            )
            assert page.locator("#schema-BacktestSpec").inner_text().count("commission") >= 2
        finally:
            browser.close()
    assert elsewhere == []


@pytest.mark.slow
@pytest.mark.redis
def test_schemathesis_finds_no_server_error(tmp_path: Path, served_up: tuple[str, Role]) -> None:
    """Property-based requests from the document (examples, coverage, fuzzing, stateful runs that
    follow the submit's links) against a real server: no 5xx, and every answer matches its schema,
    status and content type. The feed of every task (`/api/stream`) is left out: it stays open by design."""
    binary = shutil.which("schemathesis", path=str(Path(sys.executable).parent)) or shutil.which("schemathesis")
    assert binary, "schemathesis is not installed (pip install -e '.[test]')"
    url, _ = served_up
    run = subprocess.run(
        [
            binary,
            "run",
            f"{url}/openapi.json",
            "--checks",
            "not_a_server_error,response_schema_conformance,status_code_conformance,content_type_conformance",
            "--max-examples",
            "25",
            "--exclude-path-regex",
            "^/api/stream$",
            "--request-timeout",
            "20",
            "--generation-database",
            "none",
            "--workers",
            "1",
            "--seed",
            "19",
            "--no-color",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
    counted = re.search(r"(\d+) generated, (\d+) passed", run.stdout)
    assert counted and counted[1] == counted[2] and int(counted[1]) >= 200, run.stdout[-3000:]


def test_every_route_has_a_name_of_its_own() -> None:
    # URLs are built from route names (url_path_for, path_for in templates): a name used twice
    # would send one of them to the wrong page.
    names = [r.name for r in app_module.routes if isinstance(r, Route)]
    assert all(names) and len(names) == len(set(names)), names
