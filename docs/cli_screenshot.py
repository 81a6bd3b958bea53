"""Regenerate docs/cli-progress.png from a real run: `backstream up` on a free port, the README's
`submit --wait` in a pseudo-terminal (so the bar is drawn as on a terminal), and the captured
text rendered as HTML in headless Chromium (Debian has no ansi-to-png).

    .venv/bin/python docs/cli_screenshot.py            # needs playwright (test extra) and /usr/bin/chromium

With REDIS_URL set it runs on that Redis; otherwise on the embedded store.
"""

from __future__ import annotations

import html
import os
import pty
import re
import select
import shlex
import socket
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
COMMAND = "submit sma_cross AAPL -p fast=1:70 -p slow=101:170 --commission 0.002 --wait"
SHOWN_LINES = 38  # the rest of the metrics table is cut, as the README says
CHROMIUM = os.environ.get("BACKSTREAM_CHROMIUM", "/usr/bin/chromium")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def screen(raw: str) -> list[str]:
    """What a terminal shows for `raw`: each line as its last carriage-return redraw left it."""
    lines = raw.replace("\r\n", "\n").split("\n")
    return [line.split("\r")[-1].rstrip() for line in lines]


def run_in_terminal(argv: list[str], env: dict[str, str]) -> tuple[str, str]:
    """(a frame while the bar is between 5% and 60%, the whole output) of `argv` on a pty."""
    main, child = pty.openpty()
    proc = subprocess.Popen(argv, stdin=child, stdout=child, stderr=child, env=env, close_fds=True)
    os.close(child)
    out, frame = b"", ""
    while True:
        ready, _, _ = select.select([main], [], [], 30)
        if not ready:
            break
        try:
            chunk = os.read(main, 4096)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        out += chunk
        text = out.decode(errors="replace")
        shown = screen(text)[-1]
        match = re.search(r"\]\s+([0-9.]+)%\s+running", shown)
        if not frame and match and 5 <= float(match[1]) <= 60:
            frame = "\n".join(screen(text))
    proc.wait(30)
    os.close(main)
    return frame, "\n".join(screen(out.decode(errors="replace")))


def box(caption: str, text: str) -> str:
    return f"<section><h2>{html.escape(caption)}</h2><pre>{html.escape(text)}</pre></section>"


def main() -> int:
    port = free_port()
    env = {**os.environ, "BACKSTREAM_URL": f"http://127.0.0.1:{port}", "COLUMNS": "120"}
    backstream = [sys.executable, "-m", "orchestrator.cli"]
    server = subprocess.Popen(
        [*backstream, "up", "--port", str(port)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        for _ in range(200):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.1)
        frame, final = run_in_terminal([*backstream, *shlex.split(COMMAND)], env)
    finally:
        server.terminate()
        server.wait(30)
    prompt = f"$ backstream {COMMAND}\n"
    lines = final.strip("\n").split("\n")
    if len(lines) > SHOWN_LINES:
        lines = [*lines[:SHOWN_LINES], "…"]
    page = (
        "<!doctype html><meta charset='utf-8'><style>"
        "body{margin:0}main{display:inline-block;padding:16px;background:#e6e9ed;"
        "font:13px/1.3 'DejaVu Sans Mono',monospace}"
        "section{background:#1e1e1e;color:#e8e8e8;border-radius:8px;margin-bottom:14px;overflow:hidden}"
        "h2{margin:0;padding:5px 12px;font:12px sans-serif;color:#bbb;border-bottom:1px solid #333}"
        "pre{margin:0;padding:10px 14px;font:inherit;white-space:pre}</style>"
        + "<main>"
        + box("while it runs (the bar is redrawn in place on a terminal)", prompt + frame.strip("\n"))
        + box("when it ends", prompt + "\n".join(lines))
        + "</main>"
    )
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        tab = browser.new_page(viewport={"width": 1400, "height": 400})
        tab.set_content(page)
        tab.locator("main").screenshot(path=str(HERE / "cli-progress.png"))
        browser.close()
    print(HERE / "cli-progress.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
