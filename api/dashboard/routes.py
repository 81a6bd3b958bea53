"""The dashboard routes."""

from api.dashboard_old import routes as routes
