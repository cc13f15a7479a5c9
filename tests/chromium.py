"""A real Chromium for the dashboard tests: tests/browser/bridge.mjs (playwright-core) runs it, this side sends it
what to do. Needs `npm ci` (playwright-core) and Debian's chromium; without them the tests are skipped, unless
JETDAG_REQUIRE_BROWSER=1 (CI) makes that a failure."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from tests.helpers import ROOT

if TYPE_CHECKING:
    from tests.conftest import Stack

CHROMIUM = os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium")
BRIDGE = ROOT / "tests" / "browser" / "bridge.mjs"


def require_browser() -> None:
    missing = []
    if shutil.which("node") is None:
        missing.append("node")
    if not (ROOT / "node_modules" / "playwright-core").is_dir():
        missing.append("playwright-core (run `npm ci`)")
    if not Path(CHROMIUM).exists():
        missing.append(f"chromium at {CHROMIUM} (apt-get install -y chromium)")
    if missing:
        message = "browser tests need " + ", ".join(missing)
        if os.environ.get("JETDAG_REQUIRE_BROWSER") == "1":
            pytest.fail(message)
        pytest.skip(message)


class BrowserError(AssertionError):
    pass


class Browser:
    """One page in one headless Chromium with a fresh profile."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self._next = 0

    @classmethod
    async def start(cls, color_scheme: str = "light") -> Browser:
        env = {**os.environ, "CHROMIUM_PATH": CHROMIUM, "COLOR_SCHEME": color_scheme}
        proc = await asyncio.create_subprocess_exec(
            "node", str(BRIDGE), cwd=ROOT, env=env, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE
        )
        return cls(proc)

    async def do(self, op: str, *, timeout: float = 20.0, **args: Any) -> Any:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self._next += 1
        line = json.dumps({"id": self._next, "op": op, "timeout": int(timeout * 1000), **args})
        self.proc.stdin.write(line.encode() + b"\n")
        await self.proc.stdin.drain()
        # The browser enforces `timeout` itself; this bound only catches a bridge that died or hung.
        raw = await asyncio.wait_for(self.proc.stdout.readline(), timeout + 30)
        if not raw:
            raise BrowserError(f"the browser bridge exited during {op}")
        answer = json.loads(raw)
        if not answer["ok"]:
            raise BrowserError(f"{op} failed: {answer['error']}")
        return answer.get("value")  # undefined in the page: no value

    async def goto(self, url: str) -> None:
        await self.do("goto", url=url)

    async def click(self, selector: str, timeout: float = 20.0) -> None:
        await self.do("click", selector=selector, timeout=timeout)

    async def fill(self, selector: str, value: str) -> None:
        await self.do("fill", selector=selector, value=value)

    async def press(self, selector: str, key: str) -> None:
        await self.do("press", selector=selector, key=key)

    async def wait(self, js: str, arg: Any = None, timeout: float = 20.0, message: str = "") -> None:
        """Wait until the function `js` (of `arg`), run in the page, returns something truthy."""
        try:
            await self.do("waitFor", js=js, arg=arg, timeout=timeout)
        except BrowserError as exc:
            raise BrowserError(f"{message or js}: {exc}") from None

    async def eval(self, js: str, arg: Any = None) -> Any:
        return await self.do("eval", js=js, arg=arg)

    async def screenshot(self, path: Path, full_page: bool = False) -> None:
        await self.do("screenshot", path=str(path), fullPage=full_page)

    async def errors(self) -> list[str]:
        """Console errors and uncaught exceptions since the last call."""
        found: list[str] = await self.do("errors")
        return found

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            assert self.proc.stdin is not None
            self.proc.stdin.write(b'{"op": "close"}\n')
            await self.proc.stdin.drain()
            self.proc.stdin.close()
        try:
            await asyncio.wait_for(self.proc.wait(), 15)
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()


SCREENSHOTS = ROOT / "docs" / "screenshots"


def base(stack: Stack) -> str:
    return stack.url.removesuffix("/api/distributed")


async def shoot(browser: Browser, name: str, tmp_path: Path) -> None:
    """Screenshots for docs/ (`JETDAG_SCREENSHOTS=1` writes them there; otherwise to the test's temp dir)."""
    target = SCREENSHOTS if os.environ.get("JETDAG_SCREENSHOTS") == "1" else tmp_path
    target.mkdir(parents=True, exist_ok=True)
    await browser.screenshot(target / f"{name}.png", full_page=True)


def text_of(selector: str) -> str:
    """A page function: the trimmed text of the first element `selector` matches."""
    return f"() => document.querySelector({selector!r})?.textContent.trim()"
