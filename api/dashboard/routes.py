"""The dashboard's routes, each named: templates and handlers build URLs from these names."""

from __future__ import annotations

from pathlib import Path

from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from api.dashboard.compare import compare_page
from api.dashboard.submit import submit_page
from api.dashboard.tasks import task_page, tasks_page
from api.dashboard.workers import workers_page

# The dashboard's styles, scripts and vendored uPlot (no data: open to every caller, see auth.py).
STATIC = Path(__file__).parent.parent / "static"

routes = [
    Route("/", tasks_page, name="home"),
    Route("/tasks/{task_id}", task_page, name="task_page"),
    Route("/submit", submit_page, name="submit_page"),
    Route("/compare", compare_page, name="compare"),
    Route("/workers", workers_page, name="workers"),
    Mount("/static", app=StaticFiles(directory=STATIC), name="static"),
]
