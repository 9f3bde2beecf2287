"""Headless Chromium driven over the DevTools protocol (a websocket, JSON commands): enough
to log in, open a page, read the DOM, type, click and take a screenshot, with nothing but
Debian's ``chromium`` and ``websocket-client``."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import time
import urllib.request
from itertools import count
from pathlib import Path
from typing import Any


class BrowserError(RuntimeError):
    pass


class Browser:
    """One Chromium process with one page; ``close()`` ends the process."""

    def __init__(self, profile: Path, width: int = 1400, height: int = 1000):
        import websocket

        exe = shutil.which("chromium") or shutil.which("chromium-browser")
        if exe is None:
            raise BrowserError("chromium is not installed: apt-get install -y chromium "
                               "(.ci/run installs it when missing)")
        profile.mkdir(parents=True, exist_ok=True)
        (profile / "DevToolsActivePort").unlink(missing_ok=True)  # a reused profile's
        self.proc = subprocess.Popen(
            # --no-sandbox: CI runs as root, where Chromium's sandbox cannot start
            [exe, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
             "--disable-dev-shm-usage", "--remote-debugging-address=127.0.0.1",
             "--remote-debugging-port=0", f"--user-data-dir={profile}",
             f"--window-size={width},{height}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        self._ids = count(1)
        self.errors: list[str] = []  # console errors and uncaught exceptions, in order
        try:
            port = self._devtools_port(profile)
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as r:
                pages = [t for t in json.load(r) if t["type"] == "page"]
            self.ws = websocket.create_connection(pages[0]["webSocketDebuggerUrl"], timeout=60,
                                                  suppress_origin=True)
            self.send("Page.enable")
            self.send("Runtime.enable")
            self.send("Log.enable")
        except BaseException:
            self.close()
            raise

    def _devtools_port(self, profile: Path) -> int:
        marker = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 60
        while not (marker.exists() and marker.read_text().strip()):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise BrowserError(f"chromium did not start (exit {self.proc.poll()})")
            time.sleep(0.1)
        return int(marker.read_text().split()[0])

    def send(self, method: str, **params: Any) -> dict:
        """One command; events that arrive before its answer are dropped, except console
        errors and uncaught exceptions, kept in ``errors``."""
        msg_id = next(self._ids)
        self.ws.send(json.dumps({"id": msg_id, "method": method, "params": params}))
        while True:
            message = json.loads(self.ws.recv())
            self._keep_error(message)
            if message.get("id") == msg_id:
                if "error" in message:
                    raise BrowserError(f"{method}: {message['error']}")
                return message.get("result", {})

    def _keep_error(self, message: dict) -> None:
        method, params = message.get("method"), message.get("params", {})
        if method == "Runtime.exceptionThrown":
            details = params.get("exceptionDetails", {})
            self.errors.append(details.get("exception", {}).get("description")
                               or details.get("text", "exception"))
        elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            self.errors.append(" ".join(str(a.get("value", a.get("description", "")))
                                        for a in params.get("args", [])))
        elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
            entry = params["entry"]
            self.errors.append(f"{entry.get('text')} ({entry.get('url', '')})")

    def console_errors(self) -> list[str]:
        """The errors so far (a round trip first, so that those already sent are read)."""
        self.send("Runtime.evaluate", expression="0")
        return list(self.errors)

    def js(self, expression: str) -> Any:
        result = self.send("Runtime.evaluate", expression=expression, returnByValue=True,
                           awaitPromise=True)
        if "exceptionDetails" in result:
            raise BrowserError(f"{expression[:200]}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_js(self, expression: str, timeout_s: float = 60, what: str = "") -> Any:
        """Poll ``expression`` until truthy (the page renders asynchronously)."""
        deadline = time.monotonic() + timeout_s
        while True:
            value = self.js(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                raise BrowserError(f"gave up after {timeout_s:g} s waiting for {what or expression}"
                                   f" on {self.js('location.href')}")
            time.sleep(0.25)

    def goto(self, url: str) -> None:
        self.send("Page.navigate", url=url)

    def type_into(self, selector: str, text: str) -> None:
        """Focus the element, select what it holds and type ``text`` over it, as a person."""
        self.wait_js(f"!!document.querySelector({json.dumps(selector)})", what=selector)
        self.js(f"(() => {{const e = document.querySelector({json.dumps(selector)});"
                "e.scrollIntoView({block: 'center'}); e.focus(); e.select && e.select();})()")
        self.send("Input.insertText", text=text)
        self.send("Input.dispatchKeyEvent", type="keyDown", key="Tab", code="Tab",
                  windowsVirtualKeyCode=9)
        self.send("Input.dispatchKeyEvent", type="keyUp", key="Tab", code="Tab",
                  windowsVirtualKeyCode=9)

    def click_text(self, tag: str, text: str) -> None:
        """Click the last visible ``tag`` element whose text is ``text`` (a dialog's button
        comes after the page's)."""
        found = self.wait_js(
            f"(() => {{const all = [...document.querySelectorAll({json.dumps(tag)})]"
            f".filter(e => e.innerText.trim() === {json.dumps(text)} && e.offsetParent !== null"
            " && !e.disabled);"
            " if (!all.length) return false; all[all.length - 1].click(); return true;})()",
            what=f"{tag} {text!r}")
        assert found

    def click(self, element: str) -> None:
        """A mouse click at the middle of ``element`` (a JS expression), as a person clicks:
        some widgets react to pointer events only. Waits until nothing in its dialog (or
        page) is in a finite animation: an accordion opening moves what is below it."""
        moving = ("(e.closest('[role=dialog]') || document.body).getAnimations({subtree: true})"
                  ".some(a => a.playState === 'running'"
                  " && a.effect.getTiming().iterations !== Infinity)")
        where = (f"(e => {{ if (!e || {moving}) return null;"
                 " e.scrollIntoView({block: 'center'}); const r = e.getBoundingClientRect();"
                 f" return [r.x + r.width / 2, r.y + r.height / 2]; }})({element})")
        box = self.wait_js(where, what=element)
        for kind in ("mouseMoved", "mousePressed", "mouseReleased"):
            self.send("Input.dispatchMouseEvent", type=kind, x=box[0], y=box[1],
                      button="left", clickCount=1)

    def screenshot(self, path: Path) -> None:
        data = self.send("Page.captureScreenshot", format="png", captureBeyondViewport=True)
        path.write_bytes(base64.b64decode(data["data"]))

    def close(self) -> None:
        ws = getattr(self, "ws", None)
        if ws is not None:
            ws.close()
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
