"""A page opened in headless Chromium (Debian's ``chromium`` package), driven over the DevTools protocol.

No driver and no websocket library: Chromium started with ``--remote-debugging-pipe`` reads protocol
commands from file descriptor 3 and writes replies and events to descriptor 4, one JSON message per
NUL-terminated chunk. :func:`open_page` loads a file and returns what a test asks of it: console errors and
uncaught exceptions, every URL the page requested, the result of JavaScript expressions, a screenshot.

Also a command, for the screenshot in docs/EVAL.md::

    python -m tests.eval.browser REPORT.html --screenshot docs/report.png [--width 1200] [--height 1500]
"""

from __future__ import annotations

import argparse
import base64
import fcntl
import json
import os
import select
import shutil
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

# Headless, no GPU, and nothing that reaches the network on its own (updates, sync, first-run pages).
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--no-default-browser-check",
    "--mute-audio",
    "--autoplay-policy=no-user-gesture-required",
    "--remote-debugging-pipe",
)
CANDIDATES = ("chromium", "chromium-browser", "google-chrome")


def find_chromium() -> str | None:
    return next((path for path in map(shutil.which, CANDIDATES) if path), None)


class Page:
    """One tab of a headless Chromium, attached over the pipe; events are collected as they arrive."""

    def __init__(self, process: subprocess.Popen, to_browser: int, from_browser: int):
        self.process, self._out, self._in = process, to_browser, from_browser
        self._buffer = b""
        self._next_id = 0
        self.session: str | None = None
        self.events: list[dict] = []

    # ---------------------------------------------------------------- protocol
    def _read_message(self, deadline: float) -> dict:
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._in], [], [], left)[0]:
                raise TimeoutError("Chromium did not answer in time")
            chunk = os.read(self._in, 1 << 20)
            if not chunk:
                raise RuntimeError(f"Chromium closed the pipe (exit status {self.process.poll()})")
            self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)

    def send(self, method: str, params: dict | None = None, timeout: float = 30.0, browser: bool = False):
        """A command's result (to the page's session unless ``browser``); events meanwhile are kept."""
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params or {}}
        if self.session is not None and not browser:
            message["sessionId"] = self.session
        os.write(self._out, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            reply = self._read_message(deadline)
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            if "method" in reply:
                self.events.append(reply)

    def wait_for(self, method: str, timeout: float = 30.0) -> dict:
        """The first event ``method`` (already received or arriving within ``timeout``)."""
        deadline = time.monotonic() + timeout
        while True:
            for event in self.events:
                if event["method"] == method:
                    return event
            event = self._read_message(deadline)
            if "method" in event:
                self.events.append(event)

    # ---------------------------------------------------------------- queries
    def evaluate(self, expression: str, timeout: float = 30.0):
        """The value of a JavaScript expression (promises awaited)."""
        result = self.send(
            "Runtime.evaluate",
            {"expression": expression, "returnByValue": True, "awaitPromise": True},
            timeout=timeout,
        )
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails'].get('text')}")
        return result["result"].get("value")

    def wait_until(self, expression: str, timeout: float = 30.0, poll: float = 0.1):
        """Evaluate ``expression`` until it is truthy; returns its last value (falsy on a timeout)."""
        deadline = time.monotonic() + timeout
        value = self.evaluate(expression)
        while not value and time.monotonic() < deadline:
            time.sleep(poll)
            value = self.evaluate(expression)
        return value

    def console_errors(self) -> list[str]:
        """Console errors, uncaught exceptions and the browser's own error log entries (failed loads, media
        errors), as text."""
        errors = []
        for event in self.events:
            method, params = event["method"], event.get("params", {})
            if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
                errors.append(" ".join(str(a.get("value", a.get("description"))) for a in params["args"]))
            elif method == "Runtime.exceptionThrown":
                details = params["exceptionDetails"]
                errors.append(details.get("exception", {}).get("description") or details.get("text"))
            elif method == "Log.entryAdded" and params["entry"].get("level") == "error":
                errors.append(f"{params['entry'].get('source')}: {params['entry'].get('text')}")
        return errors

    def requested_urls(self) -> list[str]:
        return [
            e["params"]["request"]["url"] for e in self.events if e["method"] == "Network.requestWillBeSent"
        ]

    def screenshot(self, path: Path, width: int, height: int | None = None) -> None:
        """A PNG of the page at ``width`` CSS pixels: its top ``height`` pixels, or all of it."""
        whole = int(self.evaluate("document.documentElement.scrollHeight"))
        height = whole if height is None else min(height, whole)
        self.send(
            "Emulation.setDeviceMetricsOverride",
            {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False},
        )
        shot = self.send("Page.captureScreenshot", {"format": "png"})
        Path(path).write_bytes(base64.b64decode(shot["data"]))


@contextmanager
def open_page(html: Path, chromium: str | None = None, width: int = 1200, timeout: float = 60.0):
    """Load ``html`` (a file) in a fresh headless Chromium with its own profile; yields the loaded
    :class:`Page`; the browser is closed (and killed if it hangs) on the way out."""
    chromium = chromium or find_chromium()
    if chromium is None:
        raise FileNotFoundError(f"no Chromium on PATH (looked for {', '.join(CANDIDATES)})")
    profile = tempfile.mkdtemp(prefix="cinescene-chromium-")
    # The protocol's descriptors are 3 and 4 in Chromium: the pipe ends it keeps are moved to 10 and up (so
    # that neither is already 3 or 4), and bash puts them at 3 and 4 and execs Chromium.
    commands_r, commands_w = os.pipe()
    replies_r, replies_w = os.pipe()
    child_r, child_w = (fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10) for fd in (commands_r, replies_w))
    os.close(commands_r)
    os.close(replies_w)
    launch = f'exec "$0" "$@" 3<&{child_r} 4>&{child_w} {child_r}<&- {child_w}>&-'
    argv = [chromium, *FLAGS, f"--user-data-dir={profile}", f"--window-size={width},900", "about:blank"]
    process = subprocess.Popen(
        ["bash", "-c", launch, *argv],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,  # Chromium's own chatter (D-Bus, GPU probing) is not the page's
        pass_fds=(child_r, child_w),
    )
    os.close(child_r)
    os.close(child_w)
    page = Page(process, commands_w, replies_r)
    try:
        target = page.send("Target.createTarget", {"url": "about:blank"}, timeout=timeout)["targetId"]
        attached = page.send("Target.attachToTarget", {"targetId": target, "flatten": True}, timeout=timeout)
        page.session = attached["sessionId"]
        for domain in ("Page", "Runtime", "Log", "Network"):
            page.send(f"{domain}.enable", timeout=timeout)
        page.send(
            "Emulation.setDeviceMetricsOverride",
            {"width": width, "height": 900, "deviceScaleFactor": 1, "mobile": False},
        )
        page.send("Page.navigate", {"url": Path(html).resolve().as_uri()}, timeout=timeout)
        page.wait_for("Page.loadEventFired", timeout=timeout)
        yield page
    finally:
        try:
            page.send("Browser.close", timeout=10, browser=True)
        except (OSError, RuntimeError, TimeoutError):
            pass
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        os.close(commands_w)
        os.close(replies_r)
        shutil.rmtree(profile, ignore_errors=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.eval.browser", description=__doc__.split("\n")[0])
    parser.add_argument("html", type=Path)
    parser.add_argument("--screenshot", type=Path, required=True)
    parser.add_argument("--width", type=int, default=1200)
    parser.add_argument("--height", type=int, default=None, help="only the top HEIGHT pixels of the page")
    args = parser.parse_args(argv)
    with open_page(args.html, width=args.width) as page:
        page.wait_until("Array.from(document.querySelectorAll('video')).every(v => v.readyState >= 2)")
        page.evaluate("Promise.all(Array.from(document.querySelectorAll('video')).map(v => v.pause()))")
        page.screenshot(args.screenshot, args.width, args.height)
        errors = page.console_errors()
    for error in errors:
        print(f"console error: {error}", file=sys.stderr)
    print(f"wrote {args.screenshot}")
    return 1 if errors else 0


if __name__ == "__main__":
    raise SystemExit(main())
