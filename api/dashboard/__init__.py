"""The dashboard: server-rendered pages (Jinja2 templates, autoescaped) with a little JavaScript."""
