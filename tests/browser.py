"""Headless Chromium driven over the DevTools protocol: the real-browser checks of the dashboard.

Debian's ``chromium`` (installed by ``make toolchains``: scripts/install-chromium.sh), started with
``--remote-debugging-port=0``; the port is read from the ``DevToolsActivePort`` file it writes in
its profile. One websocket (aiohttp) carries the protocol; pages are attached targets (flat
sessions). Waiting is on DOM conditions, polled, within a bound: never a blind sleep.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import shutil
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

START_TIMEOUT = 30.0
CALL_TIMEOUT = 20.0


def chromium_path() -> str:
    """The system Chromium; the test fails (never skips) without it."""
    for name in ("chromium", "chromium-browser"):
        path = shutil.which(name)
        if path:
            return path
    pytest.fail(
        "chromium not found on PATH: the dashboard's browser test needs Debian's chromium "
        "(make toolchains, or: bash scripts/install-chromium.sh)",
        pytrace=False,
    )


class DevToolsError(Exception):
    """Raised when Chromium answers a protocol call with an error."""


class Page:
    """One tab, reached through its flat session."""

    def __init__(self, browser: Browser, session: str) -> None:
        self._browser = browser
        self._session = session

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        return await self._browser.call(method, params, session=self._session)

    async def goto(self, url: str) -> None:
        await self.call("Page.navigate", url=url)

    async def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page (promises awaited)."""
        answer = await self.call(
            "Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True
        )
        if "exceptionDetails" in answer:
            raise DevToolsError(f"{expression}: {answer['exceptionDetails'].get('text')}")
        return answer["result"].get("value")

    async def wait_for(self, expression: str, what: str, within: float = 20.0) -> Any:
        """The first truthy value of ``expression``, polled every 50 ms; fails after ``within`` s."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        last: Any = None
        while True:
            with contextlib.suppress(DevToolsError):  # the page may be between two documents
                last = await self.evaluate(expression)
                if last:
                    return last
            if loop.time() > deadline:
                raise AssertionError(f"timed out after {within} s waiting for {what} (last: {last!r})")
            await asyncio.sleep(0.05)

    async def screenshot(self, path: Path) -> Path:
        """A PNG of the page as shown, written to ``path``."""
        answer = await self.call("Page.captureScreenshot", format="png", captureBeyondViewport=True)
        await asyncio.to_thread(_write, path, base64.b64decode(answer["data"]))
        return path

    async def viewport(self, width: int, height: int, *, mobile: bool = False) -> None:
        await self.call(
            "Emulation.setDeviceMetricsOverride",
            width=width,
            height=height,
            deviceScaleFactor=1,
            mobile=mobile,
        )


class Browser:
    """A headless Chromium process and its DevTools websocket."""

    def __init__(self, proc: subprocess.Popen[bytes], http: aiohttp.ClientSession, ws: Any) -> None:
        self._proc = proc
        self._http = http
        self._ws = ws
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._reader = asyncio.get_running_loop().create_task(self._read())

    async def _read(self) -> None:
        async for message in self._ws:
            if message.type != aiohttp.WSMsgType.TEXT:
                break
            data = json.loads(message.data)
            future = self._waiting.pop(data.get("id", -1), None)
            if future is not None and not future.done():
                if "error" in data:
                    future.set_exception(DevToolsError(str(data["error"])))
                else:
                    future.set_result(data.get("result", {}))
        for future in self._waiting.values():
            if not future.done():
                future.set_exception(DevToolsError("Chromium closed the DevTools connection"))

    async def call(
        self, method: str, params: dict[str, Any], *, session: str | None = None
    ) -> dict[str, Any]:
        ident = next(self._ids)
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiting[ident] = future
        message: dict[str, Any] = {"id": ident, "method": method, "params": params}
        if session is not None:
            message["sessionId"] = session
        await self._ws.send_str(json.dumps(message))
        return await asyncio.wait_for(future, CALL_TIMEOUT)

    async def new_page(self) -> Page:
        target = await self.call("Target.createTarget", {"url": "about:blank"})
        attached = await self.call("Target.attachToTarget", {"targetId": target["targetId"], "flatten": True})
        page = Page(self, attached["sessionId"])
        await page.call("Page.enable")
        await page.call("Runtime.enable")
        return page

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.call("Browser.close", {}), 5)
        self._reader.cancel()
        await self._ws.close()
        await self._http.close()
        try:
            await asyncio.get_running_loop().run_in_executor(None, self._proc.wait, 10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait(10)


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def _launch(profile: Path, log: Path) -> tuple[subprocess.Popen[bytes], str]:
    """Start Chromium; returns the process and its DevTools websocket URL, once it listens."""
    profile.mkdir(parents=True, exist_ok=True)
    active = profile / "DevToolsActivePort"
    active.unlink(missing_ok=True)  # a former run's port would be read before this one writes its own
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [
                chromium_path(),
                "--headless",
                "--no-sandbox",  # CI runs as root, where Chromium's sandbox cannot start
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--no-default-browser-check",
                "--remote-debugging-port=0",
                "--remote-debugging-address=127.0.0.1",
                f"--user-data-dir={profile}",
                "--window-size=1280,900",
                "about:blank",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    deadline = time.monotonic() + START_TIMEOUT
    while not (active.exists() and len(active.read_text().split()) >= 2):
        if proc.poll() is not None:
            raise AssertionError(f"chromium exited ({proc.returncode}):\n{log.read_text(errors='replace')}")
        if time.monotonic() > deadline:
            proc.kill()
            proc.wait(10)
            raise AssertionError(f"chromium did not start within {START_TIMEOUT} s:\n{log.read_text()}")
        time.sleep(0.05)
    port, path = active.read_text().split()[:2]
    return proc, f"ws://127.0.0.1:{port}{path}"


@contextlib.asynccontextmanager
async def chromium(profile: Path, log: Path) -> AsyncIterator[Browser]:
    """A headless Chromium with its profile in ``profile`` and its output in ``log``."""
    proc, url = await asyncio.to_thread(_launch, profile, log)
    http: aiohttp.ClientSession | None = None
    try:
        http = aiohttp.ClientSession()
        ws = await http.ws_connect(url, max_msg_size=0)
        browser = Browser(proc, http, ws)
    except BaseException:
        if http is not None:
            await http.close()
        proc.kill()
        proc.wait(10)
        raise
    try:
        yield browser
    finally:
        await browser.close()
