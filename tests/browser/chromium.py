"""Headless Chromium for the report tests, and for the screenshots in docs/.

One page load per call, driven over the DevTools protocol on a pipe (``--remote-debugging-pipe``: no port, no
network), so that one browser run gives everything a test asks about:

- ``png``: a screenshot of the first screen, exactly ``VIEWPORT`` CSS pixels at device scale 1;
- ``dom``: ``document.documentElement.outerHTML`` after the page's scripts ran (what ``--dump-dom`` prints);
- ``errors``: every uncaught exception, every ``console.error``/``console.assert`` failure and every error-level
  browser log entry (a failed load, a blocked resource), with its text;
- ``requests``: the URL of every request the page made (a self-contained report makes only its own);
- ``values``: the results of JavaScript expressions evaluated after the screenshot and the DOM dump.

Nothing is injected into the page: errors come from the protocol's Runtime and Log events.

Command line (the docs screenshots): ``python tests/browser/chromium.py REPORT.html OUT.png``.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

VIEWPORT = (1440, 900)  # a laptop's first screen
NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def find() -> str | None:
    """The browser binary: $QBENCH_CHROMIUM, else the first of ``NAMES`` on PATH."""
    env = os.environ.get("QBENCH_CHROMIUM")
    if env:
        return shutil.which(env) or (env if os.access(env, os.X_OK) else None)
    return next((p for p in map(shutil.which, NAMES) if p), None)


def command(binary: str, user_data_dir: str | Path, viewport: tuple[int, int] = VIEWPORT) -> list[str]:
    """The command line every test and every docs screenshot runs. ``--no-sandbox``: CI runs as root."""
    w, h = viewport
    return [binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
            "--no-first-run", "--no-default-browser-check", "--disable-extensions", "--disable-sync",
            "--disable-background-networking", "--disable-component-update", "--mute-audio",
            f"--window-size={w},{h}", f"--user-data-dir={user_data_dir}", "--remote-debugging-pipe", "about:blank"]


@dataclass
class Page:
    url: str
    png: bytes = b""
    dom: str = ""
    errors: list[str] = field(default_factory=list)
    console: list[tuple[str, str]] = field(default_factory=list)  # (level, text) of every console message
    requests: list[str] = field(default_factory=list)
    values: dict = field(default_factory=dict)
    seconds: float = 0.0


class _Pipe:
    """The DevTools protocol over fds 3 (commands in) and 4 (replies and events out), NUL-separated JSON."""

    def __init__(self, proc, w, r, deadline: float):
        self.proc, self.w, self.r, self.deadline = proc, w, r, deadline
        self.buf, self.events, self.next_id = b"", [], 0

    def _read_one(self) -> dict:
        while b"\0" not in self.buf:
            left = self.deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("chromium: no answer before the deadline")
            ready, _, _ = select.select([self.r], [], [], min(left, 1.0))
            if not ready:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"chromium exited with status {self.proc.returncode}")
                continue
            chunk = os.read(self.r, 1 << 20)
            if not chunk:
                raise RuntimeError("chromium closed the DevTools pipe")
            self.buf += chunk
        msg, self.buf = self.buf.split(b"\0", 1)
        return json.loads(msg)

    def call(self, method: str, params: dict | None = None, session: str | None = None) -> dict:
        self.next_id += 1
        msg = {"id": self.next_id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self.w, json.dumps(msg).encode() + b"\0")
        while True:
            m = self._read_one()
            if m.get("id") == self.next_id:
                if "error" in m:
                    raise RuntimeError(f"chromium: {method}: {m['error']}")
                return m.get("result", {})
            if "method" in m:
                self.events.append(m)

    def wait_event(self, method: str) -> dict:
        for i, e in enumerate(self.events):
            if e["method"] == method:
                return self.events.pop(i)
        while True:
            m = self._read_one()
            if m.get("method") == method:
                return m
            if "method" in m:
                self.events.append(m)


def _console_text(params: dict) -> str:
    out = []
    for a in params.get("args", []):
        out.append(str(a["value"]) if "value" in a else a.get("description") or a.get("type", ""))
    return " ".join(out)


def _collect(page: Page, events: list[dict]) -> None:
    for e in events:
        p = e.get("params", {})
        if e["method"] == "Runtime.consoleAPICalled":
            text = _console_text(p)
            page.console.append((p.get("type", ""), text))
            if p.get("type") in ("error", "assert"):
                page.errors.append(f"console.{p['type']}: {text}")
        elif e["method"] == "Runtime.exceptionThrown":
            d = p.get("exceptionDetails", {})
            exc = d.get("exception") or {}
            page.errors.append(f"uncaught: {exc.get('description') or d.get('text', '')} "
                               f"(line {d.get('lineNumber', -1) + 1})")
        elif e["method"] == "Log.entryAdded":
            entry = p.get("entry", {})
            page.console.append((entry.get("level", ""), entry.get("text", "")))
            if entry.get("level") == "error":
                where = f"{entry.get('source', 'log')}: {entry.get('text', '')} {entry.get('url', '')}"
                page.errors.append(where.strip())
        elif e["method"] == "Network.requestWillBeSent":
            page.requests.append(p.get("request", {}).get("url", ""))


def load(path_or_url: str | Path, *, evaluate: dict[str, str] | None = None, timeout: float = 90.0,
         binary: str | None = None, viewport: tuple[int, int] = VIEWPORT, settle_ms: int = 200) -> Page:
    """Open one page in a fresh headless Chromium (its own temporary profile) and return what it showed.

    ``evaluate``: {name: JavaScript expression}, run in order after the screenshot and the DOM dump; a promise is
    awaited; ``values[name]`` is its JSON value. The whole call is bounded by ``timeout`` seconds.
    """
    binary = binary or find()
    if not binary:
        raise FileNotFoundError(f"no Chromium on PATH (looked for {', '.join(NAMES)}; or set QBENCH_CHROMIUM)")
    url = path_or_url if str(path_or_url).startswith(("file:", "http:", "https:", "data:")) \
        else Path(path_or_url).resolve().as_uri()
    page = Page(url=url)
    start = time.monotonic()
    deadline = start + timeout
    with tempfile.TemporaryDirectory(prefix="qbench-chromium-") as profile:
        cmd_r, cmd_w = os.pipe()  # we write commands; chromium reads them on fd 3
        out_r, out_w = os.pipe()  # chromium writes on fd 4; we read
        # above fd 4, so that moving them onto 3 and 4 in the child cannot clobber one another
        hi_r, hi_w = fcntl.fcntl(cmd_r, fcntl.F_DUPFD, 10), fcntl.fcntl(out_w, fcntl.F_DUPFD, 10)

        def child_fds():
            os.dup2(hi_r, 3)
            os.dup2(hi_w, 4)

        log = open(Path(profile) / "stderr.log", "wb")
        proc = subprocess.Popen(command(binary, Path(profile) / "profile", viewport), stdin=subprocess.DEVNULL,
                                stdout=log, stderr=log, preexec_fn=child_fds, pass_fds=(3, 4),
                                start_new_session=True)
        for fd in (cmd_r, out_w, hi_r, hi_w):
            os.close(fd)
        pipe = _Pipe(proc, cmd_w, out_r, deadline)
        try:
            target = pipe.call("Target.createTarget", {"url": "about:blank"})["targetId"]
            s = pipe.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
            for domain in ("Page", "Runtime", "Log", "Network"):
                pipe.call(f"{domain}.enable", session=s)
            w, h = viewport
            pipe.call("Emulation.setDeviceMetricsOverride",
                      {"width": w, "height": h, "deviceScaleFactor": 1, "mobile": False}, session=s)
            pipe.events.clear()  # about:blank's
            nav = pipe.call("Page.navigate", {"url": url}, session=s)
            if nav.get("errorText"):
                raise RuntimeError(f"chromium: cannot open {url}: {nav['errorText']}")
            pipe.wait_event("Page.loadEventFired")
            # let timers and layout settle: two animation frames and settle_ms
            pipe.call("Runtime.evaluate", {"expression": f"new Promise(r => requestAnimationFrame(() => "
                                                         f"requestAnimationFrame(() => setTimeout(r, {settle_ms}))))",
                                           "awaitPromise": True}, session=s)
            shot = pipe.call("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": False}, session=s)
            page.png = base64.b64decode(shot["data"])
            page.dom = pipe.call("Runtime.evaluate", {"expression": "document.documentElement.outerHTML",
                                                      "returnByValue": True}, session=s)["result"]["value"]
            for name, expr in (evaluate or {}).items():
                r = pipe.call("Runtime.evaluate", {"expression": expr, "returnByValue": True, "awaitPromise": True},
                              session=s)
                if "exceptionDetails" in r:
                    d = r["exceptionDetails"]
                    raise RuntimeError(f"chromium: evaluating {name}: "
                                       f"{(d.get('exception') or {}).get('description') or d.get('text')}")
                page.values[name] = r["result"].get("value")
            # events that arrived while the last commands ran
            pipe.call("Runtime.evaluate", {"expression": "0"}, session=s)
            _collect(page, pipe.events)
            try:
                pipe.call("Browser.close")
            except RuntimeError:
                pass  # it may close the pipe before it answers
            proc.wait(timeout=max(1.0, deadline - time.monotonic()))
        except BaseException as e:
            tail = (Path(profile) / "stderr.log").read_bytes()[-3000:].decode(errors="replace")
            if isinstance(e, Exception):
                raise RuntimeError(f"chromium: {type(e).__name__}: {e}\n--- chromium stderr (tail) ---\n{tail}") from e
            raise
        finally:
            os.close(cmd_w)
            os.close(out_r)
            log.close()
            if proc.poll() is None:  # the group this call started: the browser and its helpers
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait(timeout=10)
    page.seconds = time.monotonic() - start
    return page


def png_size(png: bytes) -> tuple[int, int]:
    """(width, height) from a PNG's IHDR chunk."""
    assert png[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    return int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")


def screenshot(path_or_url: str | Path, out: str | Path, **kw) -> Page:
    """The first screen of a page as a PNG file (what docs/ holds), with the same browser and viewport as the tests."""
    page = load(path_or_url, **kw)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_bytes(page.png)
    return page


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: python tests/browser/chromium.py REPORT.html OUT.png")
    p = screenshot(sys.argv[1], sys.argv[2])
    print(f"{sys.argv[2]}: {png_size(p.png)[0]}x{png_size(p.png)[1]}, {len(p.errors)} console errors, "
          f"{p.seconds:.1f} s")
    for e in p.errors:
        print("  ", e)
    sys.exit(1 if p.errors else 0)
