"""The dashboard's Jinja2 environment (autoescape on, strict about undefined names) and its page
response. Templates build every URL from a route's name: `path_for('task_page', task_id=…)`."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import jinja2
from starlette.requests import Request
from starlette.responses import HTMLResponse
from starlette.templating import Jinja2Templates

from api.dashboard import format as text
from orchestrator.domain.status import Status

TEMPLATES = Path(__file__).parent / "templates"
# The navigation bar: (page name, route name, label).
NAV = (
    ("tasks", "home", "Tasks"),
    ("submit", "submit_page", "Submit"),
    ("compare", "compare", "Compare"),
    ("workers", "workers", "Workers"),
    ("metrics", "metrics", "Metrics"),
)


@jinja2.pass_context
def path_for(context: jinja2.runtime.Context, name: str, /, **params: Any) -> str:
    """The path of the route named `name` (no scheme or host, so links stay right behind a proxy
    that rewrites Host). Raises starlette.routing.NoMatchFound for an unknown name."""
    request: Request = context["request"]
    return str(request.app.url_path_for(name, **params))


@functools.cache
def templates() -> Jinja2Templates:
    """The templates under TEMPLATES, autoescaped, with the dashboard's text filters (`fmt`,
    `metric_text`, `params_text`, `percent`, `event_detail`), `path_for` and `Status`."""
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=True, undefined=jinja2.StrictUndefined
    )
    env.filters.update(
        fmt=text.fmt,
        metric_text=text.metric_text,
        params_text=text.params_text,
        percent=text.percent,
        event_detail=text.event_detail,
    )
    env.globals.update(path_for=path_for, Status=Status, NAV=NAV)
    return Jinja2Templates(env=env)


def render(request: Request, template: str, *, status_code: int = 200, **values: Any) -> HTMLResponse:
    """`template` rendered with `values` and the request, never cached by the browser."""
    return templates().TemplateResponse(
        request, template, values, status_code=status_code, headers={"Cache-Control": "no-store"}
    )


def page(
    request: Request,
    template: str,
    *,
    title: str,
    name: str,
    data: dict[str, str] | None = None,
    refresh_s: int | None = None,
    status_code: int = 200,
    **values: Any,
) -> HTMLResponse:
    """A dashboard page: `template` (which extends layout.html) with the layout's values: the
    title, the page `name` (`data-page`, and which link of the nav is here), more `data-*`
    attributes of the body for the scripts, a refresh every `refresh_s` seconds, who is signed
    in, and the session's CSRF token (api/csrf.py), which the scripts send with every change."""
    return render(
        request,
        template,
        status_code=status_code,
        title=title,
        page=name,
        data=data or {},
        refresh_s=refresh_s,
        user=request.scope.get("user"),
        csrf_token=request.scope.get("csrf_token") or "",
        **values,
    )
